"""``napari-lvit synth``: write a synthetic dataset."""

from __future__ import annotations

from pathlib import Path


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic dataset in the LViT folder layout")
    p.add_argument("out", type=Path)
    p.add_argument("--kind", choices=["qata", "referring"], default="qata")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)


def cmd_synth(args) -> int:
    from src_models.data.synthetic import write_dataset

    out = write_dataset(args.out, kind=args.kind, n=args.n, size=args.size, seed=args.seed)
    print(f"wrote {args.n} {args.kind} samples to {out}")
    return 0

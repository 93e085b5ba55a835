"""``napari-lvit synth``: write a synthetic dataset."""

from __future__ import annotations

import os
import shutil
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
    from src_models.errors import UserError

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"{args.out} is a file", hint="give the name of a new folder")
    if args.out.is_dir() and any(args.out.iterdir()):
        raise UserError(
            f"{args.out} is not empty: synth would overwrite files in it",
            hint="give the name of a new (or empty) folder",
        )
    from src_models.data.synthetic import _check_size

    _check_size(args.size)  # before any folder is made
    if args.n < 1:
        raise UserError(f"n must be >= 1, got {args.n}")
    folder = args.out.expanduser()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{args.out}: '{folder}' is not writable", hint="choose another place")
    needed = args.n * args.size * args.size * 4  # image and mask PNGs, at most about this
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UserError(
            f"{args.out}: {args.n} samples of {args.size} x {args.size} need up to "
            f"{needed / 1e9:.1f} GB, and only {free / 1e9:.1f} GB are free there",
            hint="free some disk space, or ask for fewer or smaller samples",
        )
    out = write_dataset(args.out, kind=args.kind, n=args.n, size=args.size, seed=args.seed)
    print(f"wrote {args.n} {args.kind} samples to {out}")
    return 0

"""Does the text matter? Referring data, where the text decides which objects are in the mask.

Two kinds of referring data (``--kind``):

- ``shapes`` (default): 2-4 bright objects (disk, square, triangle, ring, cross; small or big)
  in the cells of a 3x3 grid; the text names one to three of them by kind, size and/or position
  in free phrasing ("the small triangle at the top left", "Segment the ring and the big
  square.", "the object on the right that is a disk"); the mask holds only the named ones
  (:mod:`src_models.data.referring`). Training texts are paraphrased from their facts every
  epoch (``--no-paraphrase`` turns it off).
- ``xray``: synthetic chest X-rays whose text names one lung or one zone
  (:func:`src_models.data.synthetic.make_referring_sample`), plus the left/right test (the IoU
  between the masks predicted for two prompts that differ only in the side word) and the
  shipped default checkpoint scored on the same test data.

For every training-set size (``--n-train``, with its ``--epochs``), every model and every text
coupling (``--couplings``: ``paper`` is the published one, ``word_attention`` / ``film`` the
multi-scale ones of :mod:`src_models.models.text_coupling`): train twice with the same seed and
data, once reading the text and once with ``text=None``, and score both on the same held-out
images (mean per-image Dice at threshold 0.5). The best epoch by validation Dice is scored.
``--latency`` also times a proposal (a 512x512 image resized to the model, text features
ready) and a forward at 512x512 for each coupling. Results go to
``benchmarks/out/text_<kind>.json``; a markdown table is printed. Targets: text beats no-text
by >= 25 Dice points (xray: 800 images; shapes: 800 images and 10 epochs) and >= 15 with 200
shapes images; left/right IoU < 0.2.

    python -m benchmarks.bench_text                                   # shapes, 200 and 800
    python -m benchmarks.bench_text --kind xray --couplings paper     # the chest X-ray table
    python -m benchmarks.bench_text --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import header  # noqa: E402
from src_models.data.dataset import SegmentationDataset, scan_split  # noqa: E402
from src_models.data.referring import write_shapes_dataset  # noqa: E402
from src_models.data.synthetic import write_dataset  # noqa: E402
from src_models.engine.checkpoint import load_checkpoint  # noqa: E402
from src_models.engine.evaluate import evaluate, evaluate_left_right  # noqa: E402
from src_models.engine.trainer import TrainConfig, Trainer  # noqa: E402
from src_models.inference import DEFAULT_CHECKPOINT, Predictor  # noqa: E402
from src_models.models import create_model  # noqa: E402
from src_models.models.text_coupling import TEXT_COUPLINGS  # noqa: E402
from src_models.text import TextEncoder  # noqa: E402

ROOT = Path(__file__).resolve().parent


def build_model(name: str, coupling: str, img_size: int, text_dim: int):
    return create_model(name, img_size=img_size, text_dim=text_dim, text_coupling=coupling)


def train(name, coupling, use_text, train_set, val_set, encoder, epochs, args, out: Path):
    torch.manual_seed(args.seed)
    model = build_model(name, coupling, args.img_size, encoder.dim)
    config = TrainConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        use_text=use_text,
        out=str(out),
        save_last=False,
        device="cpu",
    )
    trainer = Trainer(model, train_set, val_set, text_encoder=encoder, config=config)
    t0 = time.perf_counter()
    done = trainer.run()
    seconds = time.perf_counter() - t0
    best, _ = load_checkpoint(out)  # the best epoch's weights (by validation Dice)
    return best, {"train_seconds": round(seconds, 1), "best_epoch": done.best_epoch}


def score(model, test_set, encoder, use_text: bool, args) -> dict:
    r = evaluate(model, test_set, encoder, device="cpu", use_text=use_text)
    row = {"dice": r["dice"], "iou": r["iou"], "n": r["n"]}
    if use_text and args.kind == "xray":
        predictor = Predictor(model, device="cpu", text_encoder=encoder)
        lr = evaluate_left_right(predictor, n=args.n_test, seed=args.seed + 500)
        row["left_right_iou"] = lr["iou_between_prompts"]
        row["left_right_dice"] = lr["dice"]
    return row


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return round(statistics.median(times), 1)


def latency(name: str, coupling: str, encoder, args) -> dict:
    """Proposal on a 512x512 image (resized to the model; text features already computed, as in
    the widget) and a forward at 512x512 (the model built at 512), median ms."""
    text = "the small triangle at the top left"
    image = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    model = build_model(name, coupling, args.img_size, encoder.dim).eval()
    predictor = Predictor(model, device="cpu", text_encoder=encoder)
    predictor.predict(image, text)  # caches the text features
    proposal = _median_ms(lambda: predictor.predict(image, text), args.repeats)
    big = build_model(name, coupling, 512, encoder.dim).eval()
    feats = encoder.encode([text])
    x = torch.rand(1, 3, 512, 512)
    with torch.inference_mode():
        forward = _median_ms(lambda: big(x, feats.tokens, feats.mask), args.repeats)
    n_params = sum(p.numel() for p in model.parameters())
    return {"proposal_512_ms": proposal, "forward_512_ms": forward, "params": n_params}


def make_splits(work: Path, args) -> dict:
    """Write the data once (the largest training set; smaller ones are its first images)."""
    n_max = max(args.n_train)
    splits = {}
    for split, n, seed in (
        ("train", n_max, args.seed),
        ("val", args.n_val, args.seed + 1),
        ("test", args.n_test, args.seed + 2),
    ):
        if args.kind == "shapes":
            write_shapes_dataset(work / split, n=n, size=224, seed=seed)
        else:
            write_dataset(work / split, kind="referring", n=n, size=224, seed=seed)
        splits[split] = scan_split(work / split)
    return splits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_text",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--kind", choices=("shapes", "xray"), default="shapes")
    p.add_argument("--models", nargs="+", default=["lvit_s"])
    p.add_argument("--couplings", nargs="+", choices=TEXT_COUPLINGS, default=None,
                   help="default: paper word_attention (shapes), paper (xray)")  # fmt: skip
    p.add_argument("--n-train", type=int, nargs="+", default=None,
                   help="training-set sizes; default 200 800 (shapes), 800 (xray)")  # fmt: skip
    p.add_argument("--epochs", type=int, nargs="+", default=None,
                   help="one per --n-train size, or one for all (default 30 10)")  # fmt: skip
    p.add_argument("--n-val", type=int, default=None, help="default 64 (shapes), 100 (xray)")
    p.add_argument("--n-test", type=int, default=None, help="default 200 (shapes), 100 (xray)")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-paraphrase", action="store_true", help="train on the stored texts only")
    p.add_argument("--runs", nargs="+", choices=("text", "no_text"), default=["text", "no_text"],
                   help="which trainings to run (default both)")  # fmt: skip
    p.add_argument("--shared-no-text", action="store_true",
                   help="one text-free model (paper architecture) per size as the baseline of "
                   "every coupling, instead of one per coupling")  # fmt: skip
    p.add_argument("--latency", action="store_true", help="also time each coupling")
    p.add_argument("--latency-only", action="store_true", help="only time each coupling")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/out/text_KIND.json")
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    args = p.parse_args(argv)
    shapes = args.kind == "shapes"
    args.couplings = args.couplings or (["paper", "word_attention"] if shapes else ["paper"])
    args.n_train = args.n_train or ([200, 800] if shapes else [800])
    args.epochs = args.epochs or ([30, 10] if shapes else [10])
    args.n_val = args.n_val or (64 if shapes else 100)
    args.n_test = args.n_test or (200 if shapes else 100)
    if args.quick:
        args.n_train, args.epochs, args.n_val, args.n_test, args.img_size = [40], [1], 8, 8, 64
        args.repeats = 2
    if len(args.epochs) == 1:
        args.epochs = args.epochs * len(args.n_train)
    if len(args.epochs) != len(args.n_train):
        p.error("give one --epochs value, or one per --n-train size")
    args.out = args.out or ROOT / "out" / f"text_{args.kind}.json"
    torch.set_num_threads(args.threads)
    head = header("benchmarks.bench_text", argv)

    encoder = TextEncoder()
    results: dict = {
        "header": head,
        "config": {k: str(v) for k, v in vars(args).items()},
        "runs": [],
    }
    if args.latency or args.latency_only:
        results["latency"] = {
            f"{name}/{c}": latency(name, c, encoder, args)
            for name in args.models
            for c in args.couplings
        }
        print(json.dumps(results["latency"], indent=1), flush=True)
    if not args.latency_only:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            records = make_splits(work, args)
            val = SegmentationDataset(records["val"], args.img_size)
            test = SegmentationDataset(records["test"], args.img_size)
            for n, epochs in zip(args.n_train, args.epochs, strict=True):
                train_set = SegmentationDataset(
                    records["train"][:n],
                    args.img_size,
                    augment=True,
                    spatial_text=True,
                    seed=args.seed,
                    paraphrase_text=not args.no_paraphrase,
                )
                for name in args.models:
                    rows = {}
                    for coupling in args.couplings:
                        rows[coupling] = {
                            "n_train": n,
                            "epochs": epochs,
                            "model": name,
                            "coupling": coupling,
                        }
                        results["runs"].append(rows[coupling])
                    # the plan, in order: with --shared-no-text one text-free model (paper
                    # architecture) first, the baseline of every coupling, then the text runs
                    plan = [(c, True) for c in rows] if "text" in args.runs else []
                    if "no_text" in args.runs and args.shared_no_text:
                        plan.insert(0, ("paper", False))
                    elif "no_text" in args.runs:
                        plan += [(c, False) for c in rows]
                    for coupling, use_text in plan:
                        key = "text" if use_text else "no_text"
                        out = work / f"{name}_{coupling}_{n}_{key}.safetensors"
                        model, info = train(
                            name, coupling, use_text, train_set, val, encoder, epochs, args, out
                        )
                        scored = info | score(model, test, encoder, use_text, args)
                        print(n, name, coupling, key, scored, flush=True)
                        targets = rows.values() if not use_text and args.shared_no_text else []
                        for row in targets or [rows[coupling]]:
                            row[key] = scored | ({"coupling": coupling} if not use_text else {})
                            if "text" in row and "no_text" in row:
                                apart = row["text"]["dice"] - row["no_text"]["dice"]
                                row["dice_points_apart"] = 100 * apart
                        save(results, args.out)  # what is done survives a stopped run
            if not shapes and DEFAULT_CHECKPOINT.is_file():
                predictor = Predictor("default", device="cpu", text_encoder=encoder)
                test = SegmentationDataset(work / "test", predictor.img_size)
                results["shipped_default"] = score(predictor.model, test, encoder, True, args)
    results["machine"] = head["machine"]
    save(results, args.out)
    print_table(results, shapes)
    return 0


def save(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


def print_table(results: dict, shapes: bool) -> None:
    lr_col = "" if shapes else " left/right IoU |"
    print(
        "\n| training images | epochs | model | coupling | Dice with text | Dice without text "
        f"| points apart | train s (text / no text) |{lr_col}"
    )
    print("|---|---|---|---|---|---|---|---|" + ("" if shapes else "---|"))
    for row in results["runs"]:
        t, nt = row.get("text"), row.get("no_text")
        if t is None and nt is None:
            continue  # not run (yet)
        with_text = f"{100 * t['dice']:.1f}" if t else "-"
        without = f"{100 * nt['dice']:.1f}" if nt else "-"
        if nt and nt.get("coupling", row["coupling"]) != row["coupling"]:
            without += f" ({nt['coupling']}, shared)"
        apart = f"{row['dice_points_apart']:.1f}" if "dice_points_apart" in row else "-"
        secs = " / ".join(f"{r['train_seconds']:.0f}" if r else "-" for r in (t, nt))
        extra = "" if shapes else (f" {t['left_right_iou']:.3f} |" if t else " - |")
        print(
            f"| {row['n_train']} | {row['epochs']} | {row['model']} | {row['coupling']} "
            f"| {with_text} | {without} | {apart} | {secs} |{extra}"
        )
    if "shipped_default" in results:
        d = results["shipped_default"]
        print(f"| - | - | shipped default | paper | {100 * d['dice']:.1f} | - | - | - |"
              f" {d['left_right_iou']:.3f} |")  # fmt: skip
    for key, lat in results.get("latency", {}).items():
        print(
            f"latency {key}: proposal (512x512 image) {lat['proposal_512_ms']} ms, forward at "
            f"512x512 {lat['forward_512_ms']} ms, {lat['params'] / 1e6:.2f}M parameters"
        )


if __name__ == "__main__":
    sys.exit(main())

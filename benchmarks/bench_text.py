"""Does the text matter? Referring data, where the text decides which lesions are in the mask.

For each model: train it twice with the same seed and data, once reading the text and once with
``text=None`` (``--no-text``), and score both on held-out referring images (mean per-image Dice
at threshold 0.5, model size). Then the left/right test: on images with lesions in the same zones
of both lungs, the IoU between the masks predicted for two prompts that differ only in the side
word (low = the text moves the mask). The shipped default checkpoint is scored on the same test
data when it is installed. Results go to ``benchmarks/out/text.json``; a markdown table is
printed. Targets: text beats no-text by >= 25 Dice points; left/right IoU < 0.2.

    python -m benchmarks.bench_text                        # ~15 min on 2 CPU cores
    python -m benchmarks.bench_text --models lvit_s --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import header  # noqa: E402
from src_models.data.dataset import SegmentationDataset  # noqa: E402
from src_models.data.synthetic import write_dataset  # noqa: E402
from src_models.engine.checkpoint import load_checkpoint  # noqa: E402
from src_models.engine.evaluate import evaluate, evaluate_left_right  # noqa: E402
from src_models.engine.trainer import TrainConfig, Trainer  # noqa: E402
from src_models.inference import DEFAULT_CHECKPOINT, Predictor  # noqa: E402
from src_models.models import create_model  # noqa: E402
from src_models.text import TextEncoder  # noqa: E402

ROOT = Path(__file__).resolve().parent


def train(name: str, use_text: bool, train_set, val_set, encoder, args, out: Path):
    torch.manual_seed(args.seed)
    model = create_model(name, img_size=args.img_size, text_dim=encoder.dim)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        use_text=use_text,
        out=str(out),
        save_last=False,
    )
    trainer = Trainer(model, train_set, val_set, text_encoder=encoder, config=config)
    t0 = time.perf_counter()
    done = trainer.run()
    seconds = time.perf_counter() - t0
    # the best epoch's weights (by validation Dice)
    best, _ = load_checkpoint(out)
    return best, {"train_seconds": round(seconds, 1), "best_epoch": done.best_epoch}


def score(model, test_set, encoder, use_text: bool, args) -> dict:
    r = evaluate(model, test_set, encoder, device="cpu", use_text=use_text)
    row = {"dice": r["dice"], "iou": r["iou"], "n": r["n"]}
    if use_text:
        predictor = Predictor(model, device="cpu", text_encoder=encoder)
        lr = evaluate_left_right(predictor, n=args.n_test, seed=args.seed + 500)
        row["left_right_iou"] = lr["iou_between_prompts"]
        row["left_right_dice"] = lr["dice"]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_text",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--models", nargs="+", default=["lvit_s"])
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "out" / "text.json")
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    args = p.parse_args(argv)
    if args.quick:
        args.n_train, args.n_val, args.n_test, args.epochs, args.img_size = 40, 8, 8, 1, 64
    torch.set_num_threads(args.threads)
    head = header("benchmarks.bench_text", argv)

    encoder = TextEncoder()
    results: dict = {
        "header": head,
        "config": {k: str(v) for k, v in vars(args).items()},
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        splits = {}
        for split, n, seed in (
            ("train", args.n_train, args.seed),
            ("val", args.n_val, args.seed + 1),
            ("test", args.n_test, args.seed + 2),
        ):
            write_dataset(work / split, kind="referring", n=n, size=224, seed=seed)
            splits[split] = SegmentationDataset(
                work / split, args.img_size, augment=split == "train", seed=args.seed
            )
        for name in args.models:
            row = {}
            for use_text in (True, False):
                key = "text" if use_text else "no_text"
                model, info = train(
                    name,
                    use_text,
                    splits["train"],
                    splits["val"],
                    encoder,
                    args,
                    work / f"{name}_{key}.safetensors",
                )
                row[key] = info | score(model, splits["test"], encoder, use_text, args)
                print(name, key, row[key], flush=True)
            row["dice_points_apart"] = 100 * (row["text"]["dice"] - row["no_text"]["dice"])
            results["models"][name] = row
        if DEFAULT_CHECKPOINT.is_file():
            predictor = Predictor("default", device="cpu", text_encoder=encoder)
            test = SegmentationDataset(work / "test", predictor.img_size)
            results["shipped_default"] = score(predictor.model, test, encoder, True, args)
    results["machine"] = head["machine"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))

    print("\n| model | Dice with text | Dice without text | points apart | left/right IoU |")
    print("|---|---|---|---|---|")
    for name, row in results["models"].items():
        print(
            f"| {name} | {100 * row['text']['dice']:.1f} | {100 * row['no_text']['dice']:.1f} "
            f"| {row['dice_points_apart']:.1f} | {row['text']['left_right_iou']:.3f} |"
        )
    if "shipped_default" in results:
        d = results["shipped_default"]
        print(f"| shipped default | {100 * d['dice']:.1f} | - | - | {d['left_right_iou']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MoNuSeg on the paper's protocol: train on Train_Folder, report Val_Folder.

Paper protocol: images and masks resized to 224x224, loss 0.5 Dice + 0.5 class-balanced BCE,
Adam (lr 1e-3 for MoNuSeg), cosine warm restarts, batch 2, the paper's augmentation (flips and
rot90 are off here when the texts name positions, as MoNuSeg's do: they would contradict the
text), per-image Dice/IoU at threshold 0.5, averaged. The paper selects its checkpoint on the
validation split and reports the test split; the data here has only train and val, so the
checkpoint chosen on val is scored on val (optimistic) and the last epoch's val score is given
beside it (no selection). The test split is kept apart for an independent check.

MoNuSeg (licence CC BY-NC-SA) is only read, never copied. Paper figures (Dice / IoU, %):
LViT-T 80.36 / 67.31, U-Net 76.45 / 62.86.

    python -m benchmarks.bench_monuseg /work/shared/datasets/MoNuSeg --models lvit_s unet_s
    python -m benchmarks.bench_monuseg DIR --models lvit_t --epochs 60
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import header  # noqa: E402
from src_models.data.dataset import SegmentationDataset  # noqa: E402
from src_models.engine.checkpoint import load_checkpoint  # noqa: E402
from src_models.engine.evaluate import evaluate, evaluate_native  # noqa: E402
from src_models.engine.events import ValidationEnd  # noqa: E402
from src_models.engine.trainer import TrainConfig, Trainer  # noqa: E402
from src_models.models import create_model  # noqa: E402
from src_models.text import TextEncoder  # noqa: E402

ROOT = Path(__file__).resolve().parent
PAPER = {"lvit_t": (80.36, 67.31), "unet": (76.45, 62.86)}


def run_model(name: str, root: Path, encoder: TextEncoder, args, out_dir: Path) -> dict:
    torch.manual_seed(args.seed)
    overrides = {"img_size": 224}
    model = create_model(name, **overrides)
    uses_text = bool(getattr(model, "uses_text", False))
    if uses_text and model.text_dim != encoder.dim:
        model = create_model(name, **overrides, text_dim=encoder.dim)
    train_set = SegmentationDataset(root / "Train_Folder", 224, augment=True, seed=args.seed)
    val_set = SegmentationDataset(root / "Val_Folder", 224)
    ckpt = out_dir / f"monuseg_{name}.safetensors"
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=2,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        use_text=uses_text,
        out=str(ckpt),
        save_last=False,
    )
    trainer = Trainer(model, train_set, val_set, text_encoder=encoder, config=config)
    curve = []
    t0 = time.perf_counter()
    for event in trainer.fit():
        if isinstance(event, ValidationEnd):
            curve.append(round(event.dice, 4))
            print(f"{name} epoch {event.epoch}: val Dice {event.dice:.4f}", flush=True)
    seconds = time.perf_counter() - t0
    best, _ = load_checkpoint(ckpt)
    text = encoder if uses_text else None
    paper = evaluate(best, val_set, text, device="cpu")
    native = evaluate_native(best, val_set, text, device="cpu")
    return {
        "params_M": round(sum(p.numel() for p in best.parameters()) / 1e6, 2),
        "epochs_run": len(curve),
        "best_epoch": trainer.best_epoch,
        "val_dice": paper["dice"],
        "val_iou": paper["iou"],
        "val_dice_native": native["dice"],
        "last_epoch_val_dice": curve[-1] if curve else None,
        "train_minutes": round(seconds / 60, 1),
        "paper_dice_iou": PAPER.get(name),
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_monuseg",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("root", type=Path, help="MoNuSeg folder with Train_Folder/ and Val_Folder/")
    p.add_argument("--models", nargs="+", default=["lvit_s", "unet_s"])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "out" / "monuseg.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    head = header("benchmarks.bench_monuseg", argv)
    encoder = TextEncoder()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.pop("header", None)  # the header of the latest run, first
    results = {"header": head, **results}
    results.setdefault("models", {})
    for name in args.models:
        results["models"][name] = run_model(name, args.root, encoder, args, args.out.parent)
        results["models"][name]["config"] = {
            "epochs": args.epochs,
            "lr": args.lr,
            "seed": args.seed,
        }
        results["machine"] = head["machine"]
        args.out.write_text(json.dumps(results, indent=2))  # after each model: keep what ran

    print("\n| model | params (M) | val Dice | val IoU | last-epoch Dice | epochs | minutes |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results["models"].items():
        print(
            f"| {name} | {r['params_M']} | {100 * r['val_dice']:.2f} | {100 * r['val_iou']:.2f} "
            f"| {100 * r['last_epoch_val_dice']:.2f} | {r['epochs_run']} | {r['train_minutes']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

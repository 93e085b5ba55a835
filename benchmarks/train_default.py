"""The recipe of the shipped default model (``src_models/weights/default.safetensors``).

Trains ``lvit_s`` on synthetic chest X-rays with both kinds of text (QaTa reports that describe
every lesion, and referring prompts that name only some of the lesions, in the short and in the
QaTa style); then a click stage gives it prompt inputs (clicks, a box, the previous mask) and
fine-tunes it with simulated correction clicks on the same images (``--click-steps``, 0: none).
Measures it on freshly generated data and writes a JSON report:

    python -m benchmarks.train_default                 # about 25 min on 2 CPU cores
    python -m benchmarks.train_default --install       # also copy it into the package

The installed checkpoint holds float16 weights (half the size; loading casts them back).
Deterministic by ``--seed`` up to the usual floating-point nondeterminism of threaded CPU kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from benchmarks._common import header
from src_models.data.dataset import SegmentationDataset, scan_split
from src_models.data.synthetic import write_dataset
from src_models.engine.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from src_models.engine.evaluate import evaluate, evaluate_left_right
from src_models.engine.events import BatchEnd, EpochEnd, ValidationEnd
from src_models.engine.trainer import TrainConfig, Trainer
from src_models.inference import DEFAULT_CHECKPOINT, Predictor
from src_models.models import create_model
from src_models.models.prompts import add_prompt_inputs
from src_models.text import TextEncoder

ROOT = Path(__file__).resolve().parent
# (folder, kind, text style, share of the training set)
PARTS = (
    ("qata", "qata", "short", 0.35),  # style is unused by the qata kind
    ("referring_short", "referring", "short", 0.3),
    ("referring_qata", "referring", "qata", 0.35),
)


def make_data(root: Path, n: int, size: int, seed: int) -> list:
    """Write the parts of one split (if not there yet) and return their records."""
    records = []
    for folder, kind, style, share in PARTS:
        out = root / folder
        count = max(1, round(n * share))
        if not (out / "text.csv").is_file() or len(scan_split(out)) != count:
            shutil.rmtree(out, ignore_errors=True)
            write_dataset(out, kind=kind, n=count, size=size, seed=seed, style=style)
        records += scan_split(out)
    return records


def half_precision_copy(src: Path, dst: Path) -> Path:
    """The checkpoint with float16 floating-point weights (the metadata unchanged)."""
    model, meta = load_checkpoint(src)
    model.half()
    keep = {k: v for k, v in meta.items() if k in ("text_encoder", "threshold", "training")}
    keep["training"] = {**keep.get("training", {}), "weights_dtype": "float16"}
    return save_checkpoint(dst, model, keep)


def measure(checkpoint: Path, size: int, seed: int, n_eval: int) -> dict:
    """Dice on fresh data of each kind and the left/right prompt test (through Predictor)."""
    results: dict = {}
    model, meta = load_checkpoint(checkpoint)
    encoder = TextEncoder(meta["text_encoder"])
    work = ROOT / "out" / "default_eval"
    for kind, style in (("qata", "short"), ("referring", "short"), ("referring", "qata")):
        folder = work / f"{kind}_{style}"
        shutil.rmtree(folder, ignore_errors=True)
        write_dataset(folder, kind=kind, n=n_eval, size=size, seed=seed, style=style)
        data = SegmentationDataset(folder, model.img_size)
        r = evaluate(model, data, encoder, device="cpu")
        results[f"{kind}_{style}"] = {"dice": r["dice"], "iou": r["iou"], "n": r["n"]}
    predictor = Predictor(checkpoint, device="cpu", text_encoder=encoder)
    for style in ("short", "qata"):
        results[f"left_right_{style}"] = evaluate_left_right(
            predictor, n=n_eval, size=size, seed=seed, style=style
        )
    return results


def train_clicks(
    base: Path,
    train_set: SegmentationDataset,
    out: Path,
    *,
    steps: int,
    clicks: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> Path:
    """``base`` given prompt inputs and fine-tuned ``steps`` steps with ``clicks`` simulated
    correction passes per batch (cosine from ``lr`` to ``lr / 10``, no validation); the
    checkpoint written to ``out``."""
    model, meta = load_checkpoint(base)
    add_prompt_inputs(model)
    encoder = TextEncoder(meta.get("text_encoder") or "default")
    epochs = max(1, -(-steps // -(-len(train_set) // batch_size)))
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        min_lr=lr / 10,
        t0=epochs,
        seed=seed,
        device="auto",
        clicks=clicks,
        out=str(out),
        save_last=False,
        log_every=25,
    )
    trainer = Trainer(model, train_set, None, text_encoder=encoder, config=config)
    for event in trainer.fit():
        if isinstance(event, BatchEnd):
            print(f"  clicks: step {event.step}: loss {event.loss:.4f}", flush=True)
        elif isinstance(event, EpochEnd):
            print(f"  clicks: epoch {event.epoch}: {event.seconds:.0f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train_default",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--work", type=Path, default=ROOT / "out" / "default")
    p.add_argument("--n-train", type=int, default=1500)
    p.add_argument("--n-val", type=int, default=150)
    p.add_argument("--data-size", type=int, default=224, help="side of the generated images")
    p.add_argument("--img-size", type=int, default=128, help="model input size")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--click-steps", type=int, default=1000, help="click stage steps (0: none)")
    p.add_argument("--clicks", type=int, default=3, help="correction passes per click batch")
    p.add_argument("--click-lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-eval", type=int, default=100, help="fresh images per evaluation")
    p.add_argument("--install", action="store_true", help=f"copy to {DEFAULT_CHECKPOINT}")
    args = p.parse_args(argv)
    if args.click_steps < 0 or args.clicks < 1 or args.click_lr <= 0:
        p.error("--click-steps must be >= 0, --clicks >= 1 and --click-lr > 0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    head = header("benchmarks.train_default", argv)

    t0 = time.perf_counter()
    train = make_data(args.work / "train", args.n_train, args.data_size, args.seed)
    val = make_data(args.work / "val", args.n_val, args.data_size, args.seed + 1)
    t_data = time.perf_counter() - t0

    encoder = TextEncoder()
    torch.manual_seed(args.seed)
    model = create_model("lvit_s", img_size=args.img_size, text_dim=encoder.dim)
    # augment=True: spatial_text is then detected from the texts, so no flips swap the sides
    train_set = SegmentationDataset(train, args.img_size, augment=True, seed=args.seed)
    val_set = SegmentationDataset(val, args.img_size)
    out = args.work / "lvit_s_default.safetensors"
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device="auto",
        out=str(out),
        log_every=50,
    )
    trainer = Trainer(model, train_set, val_set, text_encoder=encoder, config=config)
    t1 = time.perf_counter()
    for event in trainer.fit():
        if isinstance(event, BatchEnd):
            print(f"  epoch {event.epoch} step {event.step}: loss {event.loss:.4f}", flush=True)
        elif isinstance(event, (EpochEnd, ValidationEnd)):
            print(event, flush=True)
    t_train = time.perf_counter() - t1
    t2 = time.perf_counter()
    if args.click_steps:
        out = train_clicks(
            out,
            train_set,
            args.work / "lvit_s_default_clicks.safetensors",
            steps=args.click_steps,
            clicks=args.clicks,
            lr=args.click_lr,
            batch_size=args.batch_size,
            seed=args.seed,
        )
    t_clicks = time.perf_counter() - t2

    shipped = half_precision_copy(out, args.work / "default.safetensors")
    figures = measure(shipped, args.data_size, seed=1000 + args.seed, n_eval=args.n_eval)
    report = {
        "header": head,
        "recipe": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "n_train": len(train_set),
        "n_val": len(val_set),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(t_train, 1),
        "click_seconds": round(t_clicks, 1),
        "best_epoch": trainer.best_epoch,
        "best_val_dice": trainer.best_dice,
        "checkpoint_bytes": shipped.stat().st_size,
        "fresh_data": figures,
        "meta": read_checkpoint_meta(shipped)["training"]["metrics"],
        "machine": head["machine"],
    }
    (ROOT / "out").mkdir(exist_ok=True)
    (ROOT / "out" / "default_model.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "meta"}, indent=2))
    if args.install:
        DEFAULT_CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped, DEFAULT_CHECKPOINT)
        print(f"installed {DEFAULT_CHECKPOINT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

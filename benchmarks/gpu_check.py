"""The CUDA path on a real GPU: speed of ``lvit_t`` / ``lvit_s`` and MoNuSeg on the paper's
protocol. Driven by ``benchmarks/gpu_check.sh`` (see there for the two steps).

Subcommands:

- ``prepare DIR``: on this machine (no GPU needed), from the MoNuSeg folder ``DIR``: the
  ``Train_Folder`` and ``Val_Folder`` images and masks as the 224-px PNGs the paper protocol
  trains on (exactly what :class:`~src_models.data.SegmentationDataset` makes of the
  originals), with a ``text.csv`` table, and the texts' token features from the default text
  encoder (float16), into ``benchmarks/out/gpu/`` (about 6 MB: what one device call can
  carry; the GPU machine has neither the encoder's package nor ``openpyxl``). MoNuSeg is
  CC BY-NC-SA: that folder is a local, git-ignored copy for this check, never part of the
  project.
- ``timing``: a forward (eval, no gradients) and a training step (Adam, Dice + BCE) of
  ``lvit_t`` and ``lvit_s`` at batch 16, 224 px, in fp32, mixed precision (bf16 where
  supported) and mixed precision with ``channels_last``: median milliseconds over timed
  repetitions after warm-ups, and images per second.
- ``monuseg``: ``lvit_t`` trained on the prepared MoNuSeg as ``bench_monuseg`` does (batch 2,
  Adam lr 1e-3, cosine warm restarts, the paper's augmentation, 200 epochs, patience 50,
  mixed precision on CUDA), reporting the best validation Dice, IoU and minutes.

Each writes its JSON (``--out``) with the shared header first.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import header  # noqa: E402
from src_models.text import TextFeatures  # noqa: E402

ROOT = Path(__file__).resolve().parent
SPLITS = ("Train_Folder", "Val_Folder")
GPU_DIR = ROOT / "out" / "gpu"  # what the device call carries (git-ignored)


class FeatureFileEncoder:
    """The TextEncoder interface (``encode``, ``dim``, ``id``) over token features computed
    beforehand by ``prepare`` (the encoder itself does not travel)."""

    def __init__(self, path: str | os.PathLike) -> None:
        data = torch.load(path, weights_only=True)
        self.id, self.dim = str(data["id"]), int(data["dim"])
        self._tokens = dict(zip(data["texts"], data["tokens"], strict=True))

    def encode(self, texts) -> TextFeatures:
        if isinstance(texts, str):
            texts = [texts]
        feats = [self._tokens[t].float() for t in texts]
        n = max(f.shape[0] for f in feats)
        tokens = torch.zeros(len(feats), n, self.dim)
        mask = torch.zeros(len(feats), n, dtype=torch.bool)
        for i, f in enumerate(feats):
            tokens[i, : f.shape[0]] = f
            mask[i, : f.shape[0]] = True
        return TextFeatures(tokens, mask)


# --------------------------------------------------------------------------- prepare


def prepare(monuseg: Path, out: Path) -> dict:
    """Write ``out/monuseg/<split>/{img,labelcol}/*.png`` + ``text.csv`` and
    ``out/text_features.pt``."""
    from PIL import Image

    from src_models.data import SegmentationDataset
    from src_models.text import TextEncoder

    texts: set[str] = set()
    counts = {}
    for split in SPLITS:
        data = SegmentationDataset(monuseg / split, 224)
        folder = out / "monuseg" / split
        (folder / "img").mkdir(parents=True, exist_ok=True)
        (folder / "labelcol").mkdir(parents=True, exist_ok=True)
        rows = []
        for i, name in enumerate(data.names):
            Image.fromarray(data.image_uint8(i)).save(folder / "img" / f"{name}.png")
            mask = data.mask_bool(i).astype(np.uint8) * 255
            Image.fromarray(mask).save(folder / "labelcol" / f"{name}.png")
            rows.append((f"{name}.png", data.texts[i]))
            texts.add(data.texts[i])
        with open(folder / "text.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["Image", "Description"])
            writer.writerows(rows)
        counts[split] = len(rows)
    encoder = TextEncoder()
    ordered = sorted(texts)
    tokens = [encoder.encode([t]).tokens[0].to(torch.float16) for t in ordered]
    torch.save(
        {"id": encoder.id, "dim": encoder.dim, "texts": ordered, "tokens": tokens},
        out / "text_features.pt",
    )
    return {"images": counts, "texts": len(ordered), "encoder": encoder.id}


# --------------------------------------------------------------------------- timing


def _time(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Median milliseconds of ``fn()`` (synchronised on CUDA)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def timing(names, batch: int, device: torch.device, warmup: int, reps: int) -> list[dict]:
    from src_models.device import autocast
    from src_models.losses import DiceBCELoss
    from src_models.models import create_model

    rows = []
    loss_fn = DiceBCELoss()
    for name in names:
        for mode in ("fp32", "amp", "amp+channels_last"):
            torch.manual_seed(0)
            model = create_model(name, img_size=224).to(device)
            amp = mode != "fp32" and device.type == "cuda"
            fmt = torch.channels_last if "channels_last" in mode else torch.contiguous_format
            model = model.to(memory_format=fmt)
            x = torch.rand(batch, 3, 224, 224, device=device).to(memory_format=fmt)
            y = (torch.rand(batch, 1, 224, 224, device=device) > 0.7).float()
            text = torch.randn(batch, 20, model.text_dim, device=device)
            mask = torch.ones(batch, 20, dtype=torch.bool, device=device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            scaler = torch.amp.GradScaler("cuda", enabled=amp and not _bf16(device))

            @torch.no_grad()
            def forward(model=model, x=x, text=text, mask=mask, amp=amp):
                with autocast(device, amp):
                    model(x, text=text, text_mask=mask)

            def step(model=model, x=x, y=y, text=text, mask=mask, amp=amp, opt=opt, sc=scaler):
                opt.zero_grad(set_to_none=True)
                with autocast(device, amp):
                    logits = model(x, text=text, text_mask=mask)
                sc.scale(loss_fn(logits.float(), y)).backward()
                sc.step(opt)
                sc.update()

            model.eval()
            fwd = _time(forward, device, warmup, reps)
            model.train()
            stp = _time(step, device, warmup, reps)
            row = {
                "model": name,
                "mode": mode if device.type == "cuda" else mode + " (cpu: fp32)",
                "batch": batch,
                "forward_ms": round(fwd, 2),
                "step_ms": round(stp, 2),
                "forward_img_s": round(1000 * batch / fwd, 1),
                "step_img_s": round(1000 * batch / stp, 1),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            del model, opt
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


# --------------------------------------------------------------------------- MoNuSeg


def monuseg(data: Path, features: Path, args, device: torch.device) -> dict:
    from src_models.data import SegmentationDataset
    from src_models.engine import KeepBest, TrainConfig, Trainer, ValidationEnd
    from src_models.engine.evaluate import evaluate
    from src_models.models import create_model

    encoder = FeatureFileEncoder(features)
    torch.manual_seed(args.seed)
    model = create_model(args.model, img_size=224, text_dim=encoder.dim)
    train_set = SegmentationDataset(data / "Train_Folder", 224, augment=True, seed=args.seed)
    val_set = SegmentationDataset(data / "Val_Folder", 224)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=2,
        lr=1e-3,
        patience=args.patience,
        seed=args.seed,
        device=str(device),
        num_workers=args.workers,
        save_last=False,
    )
    keep = KeepBest()
    trainer = Trainer(model, train_set, val_set, encoder, config, hooks=[keep])
    curve = []
    t0 = time.perf_counter()
    for event in trainer.fit():
        if isinstance(event, ValidationEnd):
            curve.append(round(event.dice, 4))
            if event.epoch % 10 == 0 or event.improved:
                print(f"{args.model} epoch {event.epoch}: val Dice {event.dice:.4f}", flush=True)
    seconds = time.perf_counter() - t0
    keep.restore(model)
    scores = evaluate(model, val_set, encoder, device=str(device))
    return {
        "model": args.model,
        "text_encoder": encoder.id,
        "epochs_run": len(curve),
        "best_epoch": trainer.best_epoch,
        "val_dice": scores["dice"],
        "val_iou": scores["iou"],
        "last_epoch_val_dice": curve[-1] if curve else None,
        "train_minutes": round(seconds / 60, 2),
        "amp": trainer.amp,
        "paper_dice_iou": [80.36, 67.31],
        "curve": curve,
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prepare", help="MoNuSeg at 224 px + text features into --out")
    pr.add_argument("monuseg", type=Path, help="MoNuSeg folder with Train_Folder/, Val_Folder/")
    pr.add_argument("--out", type=Path, default=GPU_DIR)
    ti = sub.add_parser("timing", help="forward and training step of lvit_t, lvit_s")
    ti.add_argument("--models", nargs="+", default=["lvit_t", "lvit_s"])
    ti.add_argument("--batch", type=int, default=16)
    ti.add_argument("--warmup", type=int, default=5)
    ti.add_argument("--reps", type=int, default=20)
    mo = sub.add_parser("monuseg", help="lvit_t on the prepared MoNuSeg")
    mo.add_argument("--data", type=Path, default=GPU_DIR / "monuseg")
    mo.add_argument("--features", type=Path, default=GPU_DIR / "text_features.pt")
    mo.add_argument("--model", default="lvit_t", help="(another registry name: a quick check)")
    mo.add_argument("--epochs", type=int, default=200)
    mo.add_argument("--patience", type=int, default=50)
    mo.add_argument("--seed", type=int, default=0)
    mo.add_argument("--workers", type=int, default=0)
    for s in (ti, mo):
        s.add_argument("--device", default="auto")
        s.add_argument("--out", type=Path, default=ROOT / "out" / "gpu_check.json")
    args = p.parse_args(argv)
    head = header("benchmarks.gpu_check", argv)
    if args.command == "prepare":
        print(json.dumps(prepare(args.monuseg, args.out)))
        return 0
    from src_models.device import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        head["gpu"] = torch.cuda.get_device_name(device)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["header"] = head
    if args.command == "timing":
        results["timing"] = timing(args.models, args.batch, device, args.warmup, args.reps)
    else:
        results["monuseg"] = monuseg(args.data, args.features, args, device)
        r = results["monuseg"]
        print(
            f"MoNuSeg {r['model']}: val Dice {100 * r['val_dice']:.2f}, "
            f"IoU {100 * r['val_iou']:.2f} (paper 80.36 / 67.31), "
            f"{r['epochs_run']} epochs in {r['train_minutes']} min"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

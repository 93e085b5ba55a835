"""Which retraining recipe learns MoNuSeg from a handful of corrected images?

For k labeled Train_Folder tiles (a seeded choice), train ``lvit_s`` with a candidate recipe
(working resolution, patch size, optimizer steps, batch, lr, start point, early stopping) and
score Val_Folder at full resolution with the sliding window (:func:`src_models.tiling.
predict_tiled`; threshold 0.5, per-image Dice, mean). Every run is appended to
``benchmarks/out/loop_recipe.json``. MoNuSeg (CC BY-NC-SA) is only read, never copied.

    python -m benchmarks.loop_recipe /work/shared/datasets/MoNuSeg --k 1 5 --scale 1 2
    python -m benchmarks.loop_recipe DIR --k 5 --steps 500 --lr 1e-3 3e-4 --init fresh default
    python -m benchmarks.loop_recipe --synthetic          # the chest X-ray check (whole mode)

Run with one torch thread on a shared machine (``--threads 1``, the default).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
if __package__ in (None, ""):  # python benchmarks/loop_recipe.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks._common import load_split  # noqa: E402
from src_models.data.io import to_float01  # noqa: E402
from src_models.data.patches import (  # noqa: E402
    GridPatchDataset,
    PatchDataset,
    WorkingResolution,
    choose_resolution,
)
from src_models.engine.events import ValidationEnd  # noqa: E402
from src_models.engine.trainer import Callback, TrainConfig, Trainer  # noqa: E402
from src_models.models import create_model  # noqa: E402
from src_models.tiling import model_predictor, predict_tiled  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "loop_recipe.json"


# --------------------------------------------------------------------------- data


# --------------------------------------------------------------------------- training


class KeepBest(Callback):
    """Best-by-validation weights (in memory) and a wall-clock budget."""

    def __init__(self, budget_s: float | None) -> None:
        self.state = None
        self.budget_s = budget_s
        self.t0 = time.perf_counter()
        self.curve: list[float] = []

    def on_fit_start(self, trainer) -> None:
        self.t0 = time.perf_counter()

    def on_event(self, trainer, event) -> None:
        if isinstance(event, ValidationEnd):
            self.curve.append(round(float(event.dice), 4))
            if event.improved:
                self.state = copy.deepcopy(trainer.model.state_dict())
        if self.budget_s is not None and time.perf_counter() - self.t0 > self.budget_s:
            trainer.cancel()


def base_model(init: str, patch: int, text_dim: int):
    if init == "default":
        from src_models.inference import load_model

        model, _ = load_model("default")
        if int(model.img_size) != patch:
            raise ValueError(f"the default model works at {model.img_size} px, not {patch}")
        return model.float()
    return create_model("lvit_s", img_size=patch, text_dim=text_dim)


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    inter = float(np.logical_and(pred, target).sum())
    total = float(pred.sum() + target.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def score(model, encoder, items: list[dict], res: WorkingResolution, overlap: float) -> list:
    out = []
    for it in items:
        prob = predict_tiled(
            it["image"], model_predictor(model, encoder, it["text"]), res,
            overlap=overlap, batch_size=16,
        )  # fmt: skip
        out.append(dice(prob >= 0.5, it["mask"]))
    return out


def run_one(cfg: dict, train: list[dict], val: list[dict], encoder) -> dict:
    """Train with ``cfg`` on its k images; score on ``val`` at full resolution."""
    torch.manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    pick = sorted(rng.choice(len(train), size=cfg["k"], replace=False).tolist())
    chosen = [train[i] for i in pick]
    res = WorkingResolution(cfg["mode"], cfg["patch"], cfg["scale"])
    held: list[dict] = []
    if cfg["early_stop"] and cfg["k"] >= 3:
        n_held = max(1, round(cfg["k"] * cfg["holdout"]))
        held, chosen = chosen[:n_held], chosen[n_held:]
    bs = cfg["batch"]
    steps_per_epoch = cfg["val_every"]
    epochs = max(1, math.ceil(cfg["steps"] / steps_per_epoch))
    train_set = PatchDataset(
        [c["image"] for c in chosen], [c["mask"] for c in chosen], [c["text"] for c in chosen],
        res, samples_per_epoch=steps_per_epoch * bs, fg_fraction=cfg["fg"], augment=True,
        color=cfg.get("color", 0.0),
        spatial_text=cfg["spatial_text"], seed=cfg["seed"],
    )  # fmt: skip
    val_set = None
    if held:
        val_set = GridPatchDataset(
            [c["image"] for c in held], [c["mask"] for c in held], [c["text"] for c in held], res
        )
    model = base_model(cfg["init"], cfg["patch"], encoder.dim)
    tc = TrainConfig(
        epochs=epochs, batch_size=bs, lr=cfg["lr"], min_lr=cfg["lr"] * cfg["min_lr_ratio"],
        t0=epochs, patience=cfg["patience"] if held else 10**6, seed=cfg["seed"], device="cpu",
        val_batch_size=16, save_last=False, drop_last=True,
    )  # fmt: skip
    keep = KeepBest(cfg["budget_s"])
    trainer = Trainer(model, train_set, val_set, text_encoder=encoder, config=tc, hooks=[keep])
    t0 = time.perf_counter()
    done = trainer.run()
    train_s = time.perf_counter() - t0
    if keep.state is not None:
        model.load_state_dict(keep.state)
    t1 = time.perf_counter()
    per_image = score(model, encoder, val, res, cfg["overlap"])
    score_s = time.perf_counter() - t1
    return {
        "config": cfg,
        "train_images": [c["name"] for c in chosen],
        "held_out": [c["name"] for c in held],
        "val_dice": round(float(np.mean(per_image)), 4),
        "per_image": [round(d, 4) for d in per_image],
        "steps_run": trainer.global_step,
        "best_epoch": done.best_epoch,
        "stopped_early": done.stopped_early,
        "cancelled_by_budget": done.cancelled,
        "val_curve": keep.curve,
        "train_seconds": round(train_s, 1),
        "score_seconds": round(score_s, 1),
    }


def save(record: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(OUT.read_text()) if OUT.is_file() else []
    runs.append(record)
    OUT.write_text(json.dumps(runs, indent=1))


# --------------------------------------------------------------------------- synthetic


def synthetic_check(args, encoder) -> None:
    """Chest X-rays with QaTa reports: the rule must say "whole"; then k corrected images
    retrain the shipped default model (as the Retrain button does) counted in epochs (today:
    5 epochs, batch 2, lr 3e-4) or in steps (the proposed rule, capped), scored on new images."""
    from src_models.data.synthetic import make_qata_sample
    from src_models.engine.evaluate import evaluate

    size, k = args.synthetic_size, args.synthetic_k
    rng = np.random.default_rng(0)
    train = [make_qata_sample(rng, size) for _ in range(k)]
    test = [make_qata_sample(rng, size) for _ in range(args.synthetic_test)]
    res = choose_resolution(
        [t[0].shape for t in train], [t[2] for t in train], 128, [t[1] for t in train]
    )
    print("synthetic: rule ->", res, flush=True)
    imgs = [to_float01(t[0]) for t in train]
    test_set = PatchDataset(
        [to_float01(t[0]) for t in test], [t[1] for t in test], [t[2] for t in test],
        WorkingResolution.whole(128), augment=False,
    )  # fmt: skip
    variants = [("no retraining", 0, 0, 0.0)]
    variants += [("epochs: 5 x ceil(k/2), batch 2, lr 3e-4", 5 * math.ceil(k / 2), 2, 3e-4)]
    steps = min(max(args.min_steps, args.per_image * k), args.synthetic_max_steps)
    for lr in args.lr:
        variants.append((f"steps rule: {steps} steps, batch 4, lr {lr:g}", steps, 4, lr))
    for label, n_steps, bs, lr in variants:
        torch.manual_seed(0)
        model = base_model("default", 128, encoder.dim)
        t0 = time.perf_counter()
        if n_steps:
            per_epoch = min(50, n_steps)
            epochs = math.ceil(n_steps / per_epoch)
            ds = PatchDataset(
                imgs, [t[1] for t in train], [t[2] for t in train], res,
                samples_per_epoch=per_epoch * bs, augment=True, seed=0,
            )  # fmt: skip
            tc = TrainConfig(
                epochs=epochs, batch_size=bs, lr=lr, min_lr=lr / 10, t0=epochs,
                patience=10**6, device="cpu", save_last=False, drop_last=True,
            )  # fmt: skip
            Trainer(model, ds, None, text_encoder=encoder, config=tc).run()
        secs = time.perf_counter() - t0
        ev = evaluate(model, test_set, encoder, device="cpu")
        rec = {
            "synthetic": True,
            "variant": label,
            "rule": res.to_dict(),
            "k": k,
            "size": size,
            "steps": n_steps,
            "test_dice": round(float(ev["dice"]), 4),
            "n_test": len(test),
            "train_seconds": round(secs, 1),
            "note": "shared 2-core machine, 1 torch thread",
        }
        print(json.dumps(rec), flush=True)
        save(rec)


# --------------------------------------------------------------------------- main


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("root", nargs="?", default="/work/shared/datasets/MoNuSeg")
    p.add_argument("--k", type=int, nargs="+", default=[1, 3, 5, 10])
    p.add_argument("--seed", type=int, nargs="+", default=[0])
    p.add_argument("--mode", nargs="+", default=["patches"])
    p.add_argument("--scale", type=float, nargs="+", default=[2.0])
    p.add_argument("--patch", type=int, nargs="+", default=[128])
    p.add_argument("--steps", nargs="+", default=["rule"], help="an int, or 'rule'")
    p.add_argument("--per-image", type=int, default=100, help="steps rule: max(min, this * k)")
    p.add_argument("--min-steps", type=int, default=300)
    p.add_argument("--batch", type=int, nargs="+", default=[4])
    p.add_argument("--lr", type=float, nargs="+", default=[1e-3])
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--init", nargs="+", default=["fresh"])
    p.add_argument("--early-stop", type=int, nargs="+", default=[0])
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--patience", type=int, default=4, help="in validations (every --val-every)")
    p.add_argument("--val-every", type=int, default=50, help="steps per epoch")
    p.add_argument("--fg", type=float, nargs="+", default=[0.5])
    p.add_argument("--color", type=float, nargs="+", default=[0.0], help="colour augmentation")
    p.add_argument("--spatial-text", type=int, nargs="+", default=[0], help="1: no flips/rot90")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--budget-s", type=float, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="")
    p.add_argument("--synthetic", action="store_true", help="run the chest X-ray check instead")
    p.add_argument("--synthetic-k", type=int, default=10, help="corrected images")
    p.add_argument("--synthetic-size", type=int, default=224)
    p.add_argument("--synthetic-test", type=int, default=60)
    p.add_argument("--synthetic-max-steps", type=int, default=300, help="the seconds cap")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from src_models.text import TextEncoder

    encoder = TextEncoder("default")
    if args.synthetic:
        synthetic_check(args, encoder)
        return
    root = Path(args.root)
    t0 = time.perf_counter()
    train = load_split(root / "Train_Folder")
    val = load_split(root / "Val_Folder")
    print(f"loaded {len(train)} train / {len(val)} val in {time.perf_counter() - t0:.1f}s")
    rule = choose_resolution(
        [t["image"].shape for t in train[:5]], [t["text"] for t in train[:5]], 128,
        [t["mask"] for t in train[:5]],
    )  # fmt: skip
    print("rule on 5 MoNuSeg tiles ->", rule, flush=True)
    grid = itertools.product(
        args.k, args.seed, args.mode, args.scale, args.patch, args.steps, args.batch, args.lr,
        args.init, args.early_stop, args.fg, args.spatial_text, args.color,
    )  # fmt: skip
    for k, seed, mode, scale, patch, steps, batch, lr, init, es, fg, spatial, color in grid:
        n_steps = max(args.min_steps, args.per_image * k) if steps == "rule" else int(steps)
        cfg = {
            "k": k, "seed": seed, "mode": mode, "scale": scale, "patch": patch,
            "steps": n_steps, "steps_rule": steps, "batch": batch, "lr": lr,
            "min_lr_ratio": args.min_lr_ratio, "init": init, "early_stop": bool(es),
            "holdout": args.holdout, "patience": args.patience, "val_every": args.val_every,
            "fg": fg, "spatial_text": bool(spatial), "color": color, "overlap": args.overlap,
            "budget_s": args.budget_s, "threads": args.threads, "tag": args.tag,
        }  # fmt: skip
        rec = run_one(cfg, train, val, encoder)
        rec["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "torch": torch.__version__, "note": "shared 2-core machine"}  # fmt: skip
        save(rec)
        short = {k2: cfg[k2] for k2 in ("k", "seed", "scale", "patch", "steps", "batch", "lr",
                                         "init", "early_stop", "fg", "color")}  # fmt: skip
        print(
            f"{json.dumps(short)} -> Dice {rec['val_dice']:.4f}  steps {rec['steps_run']}  "
            f"train {rec['train_seconds']}s  score {rec['score_seconds']}s",
            flush=True,
        )


if __name__ == "__main__":
    main()

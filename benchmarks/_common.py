"""What the label-efficiency benchmarks (``bench_semi``, ``bench_fewlabels``) share.

Imported by the scripts in this folder (``python benchmarks/<script>.py`` puts the folder on
``sys.path``); not part of the package.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
from pathlib import Path

import numpy as np

from src_models.data import scan_split
from src_models.data.synthetic import write_dataset
from src_models.engine import Callback, TrainConfig, ValidationEnd


def train_config(args, epochs: int, seed: int) -> TrainConfig:
    """One cosine cycle over ``epochs``, no early stopping, nothing written to disk."""
    return TrainConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.lr / 10,
        t0=max(epochs, 1),
        patience=10**6,
        seed=seed,
        device="cpu",
        val_batch_size=8,
        save_last=False,
    )


def labeled_epochs(epochs: int, n_images: int, batch_size: int, min_steps: int) -> int:
    """``epochs``, lengthened to at least ``min_steps`` optimizer steps.

    With few labels an epoch is a handful of steps: a fixed epoch count would leave the model
    (and the EPI teacher it becomes) undertrained.
    """
    steps = -(-n_images // batch_size)
    return max(epochs, -(-min_steps // max(steps, 1)))


class KeepBest(Callback):
    """The best-by-validation weights of a run that writes no checkpoint (``out=None``)."""

    def __init__(self) -> None:
        self.state = None

    def on_event(self, trainer, event) -> None:
        if isinstance(event, ValidationEnd) and event.improved:
            self.state = copy.deepcopy(trainer.model.state_dict())

    def restore(self, model) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


def stats(values) -> tuple[float | None, float | None]:
    """(mean, sample sd) of the values that are not None; sd 0 for one value."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def synthetic_splits(args, work: Path, **kw):
    """Train/val/test splits of synthetic QaTa data (``args.n_*``, ``args.contrast``)."""
    size = max(args.size, 64)
    kw["contrast"] = args.contrast
    parts = (("train", args.n_train, 100), ("val", args.n_val, 200), ("test", args.n_test, 300))
    return tuple(
        scan_split(write_dataset(work / name, "qata", n=n, size=size, seed=seed, **kw))
        for name, n, seed in parts
    )


def monuseg_splits(root: Path, seed: int, *, image_label: int | None = None):
    """MoNuSeg (read only): Train_Folder split 4:1 into train/val by seed; Val_Folder is test.

    ``image_label`` sets every training record's image-level label (every MoNuSeg image has
    nuclei).
    """
    records = scan_split(root / "Train_Folder")
    order = np.random.default_rng(1000 + seed).permutation(len(records))
    n_val = max(2, len(records) // 5)
    val = [records[i] for i in order[:n_val]]
    train = [records[i] for i in order[n_val:]]
    if image_label is not None:
        train = [dataclasses.replace(r, label=image_label) for r in train]
    return train, val, scan_split(root / "Val_Folder")

"""SKS stage 1: train the classifier of an :class:`~src_models.models.sks.SKS` model on
image-level labels (lesion / no lesion, BCE). Stage 2 is ordinary (semi-)supervised training
of the same model, whose classifier then stays frozen.

Image-level labels come from, in this order: the dataset's table column (``labels``: 1/0), the
``no_lesion`` names (0, e.g. the project's one-click "no lesion"), a ground-truth mask (1 if it
has foreground, else 0). Images with none of these are left out.

::

    for epoch in train_classifier(model, train_set, ClassifierConfig(epochs=10)):
        print(epoch)          # ClassifierEpoch(epoch=1, loss=0.61, accuracy=0.7, n=40)

Under torchrun every rank trains on its share of each epoch (``batch_size`` images per rank
and step) with BatchNorm and the loss over the global batch and averaged gradients, so N ranks
take the steps of one process with ``N * batch_size`` images; epochs come from rank 0.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from src_models.engine.distributed import Distributed
from src_models.engine.sync import gather_rows

__all__ = ["ClassifierConfig", "ClassifierEpoch", "image_labels", "train_classifier"]


@dataclass
class ClassifierConfig:
    """Stage-1 settings: Adam, ``epochs`` over the labelled images, balanced BCE."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if int(self.epochs) < 1 or int(self.batch_size) < 1 or self.lr <= 0:
            raise ValueError("ClassifierConfig: epochs, batch_size >= 1 and lr > 0")


@dataclass(frozen=True)
class ClassifierEpoch:
    """One stage-1 epoch: mean BCE, training accuracy at 0.5 and the number of images."""

    epoch: int
    loss: float
    accuracy: float
    n: int


def image_labels(dataset: Any, no_lesion: Collection[str] = ()) -> np.ndarray:
    """int8 ``[N]``: 1 lesion, 0 no lesion, -1 unknown, for every item (see module docstring)."""
    n = len(dataset)
    table = getattr(dataset, "labels", None)
    out = np.full(n, -1, np.int8) if table is None else np.asarray(table, np.int8).copy()
    names = list(getattr(dataset, "names", []))
    empty = frozenset(no_lesion)
    has = np.asarray(getattr(dataset, "has_mask", np.zeros(n, bool)), bool)
    for i in range(n):
        if out[i] >= 0:
            continue
        if names and names[i] in empty:
            out[i] = 0
        elif has[i]:
            out[i] = int(bool(dataset.mask_bool(i).any()))
    return out


def train_classifier(
    model: Any,
    dataset: Any,
    config: ClassifierConfig | None = None,
    labels: np.ndarray | None = None,
    no_lesion: Collection[str] = (),
) -> Iterator[ClassifierEpoch]:
    """Train ``model.classifier`` (an SKS model) on image-level labels; yields each epoch.

    Args:
        model: an :class:`~src_models.models.sks.SKS` model (only its classifier changes).
        dataset: SegmentationDataset-like (items with ``image`` and ``index``; augmentation as
            configured on it, ``set_epoch`` is called).
        config: :class:`ClassifierConfig`.
        labels: ``[N]`` 1/0/-1 per item; default :func:`image_labels`.
        no_lesion: names known to show no lesion (used by the default labels).
    """
    cfg = config if config is not None else ClassifierConfig()
    y_all = image_labels(dataset, no_lesion) if labels is None else np.asarray(labels, np.int8)
    if len(y_all) != len(dataset):
        raise ValueError(f"labels has {len(y_all)} entries for {len(dataset)} images")
    known = np.flatnonzero(y_all >= 0)
    if known.size == 0:
        raise ValueError("no image has an image-level label (table column, no-lesion or mask)")
    n_pos = int((y_all[known] == 1).sum())
    n_neg = int(known.size - n_pos)
    # balanced BCE: each class weighs half, however rare the "no lesion" images are
    pos_w = 0.5 * known.size / max(n_pos, 1)
    neg_w = 0.5 * known.size / max(n_neg, 1)
    dist = Distributed()
    completed = False
    with dist.failures():
        try:
            device = dist.setup(cfg.device)
            for event in _train(model, dataset, cfg, known, y_all, (pos_w, neg_w), device, dist):
                if dist.is_main:
                    yield event
            completed = True
        finally:
            dist.teardown(synchronize=completed)


def _train(model, dataset, cfg, known, y_all, weights, device, dist) -> Iterator[ClassifierEpoch]:
    from src_models.data import collate

    pos_w, neg_w = weights
    labels_t = torch.as_tensor(y_all, dtype=torch.float32)
    sampler = dist.train_sampler(int(known.size), int(cfg.seed))
    loader = DataLoader(
        Subset(dataset, known.tolist()),
        batch_size=int(cfg.batch_size),
        sampler=sampler,
        collate_fn=collate,
    )
    was_training = model.training
    model.to(device)
    with model.classifier_training() as clf:
        dist.wrap(clf)
        opt = torch.optim.Adam(clf.parameters(), lr=cfg.lr)
        try:
            for epoch in range(1, int(cfg.epochs) + 1):
                sampler.set_epoch(epoch)
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(epoch)
                total, correct, seen = 0.0, 0, 0
                for batch in loader:
                    image = batch["image"].to(device)
                    y = labels_t[batch["index"]].to(device)
                    rows = gather_rows({"logits": clf(image), "y": y})  # the global batch
                    logits, y = rows["logits"], rows["y"]
                    w = torch.where(y > 0.5, pos_w, neg_w)
                    loss = F.binary_cross_entropy_with_logits(logits.float(), y, weight=w)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    dist.average_gradients(clf.parameters())
                    opt.step()
                    # every rank holds the global batch: count it on rank 0 only
                    if dist.is_main:
                        total += float(loss.detach()) * len(y)
                        correct += int(((logits.detach() > 0) == (y > 0.5)).sum())
                        seen += len(y)
                yield ClassifierEpoch(epoch, total / max(seen, 1), correct / max(seen, 1), seen)
        finally:
            dist.release(clf)
            model.train(was_training)

"""Simulated clicks: where a user would click, for training and for benchmarks.

The protocol of interactive segmentation (RITM, SimpleClick): the first click goes to the
interior point farthest from the boundary of the object (its largest connected component);
every later click goes to the point farthest from the boundary of the largest error region of
the current prediction, positive in a missed region (false negative), negative in a false
one. The image border counts as boundary, so a click never sits on the edge of the image.

:class:`ClickTraining` trains a prompted model (:mod:`src_models.models.prompts`) with such
clicks: per batch, a random number of correction passes without gradient (model in eval mode,
as at prediction time) places clicks and feeds each prediction back as the previous mask
(its probabilities; prediction is given the binary labels); the last pass, with gradient,
gives the logits the loss sees. The text is left out at random; some items start from the
text alone (no click) so the model learns to correct a text proposal, and some from a confident
wrong proposal so that it learns to let a click win over the previous mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from src_models.models.prompts import Click, encode_prompts, prompting, reads_prompts

__all__ = [
    "ClickTraining",
    "farthest_point",
    "first_click",
    "largest_component",
    "next_click",
    "wrong_proposal",
]


def largest_component(region: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool mask (empty in, empty out); ties go to the
    component found first in raster order."""
    labels, n = ndimage.label(region, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros(region.shape, bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def _distance_inside(region: np.ndarray) -> np.ndarray:
    # Padded with background so that the image border is a boundary too.
    padded = np.pad(region, 1)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def farthest_point(region: np.ndarray) -> tuple[int, int] | None:
    """``(row, col)`` of the pixel of ``region`` farthest from its boundary (``None`` if
    empty); ties go to the first in raster order."""
    region = np.asarray(region, bool)
    if not region.any():
        return None
    dist = _distance_inside(region)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(dist)), region.shape))


def first_click(target: np.ndarray) -> Click | None:
    """The first positive click on an object mask ``[H, W]``: the interior point of its largest
    component farthest from the boundary; ``None`` for an empty mask."""
    point = farthest_point(largest_component(np.asarray(target, bool)))
    return None if point is None else (point[0], point[1], 1)


def next_click(prediction: np.ndarray, target: np.ndarray) -> Click | None:
    """The correction click for a bool ``prediction`` ``[H, W]`` of ``target`` ``[H, W]``: at the
    point farthest from the boundary of the largest error component, +1 where the object was
    missed, -1 where the prediction is false; ``None`` when they agree."""
    pred, gt = np.asarray(prediction, bool), np.asarray(target, bool)
    missed = largest_component(gt & ~pred)
    false = largest_component(pred & ~gt)
    n_missed, n_false = int(missed.sum()), int(false.sum())
    if n_missed == 0 and n_false == 0:
        return None
    region, sign = (missed, 1) if n_missed >= n_false else (false, -1)
    point = farthest_point(region)
    return point[0], point[1], sign


def _random_interior_click(target: np.ndarray, rng: np.random.Generator) -> Click | None:
    """A training first click: a random pixel of the largest component at least 30% of its
    deepest distance from the boundary (the user aims at the middle, not exactly)."""
    component = largest_component(target)
    if not component.any():
        return None
    dist = _distance_inside(component)
    rows, cols = np.nonzero(dist >= max(1.0, 0.3 * float(dist.max())))
    k = int(rng.integers(len(rows)))
    return int(rows[k]), int(cols[k]), 1


def _box_of(target: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.nonzero(target)
    if len(rows) == 0:
        return None
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())


def wrong_proposal(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A confident wrong previous mask for ``target`` ``[H, W]``: the target moved (with
    wrap-around) off itself, an object of the right shape in the wrong place, as when a
    proposal found a lesion but not the one meant. Along an axis where the object spans at most
    half the image the shift is at least its extent (and the wrapped copy does not come back
    onto it), so the copy misses the object wholly when either axis allows; along the other
    axes the shift is any."""
    target = np.asarray(target, bool)
    rows, cols = np.nonzero(target)
    if len(rows) == 0:
        return target.copy()
    shift = []
    for coords, side in ((rows, target.shape[0]), (cols, target.shape[1])):
        extent = int(coords.max() - coords.min()) + 1
        low, high = (extent, side - extent) if 2 * extent <= side else (0, side - 1)
        shift.append(int(rng.integers(low, high + 1)))
    return np.roll(target, tuple(shift), axis=(0, 1))


@dataclass
class ClickTraining:
    """How :class:`~src_models.engine.trainer.Trainer` simulates clicks (``TrainConfig.clicks``).

    ``iterations``: at most this many correction passes per batch (drawn from 0..iterations).
    ``text_drop``: probability that a batch of a text model is run without its text.
    ``proposal_first``: the probability that an item starts with no click: the model's own
    proposal (from its text, if it reads one) is what the clicks then correct, with negative
    clicks where it took too much. (Starting every item from a click inside the object leaves
    few false regions, and the model never learns to let a remove-click win over a previous
    mask that holds the region.) ``wrong_start``: the probability that an item (with an
    object) starts instead from :func:`wrong_proposal`, a confident previous mask in the wrong
    place, and the correction click against it. (Without it the previous mask of training is
    nearly always right or unsure, and a toy model learned at some seeds to keep a confident
    previous mask and ignore a positive click on the object it missed:
    tests/engine/test_click_training.py.) ``box``: probability that an item also gets the box
    around its object.
    """

    iterations: int = 3
    text_drop: float = 0.3
    proposal_first: float = 0.5
    wrong_start: float = 0.2
    box: float = 0.1
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if int(self.iterations) < 0:
            raise ValueError(f"click iterations must be >= 0, got {self.iterations}")
        for name in ("text_drop", "proposal_first", "wrong_start", "box"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"ClickTraining.{name} must be in [0, 1]")

    def start(
        self, targets: np.ndarray, rng: np.random.Generator
    ) -> tuple[list[list[Click]], list[tuple[int, int, int, int] | None], Tensor]:
        """The prompts before the correction passes for bool ``targets`` ``[B, S, S]``: per
        item its clicks and box, and the previous masks float ``[B, 1, S, S]`` (zero but for
        the items that start from a wrong proposal)."""
        clicks: list[list[Click]] = [[] for _ in targets]
        boxes: list[tuple[int, int, int, int] | None] = [None] * len(targets)
        previous = torch.zeros(len(targets), 1, *targets.shape[1:])
        for i, target in enumerate(targets):
            if target.any() and rng.random() < self.wrong_start:
                wrong = wrong_proposal(target, rng)
                previous[i, 0] = torch.from_numpy(wrong.astype(np.float32))
                click = next_click(wrong, target)
            elif rng.random() < self.proposal_first:
                continue
            else:
                click = _random_interior_click(target, rng)
                if rng.random() < self.box:
                    boxes[i] = _box_of(target)
            if click is not None:
                clicks[i].append(click)
        return clicks, boxes, previous

    def forward(self, model: nn.Module, batch: dict[str, Any], rng: np.random.Generator) -> Tensor:
        """Logits ``[B, 1, S, S]`` (with gradient) of ``model`` on a prepared batch
        (``image`` ``[B, C, S, S]``, ``mask`` ``[B, 1, S, S]``, optional ``text_tokens`` /
        ``text_mask``) after the simulated clicks."""
        if not reads_prompts(model):
            raise ValueError(
                "click training needs a model with prompt inputs: create_model(name, prompts=True)"
            )
        image = batch["image"]
        tokens, text_mask = batch.get("text_tokens"), batch.get("text_mask")
        if tokens is not None and rng.random() < self.text_drop:
            tokens = text_mask = None
        targets = (batch["mask"].detach()[:, 0] >= 0.5).cpu().numpy()
        size = int(image.shape[-1])
        clicks, boxes, previous = self.start(targets, rng)
        previous = previous.to(image.device)
        passes = int(rng.integers(0, int(self.iterations) + 1))
        if passes:
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    for _ in range(passes):
                        maps = encode_prompts(size, clicks, boxes, previous, device=image.device)
                        with prompting(model, maps):
                            logits = model(image, tokens, text_mask).float()
                        # fed back as probabilities: a thresholded mask here (what prediction
                        # is given, the labels on screen) taught the toy model of
                        # tests/engine/test_click_training.py to keep a wrong previous mask
                        # against a click (B covered 0.20 instead of 0.98)
                        previous = torch.sigmoid(logits)
                        predicted = (previous[:, 0] >= self.threshold).cpu().numpy()
                        for i, target in enumerate(targets):
                            click = next_click(predicted[i], target)
                            if click is not None:
                                clicks[i].append(click)
            finally:
                model.train(was_training)
        maps = encode_prompts(size, clicks, boxes, previous, device=image.device)
        with prompting(model, maps):
            return model(image, tokens, text_mask)

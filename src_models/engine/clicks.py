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
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from src_models.models.prompts import Click, encode_prompts, prompting, reads_prompts

__all__ = [
    "ClickTraining",
    "error_region",
    "farthest_point",
    "first_click",
    "largest_component",
    "next_click",
    "perfect_click",
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


def error_region(prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, int] | None:
    """``(region, sign)``: the largest error component of a bool ``prediction`` ``[H, W]`` of
    ``target`` ``[H, W]``, with +1 if it is missed object and -1 if it is false; ``None`` when
    they agree. (Ties go to the missed one.)"""
    pred, gt = np.asarray(prediction, bool), np.asarray(target, bool)
    missed = largest_component(gt & ~pred)
    false = largest_component(pred & ~gt)
    n_missed, n_false = int(missed.sum()), int(false.sum())
    if n_missed == 0 and n_false == 0:
        return None
    return (missed, 1) if n_missed >= n_false else (false, -1)


def next_click(prediction: np.ndarray, target: np.ndarray) -> Click | None:
    """The correction click for a bool ``prediction`` ``[H, W]`` of ``target`` ``[H, W]``: at the
    point farthest from the boundary of the :func:`error_region`, +1 where the object was
    missed, -1 where the prediction is false; ``None`` when they agree."""
    found = error_region(prediction, target)
    if found is None:
        return None
    region, sign = found
    point = farthest_point(region)
    return point[0], point[1], sign


def perfect_click(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The bool mask ``[H, W]`` after a perfect correction click on ``prediction``: the
    :func:`error_region` that :func:`next_click` clicks into is set to the ``target``, and
    nothing else changes (an unchanged copy when they agree).

    The reference rows of ``benchmarks/bench_clicks.py``: what clicks are worth from a start
    (nothing, or a text's proposal) when each one fixes exactly the region it points at. A
    model may do better (it may also mend what it was not clicked on) or worse (it may fix
    the region only in part, or spoil other regions).
    """
    fixed = np.array(prediction, bool)
    found = error_region(fixed, target)
    if found is not None:
        region, sign = found
        fixed[region] = sign > 0
    return fixed


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
class SimulatedPrompts:
    """The prompts of one batch while clicks are simulated.

    ``clicks`` and ``boxes``: per item. ``previous``: float ``[B, 1, S, S]``, the previous
    masks. ``corrected``: bool ``[B, S, S]``, the union of the error regions that correction
    clicks were placed in (the pixels a model that obeys its clicks must get right).
    """

    clicks: list[list[Click]]
    boxes: list[tuple[int, int, int, int] | None]
    previous: Tensor
    corrected: np.ndarray

    def correct(self, predicted: np.ndarray, targets: np.ndarray) -> None:
        """Add each item's :func:`next_click` for bool ``predicted`` ``[B, S, S]``."""
        for i, (pred, target) in enumerate(zip(predicted, targets, strict=True)):
            self.correct_item(i, pred, target)

    def correct_item(self, i: int, predicted: np.ndarray, target: np.ndarray) -> None:
        """Add item ``i``'s :func:`next_click` for its bool ``predicted`` mask ``[S, S]``."""
        found = error_region(predicted, target)
        if found is None:
            return
        region, sign = found
        y, x = farthest_point(region)
        self.clicks[i].append((y, x, sign))
        self.corrected[i] |= region

    def maps(self, device: torch.device) -> Tensor:
        """The prompt maps ``[B, 4, S, S]`` (:func:`~src_models.models.prompts.encode_prompts`)."""
        size = int(self.previous.shape[-1])
        return encode_prompts(size, self.clicks, self.boxes, self.previous, device=device)


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
    around its object. ``corrected_weight``: the weight of :meth:`corrected_loss`, the loss
    on the regions the correction clicks pointed at (0: none). (Without it a model that reads
    text learned to leave those regions to its text: in benchmarks/bench_clicks.py the first
    correction click after a text proposal moved the mean IoU by 0.001.)
    """

    iterations: int = 3
    text_drop: float = 0.3
    proposal_first: float = 0.5
    wrong_start: float = 0.2
    box: float = 0.1
    corrected_weight: float = 1.0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if int(self.iterations) < 0:
            raise ValueError(f"click iterations must be >= 0, got {self.iterations}")
        for name in ("text_drop", "proposal_first", "wrong_start", "box"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"ClickTraining.{name} must be in [0, 1]")
        if float(self.corrected_weight) < 0:
            raise ValueError("ClickTraining.corrected_weight must be >= 0")

    def start(self, targets: np.ndarray, rng: np.random.Generator) -> SimulatedPrompts:
        """The prompts before the correction passes for bool ``targets`` ``[B, S, S]``; the
        previous masks are zero but for the items that start from a wrong proposal."""
        prompts = SimulatedPrompts(
            clicks=[[] for _ in targets],
            boxes=[None] * len(targets),
            previous=torch.zeros(len(targets), 1, *targets.shape[1:]),
            corrected=np.zeros(targets.shape, bool),
        )
        for i, target in enumerate(targets):
            if target.any() and rng.random() < self.wrong_start:
                wrong = wrong_proposal(target, rng)
                prompts.previous[i, 0] = torch.from_numpy(wrong.astype(np.float32))
                prompts.correct_item(i, wrong, target)
            elif rng.random() >= self.proposal_first:
                click = _random_interior_click(target, rng)
                if click is not None:
                    prompts.clicks[i].append(click)
                if rng.random() < self.box:
                    prompts.boxes[i] = _box_of(target)
        return prompts

    def forward(
        self, model: nn.Module, batch: dict[str, Any], rng: np.random.Generator
    ) -> tuple[Tensor, Tensor]:
        """``(logits, corrected)`` of ``model`` on a prepared batch (``image`` ``[B, C, S, S]``,
        ``mask`` ``[B, 1, S, S]``, optional ``text_tokens`` / ``text_mask``) after the simulated
        clicks: the logits ``[B, 1, S, S]`` with gradient, and float ``[B, 1, S, S]`` the
        regions the correction clicks pointed at (:attr:`SimulatedPrompts.corrected`)."""
        if not reads_prompts(model):
            raise ValueError(
                "click training needs a model with prompt inputs: create_model(name, prompts=True)"
            )
        image = batch["image"]
        tokens, text_mask = batch.get("text_tokens"), batch.get("text_mask")
        if tokens is not None and rng.random() < self.text_drop:
            tokens = text_mask = None
        targets = (batch["mask"].detach()[:, 0] >= 0.5).cpu().numpy()
        prompts = self.start(targets, rng)
        prompts.previous = prompts.previous.to(image.device)
        passes = int(rng.integers(0, int(self.iterations) + 1))
        if passes:
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    for _ in range(passes):
                        with prompting(model, prompts.maps(image.device)):
                            logits = model(image, tokens, text_mask).float()
                        # fed back as probabilities: a thresholded mask here (what prediction
                        # is given, the labels on screen) taught the toy model of
                        # tests/engine/test_click_training.py to keep a wrong previous mask
                        # against a click (B covered 0.20 instead of 0.98)
                        prompts.previous = torch.sigmoid(logits)
                        predicted = (prompts.previous[:, 0] >= self.threshold).cpu().numpy()
                        prompts.correct(predicted, targets)
            finally:
                model.train(was_training)
        with prompting(model, prompts.maps(image.device)):
            logits = model(image, tokens, text_mask)
        corrected = torch.from_numpy(prompts.corrected[:, None]).to(image.device, torch.float32)
        return logits, corrected

    def corrected_loss(self, logits: Tensor, target: Tensor, corrected: Tensor) -> Tensor:
        """``corrected_weight`` times the binary cross-entropy on the ``corrected`` pixels
        (``[B, 1, S, S]``, :meth:`forward`'s), averaged per item over its corrected pixels and
        then over the items that have any; zero (with a graph) when none has. The supervised
        loss sees these pixels among all others; this term weighs the pixels a click asked
        for on their own, so a model cannot learn to leave them to the text."""
        bce = F.binary_cross_entropy_with_logits(
            logits.float(), (target >= 0.5).float(), reduction="none"
        )
        pixels = corrected.flatten(1).sum(1)
        per_item = (bce * corrected).flatten(1).sum(1) / pixels.clamp(min=1)
        has = pixels > 0
        mean = per_item[has].mean() if bool(has.any()) else logits.float().sum() * 0.0
        return float(self.corrected_weight) * mean

"""The working resolution of a project: how its images reach a model of input size ``S``.

- ``"whole"``: each image is resized to ``S x S`` (the LViT protocol). Right when images are
  close to ``S``, when the objects stay several pixels wide after the resize, or when the texts
  talk about positions in the whole image ("lower left lung") and the images are not large: a
  patch would not know which part of the image it shows.
- ``"patches"``: each image is rescaled by ``1 / scale`` (``scale`` = input pixels per working
  pixel: 1.0 native, 2.0 half resolution) and cut into ``S x S`` patches, for training
  (:class:`~src_models.data.patches.PatchDataset`) and prediction
  (:func:`src_models.tiling.predict_tiled`). Right for large images with small objects (H&E
  nuclei in 1000 x 1000 tiles shrink to 2-3 px when resized whole to 128).

:func:`choose_resolution` picks one from the image sizes, the texts and the labeled masks;
:class:`WorkingResolution` is small and JSON-serialisable, so projects and checkpoints carry it
and prediction works as training did. :func:`steps_for` sizes a retraining round in optimizer
steps for the number of labeled images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "WorkingResolution",
    "choose_resolution",
    "object_diameters",
    "steps_for",
    "still_suits",
]

_MODES = ("whole", "patches")

# Rule constants (see choose_resolution); measured on MoNuSeg and synthetic chest X-rays.
NEAR_MODEL_SIZE = 1.5  # max side <= 1.5 * S: resize whole, patches would gain little
LARGE_IMAGE = 4.0  # max side > 4 * S: "large" (a whole-image resize loses detail)
MIN_OBJECT_PX = 8.0  # objects narrower than this at the working resolution are lost
TARGET_OBJECT_PX = 8.0  # in patch mode, downscale while objects stay at least this wide


@dataclasses.dataclass(frozen=True)
class WorkingResolution:
    """How images reach a model of input size ``patch``.

    ``mode="whole"``: each image is resized to ``patch x patch`` (``scale`` is ignored).
    ``mode="patches"``: each image is rescaled by ``1 / scale`` and cut into
    ``patch x patch`` windows; ``scale`` = input pixels per working pixel (1.0 native, 2.0 half).
    """

    mode: str = "whole"
    patch: int = 128
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"WorkingResolution.mode must be one of {_MODES}, got {self.mode!r}")
        if int(self.patch) < 1:
            raise ValueError(f"WorkingResolution.patch must be positive, got {self.patch}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"WorkingResolution.scale must be > 0, got {self.scale}")
        object.__setattr__(self, "patch", int(self.patch))
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def is_whole(self) -> bool:
        return self.mode == "whole"

    def working_shape(self, shape: Sequence[int]) -> tuple[int, int]:
        """The ``(h, w)`` an image of ``shape`` (``(H, W, ...)``) has at this resolution."""
        h, w = int(shape[0]), int(shape[1])
        if self.is_whole:
            return self.patch, self.patch
        return max(1, round(h / self.scale)), max(1, round(w / self.scale))

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "patch": self.patch, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkingResolution:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (newer checkpoints)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(data).items() if k in known})

    @classmethod
    def whole(cls, patch: int) -> WorkingResolution:
        return cls("whole", patch, 1.0)


def object_diameters(masks: Sequence[np.ndarray], max_objects: int = 20000) -> np.ndarray:
    """Equivalent diameters ``2 * sqrt(area / pi)`` (pixels) of the connected objects in masks."""
    from scipy import ndimage

    out: list[np.ndarray] = []
    for m in masks:
        if m is None:
            continue
        lab, n = ndimage.label(np.asarray(m) != 0)
        if n == 0:
            continue
        areas = np.bincount(lab.ravel())[1:]
        out.append(2.0 * np.sqrt(areas[areas > 0] / math.pi))
        if sum(len(a) for a in out) >= max_objects:
            break
    return np.concatenate(out) if out else np.zeros(0)


def choose_resolution(
    image_shapes: Sequence[Sequence[int]],
    texts: Sequence[str | None] = (),
    model_img_size: int = 128,
    masks: Sequence[np.ndarray | None] | None = None,
) -> WorkingResolution:
    """The working resolution for images of ``image_shapes`` and a model of ``model_img_size``.

    The rule, in order (``S`` = ``model_img_size``, ``L`` = the largest image side):

    1. ``L <= 1.5 S``: ``whole`` (a resize changes little).
    2. Texts that name positions in the whole image (left/right/upper/lower, as QaTa reports
       do) and ``L <= 4 S`` (not large): ``whole``, so the position words stay true.
    3. With labeled ``masks``: the typical object (median equivalent diameter ``d`` of the
       connected components, in image pixels) is ``d * S / L`` px wide after a whole-image
       resize. At least :data:`MIN_OBJECT_PX` (8): ``whole``. Otherwise ``patches``, at the
       coarsest scale among 1, 2, 4 that keeps ``d / scale >= TARGET_OBJECT_PX`` and every image
       at least one patch wide (coarser = more context per patch and cheaper prediction).
    4. Without masks: ``L <= 4 S``: ``whole``; larger: ``patches`` at native resolution.
    """
    from .dataset import has_spatial_words

    size = int(model_img_size)
    if not image_shapes:
        return WorkingResolution.whole(size)
    largest = max(max(int(s[0]), int(s[1])) for s in image_shapes)
    smallest = min(min(int(s[0]), int(s[1])) for s in image_shapes)
    if largest <= NEAR_MODEL_SIZE * size:
        return WorkingResolution.whole(size)
    if largest <= LARGE_IMAGE * size and has_spatial_words(list(texts)):
        return WorkingResolution.whole(size)
    labeled = [m for m in masks if m is not None] if masks is not None else []
    diam = object_diameters(labeled) if labeled else np.zeros(0)
    if len(diam):
        d = float(np.median(diam))
        if d * size / largest >= MIN_OBJECT_PX:
            return WorkingResolution.whole(size)
        scale = 1.0
        for s in (2.0, 4.0):
            if d / s >= TARGET_OBJECT_PX and smallest / s >= size:
                scale = s
        return WorkingResolution("patches", size, scale)
    if largest <= LARGE_IMAGE * size:
        return WorkingResolution.whole(size)
    return WorkingResolution("patches", size, 1.0)


#: A kept patch scale still suits while objects stay this wide at it (half an octave of slack
#: below TARGET_OBJECT_PX, so that a project does not flip scales on a noisy median).
KEEP_OBJECT_PX = TARGET_OBJECT_PX / math.sqrt(2)


def still_suits(
    res: WorkingResolution,
    image_shapes: Sequence[Sequence[int]],
    texts: Sequence[str | None] = (),
    masks: Sequence[np.ndarray | None] | None = None,
) -> bool:
    """Whether a project may keep ``res`` for these images instead of switching to
    :func:`choose_resolution`'s pick: the same mode, and in patch mode a scale at most one
    octave finer than the pick that keeps the median object at least :data:`KEEP_OBJECT_PX`
    wide and every image at least a patch wide. (Each switch of scale makes the next round
    relearn at the new scale; a scale near the rule's boundary would flip with every few new
    labels.)"""
    pick = choose_resolution(image_shapes, texts, res.patch, masks)
    if pick.mode != res.mode or pick.patch != res.patch:
        return False
    if res.is_whole or res.scale == pick.scale:
        return True
    labeled = [m for m in masks if m is not None] if masks is not None else []
    diam = object_diameters(labeled) if labeled else np.zeros(0)
    if not len(diam) or res.scale < pick.scale / 2:
        return False
    smallest = min(min(int(s[0]), int(s[1])) for s in image_shapes)
    wide_enough = float(np.median(diam)) / res.scale >= KEEP_OBJECT_PX
    return wide_enough and smallest / res.scale >= res.patch


def steps_for(
    n_labeled: int,
    *,
    per_image: int = 100,
    minimum: int = 300,
    maximum: int | None = None,
) -> int:
    """Optimizer steps for one round on ``n_labeled`` labeled images: ``max(minimum,
    per_image * n)``, capped at ``maximum`` (e.g. what the seconds budget allows)."""
    steps = max(int(minimum), int(per_image) * max(int(n_labeled), 1))
    return steps if maximum is None else max(1, min(steps, int(maximum)))

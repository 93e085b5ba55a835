"""Working resolution and patch sampling: train on real images of any size.

A model works on ``S x S`` inputs (its ``img_size``). An image can reach it in two ways:

- ``"whole"``: the whole image is resized to ``S x S`` (the LViT protocol). Right when images
  are close to ``S``, or when the objects stay several pixels wide after the resize, or when the
  texts talk about positions in the whole image ("lower left lung") and the images are not
  large: a patch would not know which part of the image it shows.
- ``"patches"``: the image is rescaled by ``1 / scale`` (``scale`` = input pixels per working
  pixel: 1.0 native resolution, 2.0 half resolution) and cut into ``S x S`` patches, for
  training (:class:`PatchDataset`, random patches, biased towards foreground) and for prediction
  (:func:`src_models.tiling.predict_tiled`, a sliding window). Right for large images with small
  objects (H&E nuclei in 1000 x 1000 tiles shrink to 2-3 px when resized whole to 128).

:func:`choose_resolution` picks one of the two from the image sizes, the texts and (optionally)
the labeled masks; :class:`WorkingResolution` is small and JSON-serialisable, so a checkpoint
can carry it and prediction uses the same resolution as training.

Items of both datasets match :class:`~src_models.data.SegmentationDataset`: ``image`` float32
``[C, S, S]`` in [0, 1], ``mask`` float32 ``[1, S, S]``, ``has_mask`` bool, ``text`` str,
``name`` str, ``index`` int; so :class:`~src_models.engine.Trainer` consumes them unchanged.
A :class:`PatchDataset` epoch is ``samples_per_epoch`` patches, so a training round is counted
in optimizer steps (``epochs * samples_per_epoch / batch_size``), not in passes over a handful
of images: see :func:`steps_for`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from . import transforms as T

__all__ = [
    "GridPatchDataset",
    "PatchDataset",
    "RoundPlan",
    "WorkingResolution",
    "choose_resolution",
    "color_augment",
    "object_diameters",
    "plan_round",
    "rescale_image",
    "rescale_mask",
    "steps_for",
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


@dataclasses.dataclass(frozen=True)
class RoundPlan:
    """One retraining round, counted in optimizer steps (see :func:`plan_round`).

    Feed it to :class:`PatchDataset` (``samples_per_epoch``, ``fg_fraction``, ``color``) and
    :class:`~src_models.engine.TrainConfig` (``epochs``, ``batch_size``, ``lr``, ``min_lr``,
    ``t0=epochs``: one cosine decay over the round). An "epoch" is ``steps_per_epoch`` steps:
    the unit of validation, early stopping and progress events.
    """

    resolution: WorkingResolution
    steps: int
    batch_size: int = 4
    lr: float = 1e-3
    min_lr: float = 1e-4
    fg_fraction: float = 0.5
    color: float = 1.0
    steps_per_epoch: int = 50

    @property
    def epochs(self) -> int:
        return max(1, math.ceil(self.steps / self.steps_per_epoch))

    @property
    def samples_per_epoch(self) -> int:
        return min(self.steps, self.steps_per_epoch) * self.batch_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resolution"] = self.resolution.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundPlan:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in dict(data).items() if k in known}
        d["resolution"] = WorkingResolution.from_dict(d["resolution"])
        return cls(**d)


def plan_round(
    image_shapes: Sequence[Sequence[int]],
    texts: Sequence[str | None],
    masks: Sequence[np.ndarray | None],
    model_img_size: int,
    *,
    current_resolution: WorkingResolution | None = None,
    seconds_per_step: float | None = None,
    budget_s: float = 90.0,
    per_image: int = 100,
    min_steps: int = 300,
) -> RoundPlan:
    """The recipe for one round on the labeled images (``masks``; ``None`` = unlabeled).

    Resolution by :func:`choose_resolution` over the labeled images (all images if none is
    labeled); steps by :func:`steps_for` (``max(300, 100 * k)``), capped at what
    ``budget_s`` allows when ``seconds_per_step`` (measured, e.g. over the first steps of the
    previous round) is given. Batch 4, Adam with one cosine decay to lr / 10 over the round,
    half the patches centred on foreground, colour augmentation (strength 1) in patch mode;
    whole-image mode keeps the LViT augmentation only, as today.

    The round starts from the current model (the shipped default or the last round's) when its
    architecture and input size fit: measured on MoNuSeg that beats a fresh start even from the
    chest X-ray default. ``current_resolution`` is the resolution that model was trained at
    (``None``: unknown): when it equals the chosen one, the model only needs fine-tuning and
    lr is 3e-4 (synthetic chest X-rays: 1e-3 for 300 steps loses 1.6 Dice points against
    3e-4); otherwise it learns a new task at 1e-3.
    """
    labeled = [i for i, m in enumerate(masks) if m is not None]
    pick = labeled or list(range(len(image_shapes)))
    res = choose_resolution(
        [image_shapes[i] for i in pick],
        [texts[i] for i in pick] if texts else [],
        model_img_size,
        [masks[i] for i in labeled] if labeled else None,
    )
    cap = None
    if seconds_per_step is not None and seconds_per_step > 0:
        cap = max(1, int(budget_s / seconds_per_step))
    steps = steps_for(len(labeled), per_image=per_image, minimum=min_steps, maximum=cap)
    lr = 3e-4 if current_resolution == res else 1e-3
    return RoundPlan(
        resolution=res, steps=steps, lr=lr, min_lr=lr / 10, color=0.0 if res.is_whole else 1.0
    )


# --------------------------------------------------------------------------- rescaling


def _as_float_hwc(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) * np.float32(1.0 / 255.0)
    else:
        arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {arr.shape}")
    return arr


def rescale_image(image: np.ndarray, res: WorkingResolution) -> np.ndarray:
    """Float32 ``[h, w, C]`` image at the working resolution (anti-aliased when shrinking)."""
    arr = _as_float_hwc(image)
    shape = res.working_shape(arr.shape)
    if shape == arr.shape[:2]:
        return arr.copy()
    return T.resize_image(arr, shape)


def rescale_mask(mask: np.ndarray, res: WorkingResolution) -> np.ndarray:
    """Bool ``[h, w]`` mask at the working resolution (area fraction >= 0.5 when shrinking)."""
    m = np.asarray(mask) != 0
    shape = res.working_shape(m.shape)
    if shape == m.shape:
        return m.copy()
    if shape[0] < m.shape[0] or shape[1] < m.shape[1]:
        return T.resize_image(m.astype(np.float32), shape) >= 0.5
    return T.resize_mask(m, shape)


def color_augment(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random intensity changes of a float ``[H, W, C]`` image in [0, 1] (stain/exposure).

    A gamma ``exp(U(-0.4, 0.4) * strength)`` (pale vs dark slides), a contrast change around the
    image mean ``U(1 - 0.3 s, 1 + 0.3 s)``, and per-channel gains ``U(1 - 0.15 s, 1 + 0.15 s)``
    and offsets ``U(-0.08 s, 0.08 s)`` (stain colour); clipped to [0, 1]. ``strength`` 0 is the
    identity. Geometry is untouched, so the mask is unchanged.
    """
    s = float(strength)
    img = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if s <= 0:
        return img
    c = img.shape[2] if img.ndim == 3 else 1
    img = img ** np.float32(np.exp(rng.uniform(-0.4, 0.4) * s))
    mean = img.mean(axis=(0, 1), keepdims=True)
    img = (img - mean) * np.float32(rng.uniform(1 - 0.3 * s, 1 + 0.3 * s)) + mean
    gain = rng.uniform(1 - 0.15 * s, 1 + 0.15 * s, size=c).astype(np.float32)
    bias = rng.uniform(-0.08 * s, 0.08 * s, size=c).astype(np.float32)
    if img.ndim == 2:
        gain, bias = gain[0], bias[0]
    return np.clip(img * gain + bias, 0.0, 1.0).astype(np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _pad_to(arr: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad the first two axes up to ``size`` (bottom/right) where they are smaller."""
    ph, pw = max(0, size - arr.shape[0]), max(0, size - arr.shape[1])
    if ph == 0 and pw == 0:
        return arr
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad)


class _WorkingImages:
    """Images (uint8 ``[h, w, C]``) and masks (bool) rescaled once to the working resolution."""

    def __init__(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray | None],
        texts: Sequence[str | None] | None,
        resolution: WorkingResolution,
        names: Sequence[str] | None,
        in_chans: int,
    ) -> None:
        if len(images) == 0:
            raise ValueError("no images")
        if len(masks) != len(images):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        texts = [""] * len(images) if texts is None else list(texts)
        if len(texts) != len(images):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.resolution = resolution
        self.in_chans = int(in_chans)
        self.source_names = (
            [f"image{i}" for i in range(len(images))] if names is None else list(names)
        )
        self.source_texts = [t or "" for t in texts]
        self.source_shapes: list[tuple[int, int]] = []
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.labeled: list[bool] = []
        for img, m in zip(images, masks, strict=True):
            arr = _as_float_hwc(img)
            if m is not None and np.asarray(m).shape != arr.shape[:2]:
                raise ValueError(f"mask shape {np.asarray(m).shape} != image {arr.shape[:2]}")
            self.source_shapes.append((int(arr.shape[0]), int(arr.shape[1])))
            w = rescale_image(arr, resolution)
            if w.shape[2] == 1 and self.in_chans == 3:
                w = np.repeat(w, 3, axis=2)
            elif w.shape[2] >= 3 and self.in_chans == 1:
                w = w[..., :3].mean(axis=2, keepdims=True)
            elif w.shape[2] > 3:
                w = w[..., :3]
            wm = (
                np.zeros(w.shape[:2], bool)
                if m is None
                else (
                    rescale_mask(m, resolution)
                    if not resolution.is_whole
                    else T.resize_mask(np.asarray(m) != 0, resolution.patch)
                )
            )
            p = resolution.patch
            self.images.append(_pad_to(_to_uint8(w), p))
            self.masks.append(_pad_to(wm, p))
            self.labeled.append(m is not None)


class PatchDataset(Dataset):
    """Random ``S x S`` training patches from labeled (image, mask) pairs.

    Args:
        images: float ``[H, W, C]`` / ``[H, W]`` in [0, 1] (or uint8), any size.
        masks: bool ``[H, W]`` per image (``None``: unlabeled, ``has_mask`` False).
        texts: one text per image (every patch of an image carries its text).
        resolution: a :class:`WorkingResolution`; ``"whole"`` gives the resized whole image
            (then this is :class:`~src_models.data.SegmentationDataset` with a step-counted
            epoch).
        samples_per_epoch: items per epoch (default: one per image). Item ``i`` draws from
            image ``i % n_images``, so every image gets the same share.
        fg_fraction: the fraction of patches centred on a random foreground pixel (labeled
            images with foreground); the others are placed uniformly.
        augment: apply :func:`transforms.augment` to each patch.
        color: strength of :func:`color_augment` (applied to each augmented patch with
            probability 0.8; 0 = off). Few labeled slides show few stains: this is what lets
            one corrected H&E tile generalise to paler or darker ones.
        spatial_text: passed to :func:`transforms.augment`. ``None`` (auto): in ``"whole"`` mode
            ``True`` if a text names a side (as :class:`SegmentationDataset`); in
            ``"patches"`` mode ``False``: a patch does not show where it lies in the image, so
            the whole-image position words in a text say nothing about it, and flips/rot90
            are safe.
        seed: item ``i`` of epoch ``e`` uses ``np.random.default_rng([seed, e, i])``.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray | None],
        texts: Sequence[str | None] | None = None,
        resolution: WorkingResolution | None = None,
        *,
        samples_per_epoch: int | None = None,
        fg_fraction: float = 0.5,
        augment: bool = True,
        color: float = 0.0,
        spatial_text: bool | None = None,
        seed: int = 0,
        in_chans: int = 3,
        names: Sequence[str] | None = None,
    ) -> None:
        from .dataset import has_spatial_words

        if resolution is None:
            resolution = WorkingResolution.whole(128)
        if not 0.0 <= fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must be in [0, 1], got {fg_fraction}")
        self._w = _WorkingImages(images, masks, texts, resolution, names, in_chans)
        self.resolution = resolution
        n = len(self._w.images)
        self.samples_per_epoch = n if samples_per_epoch is None else int(samples_per_epoch)
        if self.samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.fg_fraction = float(fg_fraction)
        self.augment = bool(augment)
        self.color = float(color)
        if spatial_text is None:
            spatial_text = resolution.is_whole and has_spatial_words(self._w.source_texts)
        self.spatial_text = bool(spatial_text)
        self.seed = int(seed)
        self.epoch = 0
        # foreground coordinates per image, for foreground-centred patches
        self._fg = [
            np.flatnonzero(m) if lab else None
            for m, lab in zip(self._w.masks, self._w.labeled, strict=True)
        ]

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _source(self, index: int) -> int:
        return index % len(self._w.images)

    @property
    def n_images(self) -> int:
        return len(self._w.images)

    @property
    def texts(self) -> list[str]:
        return [self._w.source_texts[self._source(i)] for i in range(len(self))]

    @property
    def names(self) -> list[str]:
        return [self._w.source_names[self._source(i)] for i in range(len(self))]

    @property
    def has_mask(self) -> np.ndarray:
        return np.asarray([self._w.labeled[self._source(i)] for i in range(len(self))], bool)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _corner(self, src: int, rng: np.random.Generator) -> tuple[int, int]:
        img = self._w.images[src]
        h, w = img.shape[:2]
        p = self.resolution.patch
        fg = self._fg[src]
        if fg is not None and len(fg) and rng.random() < self.fg_fraction:
            flat = int(fg[int(rng.integers(0, len(fg)))])
            cy, cx = divmod(flat, w)
            y, x = cy - p // 2, cx - p // 2
        else:
            y = int(rng.integers(0, h - p + 1))
            x = int(rng.integers(0, w - p + 1))
        return int(np.clip(y, 0, h - p)), int(np.clip(x, 0, w - p))

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        src = self._source(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        p = self.resolution.patch
        y, x = self._corner(src, rng)
        img = self._w.images[src][y : y + p, x : x + p].astype(np.float32) / np.float32(255.0)
        mask = self._w.masks[src][y : y + p, x : x + p]
        if self.augment:
            img, mask = T.augment(img, mask, rng, spatial_text=self.spatial_text)
            img = np.clip(img, 0.0, 1.0)
            if self.color > 0 and rng.random() < 0.8:
                img = color_augment(img, rng, self.color)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None],
            "has_mask": bool(self._w.labeled[src]),
            "text": self._w.source_texts[src],
            "name": self._w.source_names[src],
            "index": index,
        }

    def __repr__(self) -> str:
        return (
            f"PatchDataset(images={self.n_images}, samples_per_epoch={len(self)}, "
            f"resolution={self.resolution}, fg_fraction={self.fg_fraction})"
        )


class GridPatchDataset(Dataset):
    """Every image cut into a fixed grid of ``S x S`` patches (validation during training).

    Patches do not overlap except the last of each row/column, which is aligned to the image's
    edge. Mean per-patch Dice approximates per-image Dice and needs no sliding-window blending,
    so the :class:`~src_models.engine.Trainer` validates on it unchanged. Score whole images
    with :func:`src_models.tiling.predict_tiled` instead.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray | None],
        texts: Sequence[str | None] | None = None,
        resolution: WorkingResolution | None = None,
        *,
        in_chans: int = 3,
        names: Sequence[str] | None = None,
    ) -> None:
        from src_models.tiling import tile_starts

        if resolution is None:
            resolution = WorkingResolution.whole(128)
        self._w = _WorkingImages(images, masks, texts, resolution, names, in_chans)
        self.resolution = resolution
        p = resolution.patch
        self._items: list[tuple[int, int, int]] = []
        for i, img in enumerate(self._w.images):
            for y in tile_starts(img.shape[0], p, 0.0):
                for x in tile_starts(img.shape[1], p, 0.0):
                    self._items.append((i, y, x))
        self.augment = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def texts(self) -> list[str]:
        return [self._w.source_texts[i] for i, _, _ in self._items]

    @property
    def names(self) -> list[str]:
        return [f"{self._w.source_names[i]}_y{y}_x{x}" for i, y, x in self._items]

    @property
    def has_mask(self) -> np.ndarray:
        return np.asarray([self._w.labeled[i] for i, _, _ in self._items], bool)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self)
        src, y, x = self._items[index]
        p = self.resolution.patch
        img = self._w.images[src][y : y + p, x : x + p].astype(np.float32) / np.float32(255.0)
        mask = self._w.masks[src][y : y + p, x : x + p]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None],
            "has_mask": bool(self._w.labeled[src]),
            "text": self._w.source_texts[src],
            "name": f"{self._w.source_names[src]}_y{y}_x{x}",
            "index": index,
        }

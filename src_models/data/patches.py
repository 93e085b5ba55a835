"""Patch sampling at a working resolution: train on real images of any size.

A model works on ``S x S`` inputs (its ``img_size``); :mod:`src_models.data.resolution` says
how an image reaches it (resized whole, or rescaled and cut into ``S x S`` patches). This module
rescales images and masks to that resolution and samples training items from them:
:class:`PatchDataset` (random patches, half of them centred on foreground, with colour
augmentation) and :class:`GridPatchDataset` (a fixed grid, for validation).

Items of both datasets match :class:`~src_models.data.SegmentationDataset`: ``image`` float32
``[C, S, S]`` in [0, 1], ``mask`` float32 ``[1, S, S]``, ``has_mask`` bool, ``text`` str,
``name`` str, ``index`` int; so :class:`~src_models.engine.Trainer` consumes them unchanged.
A :class:`PatchDataset` epoch is ``samples_per_epoch`` patches, so a training round is counted
in optimizer steps (``epochs * samples_per_epoch / batch_size``), not in passes over a handful
of images: see :func:`steps_for`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from . import transforms as T
from .resolution import (  # re-exported: the working resolution travels with the patches
    WorkingResolution,
    choose_resolution,
    object_diameters,
    steps_for,
)
from .windows import Window

__all__ = [
    "GridPatchDataset",
    "PatchDataset",
    "WorkingResolution",
    "choose_resolution",
    "color_augment",
    "object_diameters",
    "rescale_image",
    "rescale_mask",
    "steps_for",
]

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
        window: the CT window the images were scaled by, if they share one (a trainer records
            it in its checkpoints, so that prediction scales the same way).
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
        window: Window | None = None,
    ) -> None:
        from .dataset import has_spatial_words

        if resolution is None:
            resolution = WorkingResolution.whole(128)
        if not 0.0 <= fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must be in [0, 1], got {fg_fraction}")
        self._w = _WorkingImages(images, masks, texts, resolution, names, in_chans)
        self.resolution = resolution
        self.window = window
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

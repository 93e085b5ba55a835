"""Training data of a project: :class:`ProjectDataset` (committed masks, "no lesion" images,
unlabelled images) and the stable validation split :func:`split_validation`.

An image with a CT window (:attr:`ImageRecord.window`) is scaled through it, as the Predictor
scales it for a proposal; :func:`common_window` is the window a checkpoint records."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from src_models.data.dataset import SegmentationDataset
from src_models.data.windows import Window, window_applies

from .records import ImageRecord, TrainingItem
from .retrain_config import RetrainError

__all__ = [
    "ProjectDataset",
    "common_window",
    "load_full_resolution",
    "sample_key",
    "split_validation",
]


def _value_range(loaded, window: Window | None) -> tuple[float, float] | None:
    """The intensity scale of an image's planes: its window's where one applies, else a
    volume's whole range (every slice on one scale; ``None``: each 2D image's own)."""
    if window is not None and window_applies(loaded.data.dtype, bool(loaded.rgb)):
        return window.range
    if not loaded.is_volume or loaded.data.dtype == np.uint8:
        return None
    data = loaded.data[..., :3] if loaded.rgb else loaded.data
    return float(data.min()), float(data.max())


def common_window(items: Sequence[TrainingItem]) -> Window | None:
    """The CT window every training image has (``None`` when some have none or they differ):
    what a checkpoint trained on them records, so that its proposals default to it."""
    windows = {it.image.window for it in items}
    return next(iter(windows)) if len(windows) == 1 else None


def sample_key(rec: ImageRecord, slice: int | None = None) -> str:
    """The name of a training sample (and its key in EPI's bank): the image's name; a
    volume's slice ``<name>_z<k>`` (3+ digits)."""
    if not rec.is_volume:
        return rec.name
    width = max(3, len(str(rec.n_slices - 1)))
    return f"{rec.name}_z{int(slice or 0):0{width}d}"


def item_planes(items: Sequence[TrainingItem]) -> Iterator[tuple[TrainingItem, str, np.ndarray]]:
    """``(item, name, image)`` of each project sample at its own size: a float ``[H, W, C]``
    image in [0, 1] (a volume's slice, on the whole volume's intensity scale, is an image named
    ``<name>_z<slice>``), through the image's CT window if it has one. One volume at a time
    is kept in memory."""
    from src_models.data.io import load_image, to_float01

    loaded_cache: dict[Path, Any] = {}
    for item in items:
        rec = item.image
        loaded = loaded_cache.get(rec.path)
        if loaded is None:
            loaded_cache.clear()  # keep one volume in memory
            loaded = loaded_cache[rec.path] = load_image(rec.path)
        value_range = _value_range(loaded, rec.window)
        if loaded.is_volume:
            z = int(item.slice or 0)
            f = to_float01(loaded.slice(z), value_range=value_range)
            yield item, sample_key(rec, z), f
        else:
            yield item, rec.name, to_float01(loaded.data, value_range=value_range)


class ProjectDataset(SegmentationDataset):
    """A :class:`~src_models.data.dataset.SegmentationDataset` built from project samples.

    Each :class:`TrainingItem` is one 2D sample (an image or one slice of a volume) with its
    committed mask (``has_mask``) or without one (unlabelled; an all-zero mask). Everything is
    read and resized once; items are the same dicts as the parent's.
    """

    def __init__(
        self,
        items: Sequence[TrainingItem],
        img_size: int,
        augment: bool = False,
        spatial_text: bool | None = None,
        seed: int = 0,
        in_chans: int = 3,
    ) -> None:
        from src_models.data import transforms as T
        from src_models.data.dataset import SegmentationRecord, has_spatial_words

        if not items:
            raise RetrainError("no samples to build a dataset from")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.root = None
        self.img_size = int(img_size)
        self.in_chans = int(in_chans)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.mask_resize = "nearest"
        self.items = list(items)
        names, images, masks, has_mask, texts, shapes, records = [], [], [], [], [], [], []
        empty = np.zeros((self.img_size, self.img_size), dtype=bool)
        for item, name, f in item_planes(self.items):
            rec = item.image
            shapes.append((int(f.shape[0]), int(f.shape[1])))
            f = T.resize_image(f, self.img_size)
            if self.in_chans == 1:
                f = f.mean(axis=2, keepdims=True)
            images.append(np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8))
            m = item.load_mask()
            if m is not None:
                masks.append(T.resize_mask(m, self.img_size))
                has_mask.append(True)
            else:
                masks.append(empty)
                has_mask.append(False)
            names.append(name)
            texts.append(item.text or "")
            records.append(SegmentationRecord(name, rec.path, item.mask_path, item.text))
        self.records = records
        self.names = names
        self._texts = texts
        self.original_shapes = shapes
        self.item_records = list(range(len(names)))
        self._images = np.stack(images)
        self._masks = np.stack(masks).astype(bool)
        self._has_mask = np.asarray(has_mask, dtype=bool)
        # image-level labels: a one-click "no lesion" commit is a 0 (SKS stage 1, pseudo gating)
        self._labels = np.asarray(
            [0 if it.kind == "no_lesion" else -1 for it in self.items], dtype=np.int8
        )
        self.spatial_text = has_spatial_words(texts) if spatial_text is None else bool(spatial_text)
        from src_models.data.resolution import WorkingResolution

        #: how images reach the model (the Trainer stores both in the checkpoint)
        self.resolution = WorkingResolution.whole(self.img_size)
        self.window = common_window(self.items)


def load_full_resolution(
    items: Sequence[TrainingItem],
) -> tuple[list[np.ndarray], list[np.ndarray | None], list[str], list[str]]:
    """``(images, masks, texts, names)`` of project samples at their own size: float ``[H, W,
    C]`` images in [0, 1] (a volume's slice is an image), bool masks (``None``: unlabelled)."""
    images: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    texts: list[str] = []
    names: list[str] = []
    for item, name, f in item_planes(items):
        images.append(f)
        m = item.load_mask()
        masks.append(None if m is None else np.asarray(m) != 0)
        texts.append(item.text or "")
        names.append(name)
    return images, masks, texts, names


def split_validation(
    items: Sequence[TrainingItem], fraction: float, min_val: int
) -> tuple[list[TrainingItem], list[TrainingItem], str]:
    """``(train, val, val_on)``: hold out ``fraction`` of the images (all slices of an image
    together, chosen by a hash of the image id, so the split is stable as labels are added)
    when there are at least ``min_val`` samples; else validate on the training samples."""
    items = list(items)
    if fraction <= 0 or len(items) < max(2, min_val):
        return items, items, "train"
    ids = sorted({it.image.id for it in items}, key=lambda i: (i * 2654435761) % 2**32)
    n_val = max(1, round(len(ids) * fraction))
    if n_val >= len(ids):
        return items, items, "train"
    val_ids = set(ids[:n_val])
    train = [it for it in items if it.image.id not in val_ids]
    val = [it for it in items if it.image.id in val_ids]
    return train, val, "held_out"

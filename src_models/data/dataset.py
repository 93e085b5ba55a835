"""Segmentation datasets in the LViT folder layout.

A split folder (``Train_Folder``, ``Val_Folder``, ...) holds ``img/`` (images) and ``labelcol/``
(binary masks, 0/255) and a text table with columns ``Image`` and ``Description`` (where it may
lie and how it is read: :mod:`src_models.data.tables`). An optional column ``Label`` (or
``Lesion``) holds image-level labels, 1 = lesion, 0 = no lesion (:func:`read_label_table`,
``SegmentationRecord.label``, ``SegmentationDataset.labels``).

Images and masks are paired by file stem: ``img/X.png`` with ``labelcol/X.png`` (MoNuSeg) or
``labelcol/mask_X.png`` (QaTa-COV19); suffixes may differ (``X.tif`` with ``X.png``).

:class:`SegmentationDataset` reads and resizes everything once when it is built and keeps uint8
arrays at the model size, so ``__getitem__`` is cheap. Volumes (multi-page TIFF, multi-frame
DICOM, 3D NIfTI) become one item per slice, named ``<stem>_z012``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import transforms as T
from .io import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    is_image_file,
    load_image,
    mask_from_array,
    probe_image,
    to_float01,
)
from .paraphrase import paraphrase
from .tables import (  # the table readers lived here: `from .dataset import ...` still works
    LABEL_COLUMNS,  # noqa: F401
    DatasetError,
    _lookup_text,
    _split_name,
    _stem,
    find_text_table,
    read_label_table,
    read_text_table,
)

__all__ = [
    "DatasetError",
    "SegmentationDataset",
    "SegmentationRecord",
    "collate",
    "find_text_table",
    "has_spatial_words",
    "read_label_table",
    "read_text_table",
    "scan_split",
]

_SPATIAL_WORDS = re.compile(r"\b(left|right|upper|lower)\b", re.IGNORECASE)


@dataclass
class SegmentationRecord:
    """One image of a split: its name (image stem), files and description."""

    name: str
    image_path: Path
    mask_path: Path | None = None
    text: str | None = None
    label: int | None = None  # image-level label: 1 lesion, 0 no lesion, None unknown


def has_spatial_words(texts: Sequence[str | None]) -> bool:
    """True if any text says left/right/upper/lower (side-changing augmentation would lie)."""
    return any(t and _SPATIAL_WORDS.search(t) for t in texts)


# --------------------------------------------------------------------------- scanning


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def scan_split(
    split_dir: str | os.PathLike,
    require_masks: bool = True,
    require_text: bool = False,
    *,
    check_sizes: bool = True,
    text_table: str | os.PathLike | None = None,
) -> list[SegmentationRecord]:
    """List the (image, mask, text) records of an LViT split folder.

    - Images without a mask: with ``require_masks`` they are skipped with a warning naming the
      file; otherwise they are kept with ``mask_path=None``. Masks without an image are reported
      by a warning too.
    - ``require_text``: a missing table or a missing row is a :class:`DatasetError`.
    - ``check_sizes``: read each image's and mask's header (pixels are not decoded) and raise
      :class:`DatasetError` for unreadable files or a mask whose size differs from its image.
    - An empty split raises :class:`DatasetError`.
    """
    d = Path(split_dir)
    if not d.is_dir():
        raise DatasetError(f"Dataset folder '{d}' does not exist")
    img_dir = d / "img"
    if not img_dir.is_dir():
        raise DatasetError(f"Dataset folder '{d}' has no 'img' subfolder (LViT layout)")
    mask_dir = d / "labelcol"
    if require_masks and not mask_dir.is_dir():
        raise DatasetError(f"Dataset folder '{d}' has no 'labelcol' subfolder with the masks")

    images = _list_images(img_dir)
    if not images:
        raise DatasetError(f"No images in '{img_dir}' (supported: png, jpg, tif, dcm, nii, ...)")

    masks_by_stem: dict[str, Path] = {}
    if mask_dir.is_dir():
        for m in _list_images(mask_dir):
            masks_by_stem.setdefault(_stem(m.name), m)

    table_path = Path(text_table) if text_table is not None else find_text_table(d)
    table = read_text_table(table_path) if table_path is not None else {}
    label_table = read_label_table(table_path) if table_path is not None else {}
    if require_text and table_path is None:
        raise DatasetError(
            f"No text table for '{d}': expected text.csv or {_split_name(d)}_text.xlsx in it "
            f"or {_split_name(d)}_text.xlsx beside it"
        )

    stems = [_stem(p.name) for p in images]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise DatasetError(f"Several images in '{img_dir}' share the name(s) {dup} (suffix aside)")

    records: list[SegmentationRecord] = []
    used_masks: set[Path] = set()
    for img in images:
        stem = _stem(img.name)
        mask = masks_by_stem.get(stem) or masks_by_stem.get(f"mask_{stem}")
        if mask is None:
            if require_masks:
                warnings.warn(
                    f"Image '{img}' has no mask in '{mask_dir}' (expected '{stem}.png' or "
                    f"'mask_{stem}.png'); it is skipped",
                    stacklevel=2,
                )
                continue
        else:
            used_masks.add(mask)
        keys = ([mask.name] if mask is not None else []) + [img.name]
        text = _lookup_text(table, keys) if table else None
        if text is not None and not text:
            text = None
        if text is None and require_text:
            raise DatasetError(
                f"No description for image '{img.name}' in text table '{table_path}' "
                f"(looked for {' or '.join(repr(k) for k in keys)})"
            )
        label = _lookup_text(label_table, keys) if label_table else None  # same name lookup
        records.append(SegmentationRecord(stem, img, mask, text, label))

    orphans = sorted(set(masks_by_stem.values()) - used_masks)
    if orphans:
        shown = ", ".join(str(p) for p in orphans[:5])
        more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
        warnings.warn(f"Masks without an image are ignored: {shown}{more}", stacklevel=2)

    if not records:
        raise DatasetError(f"No usable (image, mask) pairs in '{d}'")

    if check_sizes:
        for r in records:
            if r.mask_path is None:
                continue
            _check_pair_sizes(r.image_path, r.mask_path)
    return records


def _check_pair_sizes(image_path: Path, mask_path: Path) -> None:
    try:
        ishape, _ = probe_image(image_path)
        mshape, _ = probe_image(mask_path)
    except ImageReadError as exc:
        raise DatasetError(str(exc)) from exc
    if tuple(ishape) != tuple(mshape):
        raise DatasetError(
            f"Mask '{mask_path}' has size {tuple(mshape)} but its image '{image_path}' has "
            f"size {tuple(ishape)}"
        )


# --------------------------------------------------------------------------- dataset


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _load_record(
    rec: SegmentationRecord,
    img_size: int,
    in_chans: int,
    mask_mode: str,
    max_pixels: int | None,
    mask_threshold: float | None = None,
) -> list[tuple[str, np.ndarray, np.ndarray | None, tuple[int, int]]]:
    """Read one record; return (name, image uint8, mask bool | None, original (H, W)) per slice."""
    try:
        img = load_image(rec.image_path, max_pixels=max_pixels)
        msk = load_image(rec.mask_path, max_pixels=max_pixels) if rec.mask_path else None
    except ImageReadError as exc:
        raise DatasetError(str(exc)) from exc
    if msk is not None and tuple(msk.spatial_shape) != tuple(img.spatial_shape):
        raise DatasetError(
            f"Mask '{rec.mask_path}' has size {tuple(msk.spatial_shape)} but its image "
            f"'{rec.image_path}' has size {tuple(img.spatial_shape)}"
        )
    value_range = None
    if img.is_volume and img.data.dtype != np.uint8:
        # One intensity scale for all slices of a volume.
        data = img.data[..., :3] if img.rgb else img.data
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise DatasetError(f"Image '{rec.image_path}' contains NaN or infinite values")
        value_range = (float(data.min()), float(data.max()))
    out = []
    n = img.num_slices
    width = max(3, len(str(n - 1)))
    for z in range(n):
        try:
            f = to_float01(img.slice(z), value_range=value_range)
        except ValueError as exc:
            raise DatasetError(f"Image '{rec.image_path}': {exc}") from exc
        orig = f.shape[:2]
        f = T.resize_image(f, img_size)
        if in_chans == 1:
            f = f.mean(axis=2, keepdims=True)
        m = None
        if msk is not None:
            mz = msk.slice(z) if msk.is_volume else msk.data
            try:
                binary = mask_from_array(mz, rgb=msk.rgb, threshold=mask_threshold)
            except ValueError as exc:
                raise DatasetError(f"Mask '{rec.mask_path}': {exc}") from exc
            m = T.resize_mask(binary, img_size, mode=mask_mode)
        name = f"{rec.name}_z{z:0{width}d}" if img.is_volume else rec.name
        out.append((name, _to_uint8(f), m, (int(orig[0]), int(orig[1]))))
    return out


class SegmentationDataset(Dataset):
    """Images, masks and texts of one split, resized once to ``img_size``.

    Parameters
    ----------
    records_or_split_dir:
        A split folder in the LViT layout (scanned with :func:`scan_split`) or a list of
        :class:`SegmentationRecord`.
    img_size:
        Side of the square model input.
    augment:
        Apply :func:`transforms.augment` in ``__getitem__`` (training).
    paraphrase_text:
        With ``augment``, say each text anew from its facts (:func:`~.paraphrase.paraphrase`:
        texts whose facts it cannot read, e.g. reports, stay as they are). Drawn from its own
        stream ``default_rng([seed, epoch, index, 1])``, so the image augmentation is the same
        with or without it.
    spatial_text:
        ``True`` turns off side-changing augmentation (rot90, flips), ``False`` keeps the paper's
        augmentation, ``None`` (auto) = ``True`` if any text says left/right/upper/lower.
    seed:
        Base of the per-item random generators: item ``i`` of epoch ``e`` is augmented with
        ``np.random.default_rng([seed, e, i])`` (reproducible, resumable, worker-independent).
    in_chans:
        3 (RGB; grayscale repeated) or 1 (mean of the channels).
    require_masks, require_text:
        Passed to :func:`scan_split`. Records without a mask give an all-zero mask and
        ``has_mask=False``.
    mask_threshold:
        ``None`` (default): masks must be binary (0/1, 0/255 or boolean), anything else is a
        :class:`DatasetError` naming the values found; a number: a mask value above it is
        lesion (see :func:`~src_models.data.io.mask_from_array`).
    mask_resize:
        ``"nearest"`` (default) or ``"any"`` (official LViT: bilinear then > 0); see
        :func:`transforms.resize_mask`.
    num_workers:
        Threads used to decode and resize files while building (decoding releases the GIL).
    progress:
        Optional callback ``progress(done, total)`` called while loading.

    ``labels`` are the table's image-level labels per item (-1 unknown); a volume's 0 applies
    to all its slices, its 1 to none (it does not say which slices show the lesion).

    Items are dicts: ``image`` float32 ``[in_chans, S, S]`` in [0, 1], ``mask`` float32
    ``[1, S, S]`` in {0, 1}, ``has_mask`` bool, ``text`` str ("" if none), ``name`` str,
    ``index`` int.
    """

    #: Subclasses that build their own arrays without this ``__init__`` (the project's
    #: ``ProjectDataset``) keep their texts as they are.
    paraphrase_text = False

    def __init__(
        self,
        records_or_split_dir: str | os.PathLike | Sequence[SegmentationRecord],
        img_size: int = 224,
        augment: bool = False,
        spatial_text: bool | None = None,
        seed: int = 0,
        in_chans: int = 3,
        *,
        require_masks: bool = True,
        require_text: bool = False,
        mask_resize: str = "nearest",
        mask_threshold: float | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        num_workers: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        paraphrase_text: bool = True,
    ):
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        if int(img_size) < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if mask_resize not in ("nearest", "any"):
            raise ValueError(f"mask_resize must be 'nearest' or 'any', got {mask_resize!r}")
        if isinstance(records_or_split_dir, (str, os.PathLike)):
            self.root: Path | None = Path(records_or_split_dir)
            records = scan_split(self.root, require_masks=require_masks, require_text=require_text)
        else:
            self.root = None
            records = list(records_or_split_dir)
            if not records:
                raise DatasetError("SegmentationDataset got an empty list of records")
        self.records: list[SegmentationRecord] = records
        self.img_size = int(img_size)
        self.in_chans = int(in_chans)
        self.augment = bool(augment)
        self.paraphrase_text = bool(paraphrase_text)
        self.seed = int(seed)
        self.epoch = 0
        self.mask_resize = mask_resize
        self.mask_threshold = mask_threshold

        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1)
        total = len(records)
        results: list = [None] * total

        def work(i: int):
            return _load_record(
                records[i], self.img_size, self.in_chans, mask_resize, max_pixels, mask_threshold
            )

        if num_workers > 1 and total > 1:
            with ThreadPoolExecutor(max_workers=num_workers) as pool:
                for i, res in enumerate(pool.map(work, range(total))):
                    results[i] = res
                    if progress is not None:
                        progress(i + 1, total)
        else:
            for i in range(total):
                results[i] = work(i)
                if progress is not None:
                    progress(i + 1, total)

        names: list[str] = []
        images: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        has_mask: list[bool] = []
        texts: list[str] = []
        shapes: list[tuple[int, int]] = []
        item_records: list[int] = []
        labels: list[int] = []
        empty = np.zeros((self.img_size, self.img_size), dtype=bool)
        for ri, (rec, items) in enumerate(zip(records, results, strict=True)):
            for name, im, m, shape in items:
                names.append(name)
                images.append(im)
                masks.append(m if m is not None else empty)
                has_mask.append(m is not None)
                texts.append(rec.text or "")
                shapes.append(shape)
                item_records.append(ri)
                # A volume's "lesion" label does not say which slices: only 0 carries over.
                label = -1 if rec.label is None else int(rec.label)
                if len(items) > 1 and label == 1:
                    label = -1
                labels.append(label)
        self.names = names
        self._texts = texts
        self.original_shapes = shapes
        self.item_records = item_records
        self._images = np.stack(images)  # [N, S, S, C] uint8
        self._masks = np.stack(masks).astype(bool)  # [N, S, S]
        self._has_mask = np.asarray(has_mask, dtype=bool)
        self._labels = np.asarray(labels, dtype=np.int8)
        self.spatial_text = has_spatial_words(texts) if spatial_text is None else bool(spatial_text)

    # ------------------------------------------------------------------ API

    def __len__(self) -> int:
        return len(self.names)

    @property
    def texts(self) -> list[str]:
        """The text of every item ("" where there is none)."""
        return list(self._texts)

    @property
    def has_mask(self) -> np.ndarray:
        """Bool array: which items have a ground-truth mask."""
        return self._has_mask.copy()

    @property
    def labels(self) -> np.ndarray:
        """int8 array of image-level labels from the table: 1 lesion, 0 none, -1 unknown."""
        labels = getattr(self, "_labels", None)  # subclasses that build their own arrays
        return np.full(len(self), -1, np.int8) if labels is None else labels.copy()

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of epoch ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def image_uint8(self, index: int) -> np.ndarray:
        """The stored (resized, un-augmented) image ``[S, S, C]`` uint8."""
        return self._images[index]

    def mask_bool(self, index: int) -> np.ndarray:
        """The stored (resized, un-augmented) mask ``[S, S]`` bool."""
        return self._masks[index]

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        img = self._images[index].astype(np.float32) * np.float32(1.0 / 255.0)
        mask = self._masks[index]
        text = self._texts[index]
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            img, mask = T.augment(img, mask, rng, spatial_text=self.spatial_text)
            img = np.clip(img, 0.0, 1.0)
            if self.paraphrase_text:
                text = paraphrase(text, np.random.default_rng([self.seed, self.epoch, index, 1]))
        image_t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        return {
            "image": image_t,
            "mask": mask_t,
            "has_mask": bool(self._has_mask[index]),
            "text": text,
            "name": self.names[index],
            "index": index,
        }

    def __repr__(self) -> str:
        src = str(self.root) if self.root is not None else f"{len(self.records)} records"
        return (
            f"SegmentationDataset({src!r}, items={len(self)}, img_size={self.img_size}, "
            f"augment={self.augment}, spatial_text={self.spatial_text})"
        )


def collate(batch: Sequence[dict]) -> dict:
    """Stack a list of items: tensors for image/mask/has_mask/index, lists for text/name."""
    if not batch:
        raise ValueError("collate got an empty batch")
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": torch.stack([b["mask"] for b in batch]),
        "has_mask": torch.tensor([bool(b.get("has_mask", True)) for b in batch]),
        "text": [b["text"] for b in batch],
        "name": [b["name"] for b in batch],
        "index": torch.tensor([int(b["index"]) for b in batch], dtype=torch.long),
    }

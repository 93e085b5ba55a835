"""Batch prediction: many images and volumes segmented with one model.

:func:`plan_batch` turns inputs (image files, folders: every image file in them, volumes, a
folder holding a DICOM series: one volume) into :class:`BatchItem` s, each with its text (one
for all, or per image from an ``Image,Description`` table,
:func:`~src_models.data.tables.read_text_table`) and its output file in ``out_dir``: a mask of
the same format for a 2D image (``.tif`` for TIFF, else ``.png``), a NIfTI ``.nii.gz`` for a
volume, with the source's geometry. It refuses, before anything runs, outputs that would
overwrite an input or that two inputs would share.

:func:`predict_batch` runs them: a ``torch.utils.data.DataLoader`` (``workers`` processes, or
none) reads and preprocesses the images exactly as :class:`~src_models.inference.Predictor`
does (``to_float01``, ``resize_image`` to the model size) and feeds batches of up to
``batch_size`` model inputs (slices of a volume, several images, mixed texts) to the model;
checkpoints trained in patches mode go through the sliding window image by image (tiles
batched). A CT window (``window=``, by default the Predictor's) scales images stored as HU.
It is a generator of small events (:class:`BatchPlanned`, :class:`ItemSkipped`,
:class:`SlicesDone`, :class:`ItemWritten`, :class:`BatchFinished`); closing it stops the run.
Resumable: items whose output exists are skipped; every output is written atomically, so an
interrupted run leaves only whole files.

Under torchrun (``dist``, a :class:`~src_models.engine.distributed.Distributed` whose group
is set up: ``napari-lvit predict ... --out-dir`` does it) every rank plans the same items and
takes its share (:func:`shard_items`: balanced by slices, each item on exactly one rank), so
every output is written once, by one rank. ``BatchPlanned`` and ``BatchFinished`` count the
whole job (summed over ranks); the other events are this rank's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from src_models.data.io import (
    image_suffix,
    is_image_file,
    load_image,
    probe_image,
    to_float01,
    write_mask,
)
from src_models.data.transforms import resize_image, resize_prob
from src_models.data.windows import Window, as_window, input_range
from src_models.device import autocast
from src_models.errors import UserError
from src_models.inference_checks import MAX_PIXELS, check_finite_prob

__all__ = [
    "BatchFinished",
    "BatchItem",
    "BatchPlanned",
    "ItemSkipped",
    "ItemWritten",
    "SlicesDone",
    "output_name",
    "plan_batch",
    "predict_batch",
    "run_batch",
    "shard_items",
]

VOLUME_SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class BatchItem:
    """One input file and where its mask goes; ``slices`` = 1 for a 2D image."""

    source: Path
    output: Path
    text: str | None
    volume: bool
    slices: int


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class BatchPlanned:
    """First event: ``items`` in all, ``to_do`` of them to run (``slices`` model inputs)."""

    items: int
    to_do: int
    skipped: int
    slices: int


@dataclass(frozen=True)
class ItemSkipped:
    """Its output already exists (an earlier run wrote it)."""

    source: Path
    output: Path


@dataclass(frozen=True)
class SlicesDone:
    """After each model batch: ``done`` of ``total`` slices (2D images count one)."""

    done: int
    total: int


@dataclass(frozen=True)
class ItemWritten:
    """One output written; ``fraction``: share of its pixels in the mask."""

    source: Path
    output: Path
    slices: int
    fraction: float


@dataclass(frozen=True)
class BatchFinished:
    written: int
    skipped: int
    slices: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Slices (2D images) per second."""
        return self.slices / self.seconds if self.seconds > 0 else float("inf")


Event = BatchPlanned | ItemSkipped | SlicesDone | ItemWritten | BatchFinished


# --------------------------------------------------------------------------- planning


def output_name(source: str | os.PathLike, volume: bool) -> str:
    """The output file name of ``source``: ``<stem>.nii.gz`` for a volume, ``<stem>.tif`` for a
    TIFF image, ``<stem>.png`` for any other 2D image."""
    p = Path(source)
    suffix = image_suffix(p)
    stem = p.name[: len(p.name) - len(suffix)] if suffix else p.name
    if volume:
        return stem + VOLUME_SUFFIX
    return stem + (suffix if suffix in (".tif", ".tiff") else ".png")


def _expand(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """(files, folders given): folders give their image files (sorted, not recursive)."""
    files: list[Path] = []
    folders: list[Path] = []
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir() and _is_dicom_folder(p):
            files.append(p)  # a DICOM series: one volume
        elif p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and is_image_file(f))
            if not found:
                raise UserError(f"{p}: no image files in this folder", hint="give image files")
            files += found
            folders.append(p)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or folder", hint="check the path")
    seen: set[Path] = set()
    unique = []
    for f in files:  # the same file named twice (or by its folder too) is segmented once
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique, folders


def _is_dicom_folder(path: Path) -> bool:
    try:
        from src_models.data.dicom import is_dicom_folder
    except ImportError:  # a reader without DICOM series: the folder's image files, one by one
        return False
    return is_dicom_folder(path)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def plan_batch(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    text: str | None = None,
    texts: dict[str, str] | None = None,
    needs_text: bool = False,
    max_pixels: int | None = MAX_PIXELS,
) -> list[BatchItem]:
    """The items of a batch run, checked from the files' headers (nothing is decoded).

    ``texts``: ``{file name: description}`` (e.g. :func:`read_text_table`), looked up by the
    image's file name with or without its suffix; ``text``: the text of the images the table
    does not name. ``needs_text``: the model reads text, so every image must have one.
    Raises :class:`~src_models.errors.UserError` for missing inputs, images over
    ``max_pixels`` (per slice), missing texts, and outputs that would overwrite an input or
    that two inputs would share.
    """
    from src_models.cli._checks import same_file
    from src_models.data.tables import _lookup_text
    from src_models.text import validate_text

    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out-dir {out} is a file", hint="give a folder for the masks")
    files, folders = _expand(inputs)
    for folder in folders:
        if _inside(out, folder):
            raise UserError(
                f"--out-dir {out} is inside the input folder {folder}: the masks would be read as "
                "images by the next run",
                hint="give another --out-dir",
            )
    items: list[BatchItem] = []
    by_output: dict[Path, Path] = {}
    missing: list[str] = []
    for f in files:
        shape, rgb = probe_image(f, max_pixels=None)
        volume = len(shape) == 3
        plane = int(shape[-2]) * int(shape[-1])
        if max_pixels is not None and plane > max_pixels:
            raise UserError(
                f"Cannot segment '{f}': a slice has {plane} pixels, more than the limit of "
                f"{max_pixels}",
                hint=f"crop or downscale it, or pass --max-pixels {plane} to try anyway",
            )
        item_text = _lookup_text(texts, [f.name]) if texts else None
        if item_text is None or not item_text.strip():
            item_text = text
        if needs_text:
            if item_text is None or not item_text.strip():
                missing.append(f.name)
            else:
                validate_text(item_text)
        target = out / output_name(f, volume)
        key = target.resolve()
        if key in by_output:
            raise UserError(
                f"{f} and {by_output[key]} would both be segmented into {target}",
                hint="rename one of them, or predict them into different --out-dir folders",
            )
        by_output[key] = f
        items.append(BatchItem(f, target, item_text, volume, int(shape[0]) if volume else 1))
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise UserError(
            f"this model reads text, and {len(missing)} image(s) have none: {shown}",
            hint="give --text for all, or a --texts table (Image, Description) naming each",
        )
    for item in items:
        for f in files:
            if same_file(item.output, f):
                raise UserError(
                    f"the mask of {item.source} would be written over the input {f}",
                    hint="give another --out-dir",
                )
    return items


# --------------------------------------------------------------------------- the loader


@dataclass
class _Chunk:
    """What a loader worker sends: model inputs ``x [n, S, S, 3]`` for ``keys`` (item, slice)
    at ``shapes`` (h, w) with ``texts``; or one whole float image ``full`` for the sliding
    window (``x`` is then None)."""

    keys: list[tuple[int, int]]
    shapes: list[tuple[int, int]]
    texts: list[str | None]
    x: np.ndarray | None = None
    full: np.ndarray | None = None
    #: item -> its geometry (volumes only, sent with their first slice)
    geometry: dict[int, dict] | None = None
    #: the reader's message when an item could not be read (raised in the main process)
    error: str | None = None


class _SliceStream(torch.utils.data.IterableDataset):
    """Reads the items (each worker its share), cuts volumes into slices, preprocesses them
    like :meth:`Predictor.predict_prob` and yields :class:`_Chunk` batches."""

    def __init__(
        self,
        items: list[tuple[int, BatchItem]],
        size: int,
        batch_size: int,
        tiled: Callable[[tuple[int, int]], bool],
        max_pixels: int | None,
        window: Window | None = None,
    ) -> None:
        self.items, self.size, self.batch_size = items, size, batch_size
        self.tiled, self.max_pixels, self.window = tiled, max_pixels, window

    def __iter__(self) -> Iterator[_Chunk]:
        info = torch.utils.data.get_worker_info()
        share = self.items if info is None else self.items[info.id :: info.num_workers]
        pending = _Chunk([], [], [])
        arrays: list[np.ndarray] = []
        for index, item in share:
            limit = None if self.max_pixels is None else self.max_pixels * max(item.slices, 1)
            try:
                loaded = load_image(item.source, max_pixels=limit)
            except (UserError, ValueError, OSError) as exc:
                # sent, not raised: a worker's exception would lose its type on the way
                yield _Chunk([], [], [], error=str(exc))
                return
            geometry = {index: _geometry(loaded)} if item.volume else None
            for z in range(loaded.num_slices):
                image = loaded.slice(z)
                hw = (int(image.shape[0]), int(image.shape[1]))
                image01 = to_float01(image, value_range=input_range(image, self.window))
                if self.tiled(hw):
                    yield _Chunk([(index, z)], [hw], [item.text], full=image01, geometry=geometry)
                    geometry = None
                    continue
                arrays.append(resize_image(image01, self.size))
                pending.keys.append((index, z))
                pending.shapes.append(hw)
                pending.texts.append(item.text)
                if geometry is not None:
                    pending.geometry = {**(pending.geometry or {}), **geometry}
                    geometry = None
                if len(arrays) == self.batch_size:
                    pending.x = np.stack(arrays)
                    yield pending
                    pending, arrays = _Chunk([], [], []), []
        if arrays:
            pending.x = np.stack(arrays)
            yield pending


def _identity(x):
    return x


class _Tiler:
    """Picklable ``(h, w) -> bool``: does an image of that size go through the sliding window?"""

    def __init__(self, patches: bool, tile: bool, min_side: int) -> None:
        self.patches, self.tile, self.min_side = patches, tile, min_side

    def __call__(self, hw: tuple[int, int]) -> bool:
        return self.patches or (self.tile and max(hw) > self.min_side)


# --------------------------------------------------------------------------- running


@torch.inference_mode()
def _probabilities(predictor, x: np.ndarray, texts: Sequence[str | None]) -> np.ndarray:
    """float32 ``[N, S, S, 3]`` with one text each -> probabilities ``[N, S, S]``."""
    if not predictor.uses_text:
        return predictor._run(x, None)
    if len(set(texts)) == 1:  # one text: the Predictor's own path (its caches included)
        return predictor._run(x, texts[0])
    from src_models.text import validate_text

    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).to(predictor.device)
    feats = predictor.text_encoder.encode([validate_text(s) for s in texts]).to(predictor.device)
    with autocast(predictor.device):
        logits = predictor.model(t, feats.tokens, feats.mask)
    return torch.sigmoid(logits.float())[:, 0].cpu().numpy()


def _write_nifti(item: BatchItem, mask: np.ndarray, geometry: dict) -> Path:
    """A volume mask ``[Z, H, W]`` as NIfTI with the source's geometry (its napari-order
    affine; 1 mm voxels when the source has none)."""
    from src_models.data.writers import write_nifti

    return write_nifti(item.output, mask, geometry.get("affine"), inputs=[item.source])


def _geometry(loaded) -> dict:
    """Spacing, origin and affine of a loaded source, where the reader provides them."""
    return {k: getattr(loaded, k, None) for k in ("spacing", "origin", "affine")}


def shard_items(items: Sequence[BatchItem], world_size: int, rank: int) -> list[int]:
    """The indices of ``items`` that rank ``rank`` of ``world_size`` runs: each item goes, in
    order, to the rank with the fewest slices so far (the lowest rank on a tie), so 2D images
    are dealt round-robin and volumes spread by size. Every rank computes the same split."""
    load = [0] * int(world_size)
    mine = []
    for i, item in enumerate(items):
        r = min(range(len(load)), key=lambda k: (load[k], k))
        load[r] += max(int(item.slices), 1)
        if r == rank:
            mine.append(i)
    return mine


def predict_batch(
    predictor,
    items: Sequence[BatchItem],
    *,
    batch_size: int = 8,
    workers: int = 0,
    threshold: float | None = None,
    skip_existing: bool = True,
    window: Window | tuple[float, float] | str | None = None,
    dist=None,
) -> Iterator[Event]:
    """Run ``predictor`` (a :class:`~src_models.inference.Predictor`) on ``items``; yields
    events (see the module docstring). Masks equal those of ``predictor.predict`` image by
    image (up to floating-point differences between batch sizes). ``window``: a CT window for
    HU images (``None``: the Predictor's, e.g. its checkpoint's). ``dist``: a set-up
    :class:`~src_models.engine.distributed.Distributed` to share the items among the ranks of
    a torchrun job (``None``: this process runs them all)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if dist is None:
        from src_models.engine.distributed import DistEnv, Distributed

        dist = Distributed(DistEnv())
    cut = predictor.threshold if threshold is None else float(threshold)
    start = time.perf_counter()
    todo: list[tuple[int, BatchItem]] = []
    skipped = []
    for i in shard_items(items, dist.world_size, dist.rank):
        item = items[i]
        if skip_existing and item.output.exists():
            skipped.append(item)
        else:
            todo.append((i, item))
    total = sum(item.slices for _, item in todo)
    counts = dist.all_reduce_sum([len(todo), len(skipped), total])
    yield BatchPlanned(len(items), *(int(c) for c in counts))
    for item in skipped:
        yield ItemSkipped(item.source, item.output)
    tiler = _Tiler(predictor.resolution is not None, predictor.tile, predictor.tile_min_side)
    window = getattr(predictor, "window", None) if window is None else as_window(window)
    stream = _SliceStream(todo, predictor.img_size, batch_size, tiler, predictor.max_pixels, window)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=workers, collate_fn=_identity
    )
    masks: dict[int, np.ndarray] = {}
    geometry: dict[int, dict] = {}
    left = {i: item.slices for i, item in todo}
    by_index = dict(todo)
    done = written = 0
    for chunk in loader:
        if chunk.error is not None:
            raise UserError(chunk.error, hint="fix or remove that file, then rerun to resume")
        geometry.update(chunk.geometry or {})
        if chunk.x is not None:
            probs = _probabilities(predictor, chunk.x, chunk.texts)
            check_finite_prob(probs, predictor.name)
            probs = [resize_prob(p, hw) for p, hw in zip(probs, chunk.shapes, strict=True)]
        else:
            probs = [_tiled(predictor, chunk.full, chunk.texts[0], batch_size)]
        for (index, z), prob in zip(chunk.keys, probs, strict=True):
            item = by_index[index]
            mask = prob >= cut
            if item.volume:
                if index not in masks:
                    masks[index] = np.zeros((item.slices, *mask.shape), bool)
                masks[index][z] = mask
            else:
                masks[index] = mask
            left[index] -= 1
            if left[index] == 0:
                full = masks.pop(index)
                if item.volume:
                    _write_nifti(item, full, geometry.pop(index, {}))
                else:
                    write_mask(item.output, full)
                written += 1
                yield ItemWritten(item.source, item.output, item.slices, float(full.mean()))
        done += len(chunk.keys)
        yield SlicesDone(done, total)
    counts = dist.all_reduce_sum([written, len(skipped), done])  # (waits for every rank)
    yield BatchFinished(*(int(c) for c in counts), time.perf_counter() - start)


def _tiled(predictor, image01: np.ndarray, text: str | None, batch_size: int) -> np.ndarray:
    """The Predictor's sliding window on one float image, with tiles batched."""
    prob = predictor.tiled_prob(image01, text, batch_size)
    check_finite_prob(prob, predictor.name)
    return prob


def run_batch(
    predictor,
    items: Sequence[BatchItem],
    callback: Callable[[Event], object] | None = None,
    **kwargs,
) -> BatchFinished:
    """:func:`predict_batch` to the end, each event passed to ``callback``; returns the last."""
    last = None
    for event in predict_batch(predictor, items, **kwargs):
        if callback is not None:
            callback(event)
        last = event
    assert isinstance(last, BatchFinished)
    return last

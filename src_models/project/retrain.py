"""Retraining rounds of an annotation project: the "Retrain" button without the GUI.

::

    run = retrain("my_project", rounds=1, epochs=5)     # an iterator of events
    for event in run:                                   # RetrainRoundStart, FitStart, BatchEnd, ...
        print(format_retrain_event(event))              # ... RetrainRoundEnd, RetrainDone
    run.cancel()                                        # from any thread: stops between events

A round builds its datasets from the project at the moment it starts: the labelled images with
their committed masks, "no lesion" images as labelled empty masks, and the unlabelled images
that have a text (for EPI pseudo labels). It starts from the project's current checkpoint (else
the shipped ``default`` checkpoint, else a registry model: ``lvit_s`` at 128 px unless
configured otherwise), trains, writes ``checkpoints/round-<id>.safetensors`` durably, records
the round (``start_round`` / ``update_round`` per epoch / ``finish_round``) and makes the new
checkpoint current, unless its validation Dice is below that of the model it started from
(then the round is done and its file kept, but the current checkpoint stays;
``replace_if_worse`` turns this off). Semi-supervised EPI rounds are used when the EPI engine is
installed and there are unlabelled images; otherwise the supervised
:class:`~src_models.engine.Trainer` trains on the labelled images.

Safety: the current checkpoint changes only in ``finish_round(done)``, after the new file is
complete and fsynced; a cancelled or failed round is recorded as such and its files are
removed; a round whose process was killed stays ``running`` until the next retraining (or
:func:`recover_stale_rounds`) records it as ``failed``. One retraining at a time per project
(an OS file lock, released by the kernel even on SIGKILL).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from src_models.data.dataset import SegmentationDataset

from ._fs import fsync_dir
from .records import TrainingItem
from .store import Project, json_safe

__all__ = [
    "ProjectDataset",
    "RetrainConfig",
    "RetrainDone",
    "RetrainError",
    "RetrainRun",
    "RetrainRoundEnd",
    "RetrainRoundStart",
    "event_to_dict",
    "format_retrain_event",
    "recover_stale_rounds",
    "retrain",
    "split_validation",
]

LOCK_NAME = ".retrain.lock"
#: Registry model and size used when nothing else is given (no project or shipped checkpoint).
AUTO_MODEL = "lvit_s"
AUTO_IMG_SIZE = 128
WORK_SUFFIX = ".work.safetensors"


class RetrainError(ValueError):
    """Retraining cannot start (nothing labelled, another retraining running, bad config)."""


# ------------------------------------------------------------------------------- config


@dataclass
class RetrainConfig:
    """Settings of :func:`retrain` (built at the edge: CLI, widget).

    ``model``: what to start from when the project has no current checkpoint (or with
    ``from_scratch``): a checkpoint file, ``"default"``, a registry name, or ``"auto"``
    (``default`` if shipped, else ``lvit_s`` at :data:`AUTO_IMG_SIZE` px). ``img_size`` applies
    to a new registry model only (``None``: its own size; 128 px for the "auto" choice).
    ``semi``: ``"auto"`` (EPI when available and there are unlabelled images with a text),
    ``"epi"`` (required) or ``"off"``. A validation split of ``val_fraction`` of the labelled
    samples is held out when there are at least ``min_val`` of them; with fewer, validation
    runs on the (unaugmented) training samples. ``semi_options`` are further
    :class:`~src_models.engine.epi.SemiConfig` fields. ``clcc`` adds the CLCC terms
    (:mod:`src_models.engine.clcc`, a ``clcc_grid`` x ``clcc_grid`` grid of patches) to the
    round, with or without EPI; its schedule (contrast, then consistency) spans each round.
    ``replace_if_worse``: make the round's checkpoint current even when its best validation Dice
    is below the starting model's (by default the better model stays current).
    """

    rounds: int = 1
    epochs: int = 5
    batch_size: int = 2
    lr: float = 3e-4
    min_lr: float = 1e-5
    model: str = "auto"
    img_size: int | None = None
    device: str = "auto"
    seed: int = 0
    text_encoder: str = "default"
    val_fraction: float = 0.2
    min_val: int = 10
    semi: str = "auto"
    from_scratch: bool = False
    augment: bool = True
    num_threads: int | None = None
    clcc: bool = False
    clcc_grid: int = 2
    replace_if_worse: bool = False
    semi_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("rounds", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.semi not in ("auto", "epi", "off"):
            raise ValueError(f"semi must be 'auto', 'epi' or 'off', got {self.semi!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.img_size is not None and (self.img_size < 16 or self.img_size % 16):
            raise ValueError(f"img_size must be a multiple of 16, got {self.img_size}")
        if int(self.clcc_grid) < 2:
            raise ValueError(f"clcc_grid must be >= 2, got {self.clcc_grid}")


# ------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class RetrainRoundStart:
    """A round was recorded and its data are loaded; the engine starts next."""

    round_id: int
    index: int  # 1-based index of the round in this call
    rounds: int
    n_labeled: int
    n_unlabeled: int
    n_no_lesion: int
    n_val: int
    val_on: str  # "held_out" or "train"
    base: str  # the checkpoint or model it starts from
    engine: str  # "epi" or "supervised", with "+clcc" when the CLCC terms are on
    epochs: int
    skipped: tuple[str, ...] = ()  # samples left out (no text), by name


@dataclass(frozen=True)
class RetrainRoundEnd:
    """A round ended: ``status`` done, cancelled or failed; ``checkpoint`` is set when done.

    ``current`` is False for a done round whose model scored below the one it started from
    (``metrics["start_dice"]`` against ``metrics["best_dice"]``): its file is kept, but the
    project's current checkpoint did not change.
    """

    round_id: int
    index: int
    status: str
    checkpoint: str | None
    metrics: dict[str, Any]
    error: str | None = None
    current: bool = True


@dataclass(frozen=True)
class RetrainDone:
    """The last event of :func:`retrain`: the overall status and the current checkpoint."""

    status: str
    rounds_done: int
    checkpoint: str | None


def event_to_dict(event: Any) -> dict[str, Any]:
    """A JSON-ready dict ``{"type": <class name>, ...fields}`` of any event dataclass.

    Non-finite floats become ``None``; tuples become lists.
    """
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    else:
        fields = {"value": repr(event)}
    return {"type": type(event).__name__, **json_safe(fields)}


def format_retrain_event(event: Any) -> str:
    """One human-readable line per event."""
    from src_models.engine.events import format_event

    if isinstance(event, RetrainRoundStart):
        return (
            f"round {event.round_id} ({event.index}/{event.rounds}, {event.engine}): "
            f"{event.n_labeled} labelled ({event.n_no_lesion} no lesion), "
            f"{event.n_unlabeled} unlabelled, validation on {event.n_val} "
            f"{'held-out' if event.val_on == 'held_out' else 'training'} samples; "
            f"from {event.base}"
        )
    if isinstance(event, RetrainRoundEnd):
        dice = event.metrics.get("best_dice")
        extra = "" if dice is None else f", best val Dice {dice:.4f}"
        where = f": {event.checkpoint}" if event.checkpoint else ""
        why = f" ({event.error})" if event.error else ""
        if event.status == "done" and not event.current:
            why = (
                f" (below the starting model's {event.metrics['start_dice']:.4f}: "
                "the current model stays)"
            )
        return f"round {event.round_id} {event.status}{extra}{where}{why}"
    if isinstance(event, RetrainDone):
        return f"retraining {event.status} after {event.rounds_done} round(s); current model: " + (
            event.checkpoint or "none"
        )
    semi = _semi_engine()
    if semi is not None and type(event).__module__ == semi.__name__:
        return semi.format_semi_event(event)
    return format_event(event)


# ------------------------------------------------------------------------------- datasets


def _volume_value_range(loaded) -> tuple[float, float] | None:
    if not loaded.is_volume or loaded.data.dtype == np.uint8:
        return None
    data = loaded.data[..., :3] if loaded.rgb else loaded.data
    return float(data.min()), float(data.max())


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
        from src_models.data.io import load_image, to_float01

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
        loaded_cache: dict[Path, Any] = {}
        for item in self.items:
            rec = item.image
            loaded = loaded_cache.get(rec.path)
            if loaded is None:
                loaded_cache.clear()  # keep one volume in memory
                loaded = loaded_cache[rec.path] = load_image(rec.path)
            if loaded.is_volume:
                z = int(item.slice or 0)
                plane = loaded.slice(z)
                f = to_float01(plane, value_range=_volume_value_range(loaded))
                width = max(3, len(str(loaded.num_slices - 1)))
                name = f"{rec.name}_z{z:0{width}d}"
            else:
                f = to_float01(loaded.data)
                name = rec.name
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


# ------------------------------------------------------------------------------- locking


class _ProjectLock:
    """An exclusive, non-blocking OS lock on ``checkpoints/.retrain.lock`` (POSIX flock; the
    kernel drops it when the process dies, even by SIGKILL). Without fcntl it always succeeds."""

    def __init__(self, project: Project) -> None:
        self.path = project.checkpoint_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def recover_stale_rounds(project: Project) -> list[int]:
    """Record rounds left ``running`` by a process that died (killed, crashed) as ``failed``.

    A round is stale when no process holds the project's retraining lock. Returns their ids;
    does nothing (returns ``[]``) while a retraining runs.
    """
    running = [r for r in project.rounds() if r.status == "running"]
    if not running:
        return []
    lock = _ProjectLock(project)
    if not lock.acquire():
        return []
    try:
        return _fail_running(project)
    finally:
        lock.release()


def _fail_running(project: Project) -> list[int]:
    out = []
    for r in project.rounds():
        if r.status != "running":
            continue
        metrics = dict(r.metrics)
        metrics["error"] = "the training process ended without finishing the round (killed?)"
        project.finish_round(r.id, "failed", metrics=metrics)
        _remove_round_files(project, r.id)
        out.append(r.id)
    return out


def _round_paths(project: Project, round_id: int) -> tuple[Path, Path]:
    """(work file the trainer writes, final checkpoint) of a round."""
    base = project.checkpoint_dir / f"round-{round_id:04d}"
    return Path(str(base) + WORK_SUFFIX), Path(str(base) + ".safetensors")


def _remove_round_files(project: Project, round_id: int) -> None:
    """Remove a failed/cancelled round's files (never the final checkpoint of a done round)."""
    work, _ = _round_paths(project, round_id)
    stem = work.name[: -len(".safetensors")]
    for p in project.checkpoint_dir.glob(stem + "*"):
        with contextlib.suppress(OSError):
            p.unlink()
    for p in project.checkpoint_dir.glob(f".{stem}*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


def _publish(work: Path, final: Path) -> Path:
    """Make the trained checkpoint durable under its final name: fsync, rename, fsync dir;
    then check that it loads its metadata."""
    from src_models.engine.checkpoint import read_checkpoint_meta

    fd = os.open(work, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(work, final)
    fsync_dir(final.parent)
    read_checkpoint_meta(final)
    return final


# ------------------------------------------------------------------------------- engines


def _semi_engine():
    """The semi-supervised EPI engine (:mod:`src_models.engine.epi`), or ``None``."""
    try:
        from src_models.engine import epi
    except ModuleNotFoundError as exc:
        if exc.name in ("src_models.engine.epi", "src_models.engine.pseudo_bank"):
            return None
        raise
    return epi


def _base_model(project: Project, cfg: RetrainConfig):
    """``(model, meta, description)`` of what the round starts from."""
    from src_models.engine.checkpoint import load_checkpoint
    from src_models.inference import DEFAULT_CHECKPOINT, resolve_checkpoint
    from src_models.models import create_model, is_model

    current = None if cfg.from_scratch else project.current_checkpoint
    if current is not None and current.is_file():
        model, meta = load_checkpoint(current, device="cpu")
        return model, meta, _describe(project, current)
    source = cfg.model
    img_size = cfg.img_size
    if source == "auto":
        source = "default" if DEFAULT_CHECKPOINT.is_file() else AUTO_MODEL
        if img_size is None:
            img_size = AUTO_IMG_SIZE
    path = resolve_checkpoint(source)
    if path is not None:
        model, meta = load_checkpoint(path, device="cpu")
        return model, meta, _describe(project, path)
    if not is_model(source):
        raise RetrainError(f"{source!r} is neither a checkpoint file nor a registered model")
    from src_models.text import TextEncoder

    encoder = TextEncoder(cfg.text_encoder)
    overrides: dict[str, Any] = {"text_dim": encoder.dim}
    if img_size is not None:
        overrides["img_size"] = int(img_size)
    model = create_model(source, **overrides)
    meta = {"model_name": source, "text_encoder": encoder.id, "_encoder": encoder, "_new": True}
    size = int(model.img_size)
    return model, meta, f"{source} (new, {size} px)"


def _describe(project: Project, path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(project.folder).as_posix()
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------- the run


class RetrainRun:
    """The iterator :func:`retrain` returns; :meth:`cancel` stops it between events.

    Iterating runs the rounds on the calling thread. Closing the iterator early (``close()``,
    garbage collection) records the running round as cancelled.
    """

    def __init__(self, project: Project | str | os.PathLike, config: RetrainConfig) -> None:
        self.config = config
        self._project_arg = project
        self._cancel = threading.Event()
        self._trainer = None
        self._gen = self._run()

    def __iter__(self) -> RetrainRun:
        return self

    def __next__(self):
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()

    def cancel(self) -> None:
        """Stop at the next event (thread-safe); the running round is recorded as cancelled."""
        self._cancel.set()
        trainer = self._trainer
        if trainer is not None:
            trainer.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # -- the generator -----------------------------------------------------------------

    def _run(self) -> Iterator[Any]:
        cfg = self.config
        own = not isinstance(self._project_arg, Project)
        project = Project.open(self._project_arg) if own else self._project_arg
        lock = _ProjectLock(project)
        threads_before = None
        try:
            if not lock.acquire():
                raise RetrainError(
                    f"another retraining is running on the project '{project.folder}'"
                )
            _fail_running(project)  # rounds of processes that died
            if cfg.num_threads:
                import torch

                threads_before = torch.get_num_threads()
                torch.set_num_threads(int(cfg.num_threads))
            done = 0
            status = "done"
            for index in range(1, cfg.rounds + 1):
                if self._cancel.is_set():
                    status = "cancelled"
                    break
                end = None
                for event in self._round(project, index):
                    if isinstance(event, RetrainRoundEnd):
                        end = event
                    yield event
                if end is None or end.status != "done":
                    status = end.status if end is not None else "failed"
                    break
                done += 1
            current = project.current_checkpoint
            yield RetrainDone(status, done, str(current) if current else None)
        finally:
            if threads_before is not None:
                import torch

                torch.set_num_threads(threads_before)
            lock.release()
            if own:
                project.close()

    def _round(self, project: Project, index: int) -> Iterator[Any]:
        labeled = project.labeled()
        unlabeled = project.unlabeled()
        if not labeled:
            raise RetrainError("nothing to learn from: commit at least one correction first")
        round_id = project.start_round(len(labeled), len(unlabeled))
        work, final = _round_paths(project, round_id)
        metrics: dict[str, Any] = {"pid": os.getpid(), "state": "preparing", "epochs": []}
        t0 = time.perf_counter()
        finished = False
        try:
            project.update_round(round_id, metrics)
            yield from self._train(project, round_id, index, labeled, unlabeled, work, metrics)
            metrics["seconds"] = time.perf_counter() - t0
            if self._cancel.is_set() and not metrics.get("completed"):
                metrics["state"] = "cancelled"
                project.finish_round(round_id, "cancelled", metrics=metrics)
                finished = True
                _remove_round_files(project, round_id)
                yield RetrainRoundEnd(round_id, index, "cancelled", None, metrics)
                return
            if not work.is_file():
                raise RuntimeError("training ended without writing a checkpoint")
            _publish(work, final)
            metrics["state"] = "done"
            metrics["checkpoint"] = final.name
            current = self.config.replace_if_worse or not _worse(metrics)
            metrics["made_current"] = current
            project.finish_round(
                round_id, "done", checkpoint_path=final, metrics=metrics, make_current=current
            )
            finished = True
            _remove_round_files(project, round_id)  # work leftovers only
            yield RetrainRoundEnd(round_id, index, "done", str(final), metrics, current=current)
        except GeneratorExit:
            if not finished:
                metrics["state"] = "cancelled"
                metrics["seconds"] = time.perf_counter() - t0
                project.finish_round(round_id, "cancelled", metrics=metrics)
                _remove_round_files(project, round_id)
            raise
        except BaseException as exc:
            if finished:
                raise
            cancelled = isinstance(exc, KeyboardInterrupt)
            metrics["state"] = "cancelled" if cancelled else "failed"
            metrics["seconds"] = time.perf_counter() - t0
            message = f"{type(exc).__name__}: {exc}"
            if not cancelled:
                metrics["error"] = message
                metrics["traceback"] = traceback.format_exc(limit=8)
            project.finish_round(round_id, metrics["state"], metrics=metrics)
            _remove_round_files(project, round_id)
            if not isinstance(exc, Exception):
                raise
            yield RetrainRoundEnd(round_id, index, "failed", None, metrics, error=message)

    def _train(
        self,
        project: Project,
        round_id: int,
        index: int,
        labeled: list[TrainingItem],
        unlabeled: list[TrainingItem],
        work: Path,
        metrics: dict[str, Any],
    ) -> Iterator[Any]:
        from src_models.engine.events import (
            BatchEnd,
            EpochEnd,
            FitStart,
            TrainingDone,
            ValidationEnd,
        )
        from src_models.engine.trainer import TrainConfig, Trainer
        from src_models.text import TextEncoder

        cfg = self.config
        model, meta, base = _base_model(project, cfg)
        base_is_new = "_encoder" in meta or meta.get("_new", False)
        # a `napari-lvit pretrain` checkpoint has a trained encoder but an untrained decoder
        base_is_new = base_is_new or (meta.get("training") or {}).get("kind") == "pretrain"
        uses_text = bool(getattr(model, "uses_text", False))
        encoder = meta.pop("_encoder", None)
        meta.pop("_new", None)
        if uses_text and encoder is None:
            encoder = TextEncoder(meta.get("text_encoder") or cfg.text_encoder)
        skipped: list[str] = []
        if uses_text:
            kept = [it for it in labeled if it.text and it.text.strip()]
            skipped = [_item_name(it) for it in labeled if it not in kept]
            labeled = kept
            if not labeled:
                raise RetrainError(
                    "every labelled image lacks a description; this model reads text"
                )
            unlabeled = [it for it in unlabeled if it.text and it.text.strip()]
        semi = _semi_engine() if cfg.semi != "off" else None
        if cfg.semi == "epi" and semi is None:
            raise RetrainError("semi='epi' asked for, but the EPI engine is not installed")
        use_semi = semi is not None and bool(unlabeled)
        train_items, val_items, val_on = split_validation(labeled, cfg.val_fraction, cfg.min_val)
        size = int(model.img_size)
        in_chans = int(getattr(model, "in_chans", 3) or 3)
        # with EPI or CLCC, the unlabelled samples join the training set (has_mask False)
        if not (use_semi or cfg.clcc):
            unlabeled = []
        train_set = ProjectDataset(
            train_items + unlabeled,
            size,
            augment=cfg.augment,
            seed=cfg.seed + round_id,
            in_chans=in_chans,
        )
        val_set = ProjectDataset(val_items, size, in_chans=in_chans)
        n_no_lesion = sum(1 for it in labeled if it.kind == "no_lesion")
        engine = ("epi" if use_semi else "supervised") + ("+clcc" if cfg.clcc else "")
        metrics.update(
            state="training",
            engine=engine,
            base=base,
            val_on=val_on,
            n_train=len(train_items),
            n_val=len(val_items),
            n_unlabeled=len(unlabeled),
            model=meta.get("model_name"),
            img_size=size,
        )
        project.update_round(round_id, metrics)
        yield RetrainRoundStart(
            round_id=round_id,
            index=index,
            rounds=cfg.rounds,
            n_labeled=len(labeled),
            n_unlabeled=len(unlabeled),
            n_no_lesion=n_no_lesion,
            n_val=len(val_items),
            val_on=val_on,
            base=base,
            engine=engine,
            epochs=cfg.epochs,
            skipped=tuple(skipped),
        )
        train_config = TrainConfig(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            min_lr=min(cfg.min_lr, cfg.lr),
            t0=max(cfg.epochs, 1),
            patience=10**6,
            seed=cfg.seed + round_id,
            device=cfg.device,
            use_text=uses_text,
            out=str(work),
            save_last=False,
            threshold=float(meta.get("threshold", 0.5) or 0.5),
        )
        if not base_is_new:
            # the bar a round must clear to replace the current model (same metric as the
            # trainer's validation: mean per-image Dice at the model's size and threshold)
            metrics["start_dice"] = _validation_dice(model, val_set, encoder, train_config)
            project.update_round(round_id, metrics)
        if hasattr(model, "classifier_training"):
            # SKS model: stage 1 refreshes its lesion classifier on the image-level labels
            # (committed masks, one-click "no lesion") before the segmentation epochs.
            from src_models.engine.sks import ClassifierConfig, image_labels, train_classifier

            labels = image_labels(train_set)
            if (labels >= 0).any():
                stage1 = ClassifierConfig(
                    epochs=cfg.epochs, batch_size=max(2, cfg.batch_size), seed=cfg.seed,
                    device=cfg.device,
                )  # fmt: skip
                for _ in train_classifier(model, train_set, stage1, labels=labels):
                    pass
        clcc = None
        if cfg.clcc:
            from src_models.engine.clcc import CLCCConfig, CLCCTrainer

            clcc = CLCCConfig(grid=int(cfg.clcc_grid))
        if use_semi:
            # One EPI update + `epochs` epochs on labelled + pseudo-labelled samples per project
            # round; a new (untrained) model first gets a supervised round 0. The pseudo-label
            # bank lives in the project, so EPI averages across project rounds.
            options = {
                "rounds": 1,
                "round0_epochs": cfg.epochs if base_is_new else 0,
                "round_epochs": cfg.epochs,
                "pseudo_dir": str(project.folder / "pseudo" / "epi"),
                "clcc": clcc,
                **cfg.semi_options,
            }
            trainer = semi.SemiTrainer(
                model,
                train_set,
                val_set,
                encoder,
                train_config,
                semi.SemiConfig(**options),
            )
        elif clcc is not None:
            trainer = CLCCTrainer(
                model, train_set, val_set, text_encoder=encoder, config=train_config, clcc=clcc
            )
        else:
            trainer = Trainer(model, train_set, val_set, text_encoder=encoder, config=train_config)
        self._trainer = trainer
        if self._cancel.is_set():
            trainer.cancel()
        epochs: list[dict[str, Any]] = metrics["epochs"]
        steps = 0
        n_epochs = 0
        train_seconds = 0.0
        done_type = "SemiDone" if use_semi else "TrainingDone"
        for event in trainer.fit():
            if isinstance(event, FitStart):
                metrics["steps_per_epoch"] = event.steps_per_epoch
                metrics["device"] = event.device
            elif isinstance(event, BatchEnd):
                steps += 1
            elif isinstance(event, EpochEnd):
                n_epochs += 1
                train_seconds += event.seconds
                epochs.append(
                    {"epoch": n_epochs, "train_loss": event.train_loss, "seconds": event.seconds}
                )
                metrics["steps"] = steps
                metrics["s_per_step"] = train_seconds / max(steps, 1)
                project.update_round(round_id, metrics)
            elif isinstance(event, ValidationEnd):
                if epochs:
                    epochs[-1].update(val_dice=event.dice, val_iou=event.iou)
                best = metrics.get("best_dice")
                metrics["best_dice"] = event.dice if best is None else max(best, event.dice)
                project.update_round(round_id, metrics)
            elif type(event).__name__ == done_type:
                metrics["best_dice"] = event.best_dice
                metrics["completed"] = not event.cancelled
                if isinstance(event, TrainingDone):
                    metrics["best_epoch"] = event.best_epoch
            yield event
            if self._cancel.is_set():
                trainer.cancel()
        self._trainer = None


def _validation_dice(model, val_set, encoder, config) -> float | None:
    from src_models.engine.evaluate import evaluate

    report = evaluate(
        model,
        val_set,
        encoder,
        device=config.device,
        threshold=config.threshold,
        batch_size=config.val_batch_size,
        use_text=config.use_text,
        amp=config.amp,
    )
    dice = float(report["dice"])
    return dice if np.isfinite(dice) else None


def _worse(metrics: dict[str, Any]) -> bool:
    """Did the round's best validation Dice fall below its starting model's? (A tie is not
    worse: the new model has seen the newer commits.)"""
    start, best = metrics.get("start_dice"), metrics.get("best_dice")
    return start is not None and best is not None and best < start


def _item_name(item: TrainingItem) -> str:
    return item.image.name if item.slice is None else f"{item.image.name}[z={item.slice}]"


def retrain(
    project: Project | str | os.PathLike,
    rounds: int = 1,
    epochs: int = 5,
    model: str = "auto",
    device: str = "auto",
    *,
    config: RetrainConfig | None = None,
    **options: Any,
) -> RetrainRun:
    """Run retraining rounds on a project; returns an iterator of events (see the module doc).

    ``options`` are further :class:`RetrainConfig` fields (``img_size``, ``batch_size``, ``lr``,
    ``semi``, ``from_scratch``, ...). A given ``config`` replaces all of these arguments.
    """
    if config is None:
        config = RetrainConfig(rounds=rounds, epochs=epochs, model=model, device=device, **options)
    return RetrainRun(project, config)

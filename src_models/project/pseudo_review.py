"""EPI's pseudo labels of a project's unlabelled images, for people: see, rank, accept.

EPI keeps one soft map per unlabelled sample in the project's bank, ``pseudo/epi`` (see
:mod:`src_models.engine.semi.bank`), at the model size, keyed by the sample's name: the image's
name, or ``<name>_z<slice>`` for a slice of a volume (as
:func:`~src_models.project.project_dataset.item_planes` names it). :class:`PseudoReview` reads
it (read only: a training process may be updating it) and gives per unlabelled sample:

- its probability map, and its binary cut at the project model's threshold (0.5 without one);
- its round count: how many EPI updates it had;
- how far it moved in its last update: mean ``|P_t - P_(t-1)|`` and the Dice between the two
  cuts (``None`` after its first update);
- its confidence: the share of pixels the map is sure about, ``|p - 0.5| > 0.4`` (p < 0.1 or
  p > 0.9). Pixels inside that margin are where a correction would go; a map with nearly none
  has little left to flip. The margin is wider than the training loss's (``SemiConfig.margin``
  0.1, pixels left out of the loss) because accepting a map as truth asks more than training
  on soft targets.

"Review next" (:func:`review_order`) ranks the unreviewed ones most likely right first:
confidence minus movement. :func:`accept` commits a cut as the image's label, of the commit
kind ``accepted_pseudo``: the next retraining trains on it as on any label (it is no longer
unlabelled) and the history tells it from hand-made labels.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src_models.errors import UserError

from ._db import ImageRef, _safe_file_stem
from .project_dataset import sample_key
from .records import CommitRecord, TrainingItem
from .store import Project

__all__ = [
    "ACCEPTED_KIND",
    "CONFIDENT_MARGIN",
    "PseudoLabel",
    "PseudoLabelError",
    "PseudoReview",
    "PseudoSummary",
    "accept",
    "accept_above",
    "bank_folder",
    "confidence",
    "cut_dice",
    "export_pseudo_labels",
    "review_order",
    "sample_key",
    "undo_last_round",
]

ACCEPTED_KIND = "accepted_pseudo"
#: a pixel is confident when ``|p - 0.5|`` exceeds this (p < 0.1 or p > 0.9)
CONFIDENT_MARGIN = 0.4


class PseudoLabelError(UserError, ValueError):
    """A pseudo-label action that cannot be done (none there, a retraining holds the bank)."""


def bank_folder(project: Project) -> Path:
    """Where the project's EPI bank lives (the retraining rounds write it there)."""
    return project.folder / "pseudo" / "epi"


def confidence(prob: np.ndarray, margin: float = CONFIDENT_MARGIN) -> float:
    """The share of pixels with ``|p - 0.5| > margin`` (1.0: every pixel is sure)."""
    p = np.asarray(prob, dtype=np.float32)
    return float((np.abs(p - 0.5) > margin).mean()) if p.size else 0.0


def cut_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice between two binary masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def _model_threshold(project: Project) -> float:
    """The project model's threshold (what its proposals cut at); 0.5 without a model."""
    from src_models.engine.checkpoint import read_checkpoint_meta

    ckpt = project.current_checkpoint
    if ckpt is None or not ckpt.is_file():
        return 0.5
    try:
        return float(read_checkpoint_meta(ckpt).get("threshold", 0.5))
    except (OSError, ValueError):  # a damaged checkpoint: its proposals fail and say so
        return 0.5


@dataclass(frozen=True)
class PseudoSummary:
    """The numbers of one sample's pseudo label (no arrays: one per image in a list)."""

    image_id: int
    name: str  # the image's name
    slice: int | None  # the slice of a volume, else None
    key: str  # its name in the bank
    rounds: int
    confidence: float
    change: float | None  # mean |P_t - P_(t-1)| of its last update
    dice_previous: float | None  # Dice between the cuts before and after its last update

    @property
    def likely_right(self) -> float:
        """Confidence minus movement (a first-round label counts as not moving)."""
        return self.confidence - (self.change or 0.0)

    def text(self) -> str:
        """One line for people, e.g. ``3 rounds, 92% confident, moved 0.012 (Dice 0.97)``."""
        rounds = f"{self.rounds} round{'s' if self.rounds != 1 else ''}"
        line = f"{rounds}, {100 * self.confidence:.0f}% confident"
        if self.change is None:
            return line + ", first round"
        return line + f", moved {self.change:.3f} (Dice {self.dice_previous:.2f} with the last)"


@dataclass(frozen=True)
class PseudoLabel:
    """One sample's pseudo label with its maps (at the bank's, i.e. the model's, size)."""

    summary: PseudoSummary
    item: TrainingItem
    prob: np.ndarray
    previous: np.ndarray | None
    threshold: float

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the sample: the image, or one slice of the volume."""
        h, w = self.item.image.shape[-2:]
        return int(h), int(w)

    def prob_at(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The probability map at ``shape`` (default: the sample's own size), float32."""
        shape = self.plane_shape if shape is None else tuple(shape)
        if self.prob.shape == shape:
            return self.prob.astype(np.float32)
        from src_models.data.transforms import resize_prob

        return resize_prob(self.prob, shape)

    def mask(self) -> np.ndarray:
        """The binary cut at the sample's own size (bool ``[H, W]``)."""
        return self.prob_at() >= self.threshold


def _summarise(
    item: TrainingItem, key: str, rounds: int, prob: np.ndarray, prev: np.ndarray | None, cut: float
) -> PseudoSummary:
    change = dice = None
    if prev is not None:
        if prev.shape != prob.shape:  # the model size changed between the rounds
            from src_models.data.transforms import resize_prob

            prev = resize_prob(prev, prob.shape)
        change = float(np.abs(prob - prev).mean())
        dice = cut_dice(prob >= cut, prev >= cut)
    rec = item.image
    return PseudoSummary(rec.id, rec.name, item.slice, key, rounds, confidence(prob), change, dice)


class PseudoReview:
    """The pseudo labels of ``project``'s unlabelled samples, read from its EPI bank.

    ``threshold``: where the maps are cut (default: the project model's). Without a bank
    (no EPI round ran yet) every sample simply has none.
    """

    def __init__(self, project: Project, threshold: float | None = None) -> None:
        from src_models.engine.semi.bank import PseudoLabelBank

        self.project = project
        self.threshold = _model_threshold(project) if threshold is None else float(threshold)
        try:
            self.bank: PseudoLabelBank | None = PseudoLabelBank(
                bank_folder(project), read_only=True
            )
        except FileNotFoundError:
            self.bank = None

    @property
    def rounds(self) -> int:
        """The bank's update count (EPI rounds so far)."""
        return 0 if self.bank is None else self.bank.t

    def items(self) -> list[tuple[TrainingItem, str]]:
        """``(sample, bank key)`` of the unlabelled samples that have a pseudo label."""
        if self.bank is None:
            return []
        out = []
        for item in self.project.unlabeled():
            key = sample_key(item.image, item.slice)
            if key in self.bank:
                out.append((item, key))
        return out

    def labels(self) -> Iterator[PseudoLabel]:
        """The :class:`PseudoLabel` of each unlabelled sample that has one (read one by one)."""
        for item, key in self.items():
            label = self._read(item, key)
            if label is not None:
                yield label

    def summaries(self) -> list[PseudoSummary]:
        """One :class:`PseudoSummary` per unlabelled sample with a pseudo label."""
        return [label.summary for label in self.labels()]

    def label(self, image: ImageRef, slice: int | None = None) -> PseudoLabel | None:
        """The pseudo label of an unlabelled image (a volume's ``slice``), or ``None``."""
        rec = self.project.image(image)
        for item, key in self.items():
            if item.image.id == rec.id and (not rec.is_volume or item.slice == (slice or 0)):
                return self._read(item, key)
        return None

    def _read(self, item: TrainingItem, key: str) -> PseudoLabel | None:
        prob = self.bank.get(key)
        if prob is None:
            return None
        prev = self.bank.previous(key)
        summary = _summarise(item, key, self.bank.count(key), prob, prev, self.threshold)
        return PseudoLabel(summary, item, prob, prev, self.threshold)


def review_order(
    summaries: Iterable[PseudoSummary], reviewed: Mapping[str, int] | None = None
) -> list[PseudoSummary]:
    """The pseudo labels to review, most likely right first (confidence minus movement),
    leaving out those in ``reviewed`` (bank key -> the round count when seen) that have not
    been updated since."""
    seen = reviewed or {}
    todo = [s for s in summaries if s.rounds > seen.get(s.key, 0)]
    return sorted(todo, key=lambda s: (-s.likely_right, s.name, s.slice or 0))


def accept(
    project: Project,
    label: PseudoLabel,
    *,
    text: str | None = None,
    model_version: str | None = None,
) -> CommitRecord:
    """Commit ``label``'s cut as its image's (slice's) label, of kind ``accepted_pseudo``.
    Refused (:class:`PseudoLabelError`) when the image (slice) got a label meanwhile: an
    accept never replaces a label."""
    rec, k = project.image(label.item.image.id), label.item.slice
    labelled = rec.is_labeled if k is None else project.current_mask(rec, slice=k) is not None
    if labelled:
        where = "" if k is None else f" slice {k}"
        raise PseudoLabelError(f"'{rec.name}'{where} has a label already; its pseudo label is old")
    rounds = label.summary.rounds
    return project.commit(
        label.item.image,
        label.mask(),
        text=text,
        model_version=model_version or f"EPI pseudo label ({rounds} rounds)",
        slice=label.item.slice,
        kind=ACCEPTED_KIND,
    )


def accept_above(project: Project, min_confidence: float) -> list[CommitRecord]:
    """Accept every pseudo label whose confidence is at least ``min_confidence``."""
    if not 0.0 <= min_confidence <= 1.0:
        raise PseudoLabelError(f"a confidence is from 0 to 1, got {min_confidence}")
    labels = list(PseudoReview(project).labels())
    return [accept(project, lb) for lb in labels if lb.summary.confidence >= min_confidence]


def export_pseudo_labels(review: PseudoReview, out_dir: str | os.PathLike) -> Path:
    """Write each pseudo label at its sample's size: ``<key>.png`` (the cut, 0/255),
    ``<key>_prob.tif`` (float32 probabilities) and one line of ``pseudo_labels.csv``
    (image, slice, rounds, confidence, change, Dice with the previous cut). Returns the CSV.

    ``out_dir`` must be new, empty or an earlier export (it holds ``pseudo_labels.csv``), so
    that no file of anything else is ever written over."""
    from src_models.data.io import write_mask, write_prob

    out = Path(out_dir).expanduser()
    table = out / "pseudo_labels.csv"
    if out.is_dir() and any(out.iterdir()) and not table.is_file():
        raise PseudoLabelError(
            f"'{out}' holds other files; export the pseudo labels to a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    fields = ("file", "image", "slice", "rounds", "confidence", "change", "dice_previous")
    rows: list[dict] = []
    used: set[str] = set()
    for label in review.labels():
        s = label.summary
        stem = _safe_file_stem(s.key)
        if stem.lower() in used:
            stem = f"{stem}-{s.image_id}"
        used.add(stem.lower())
        prob = label.prob_at()
        write_mask(out / f"{stem}.png", prob >= review.threshold)
        write_prob(out / f"{stem}_prob.tif", prob)
        values = (s.name, s.slice, s.rounds, round(s.confidence, 4), s.change, s.dice_previous)
        rows.append(dict(zip(fields, (f"{stem}.png", *values), strict=True)))
    with open(table, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return table


def undo_last_round(project: Project) -> list[str]:
    """Put back the pseudo labels the bank's last update replaced (a bad round); returns the
    bank keys changed. Refused while a retraining runs (it may be updating the bank)."""
    from src_models.engine.semi.bank import PseudoLabelBank

    from .retrain_files import ProjectLock

    folder = bank_folder(project)
    if not (folder / "index.json").is_file():
        raise PseudoLabelError(f"the project '{project.folder}' has no pseudo labels yet")
    lock = ProjectLock(project)
    if not lock.acquire():
        raise PseudoLabelError("a retraining is running on this project; wait for it to end")
    try:
        bank = PseudoLabelBank(folder)
        if bank.t == 0 or not len(bank):
            raise PseudoLabelError("there is no round of pseudo labels to undo")
        if not bank.can_undo():
            raise PseudoLabelError(
                f"round {bank.t} of the pseudo labels cannot be undone: only the last round's "
                "previous maps are kept"
            )
        return bank.undo()
    finally:
        lock.release()

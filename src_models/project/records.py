"""Plain records returned by :class:`~src_models.project.Project` (immutable snapshots).

A record is a copy of a row at the time it was read: it does not change when the project
changes. Paths in records are absolute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from src_models.data.windows import Window

from ._fs import decode_mask

__all__ = [
    "CommitRecord",
    "ExportSummary",
    "ImageRecord",
    "ImportSummary",
    "ProposalRecord",
    "RoundRecord",
    "TextRecord",
    "TrainingItem",
    "decode_commit_prompts",
    "encode_commit_prompts",
]


@dataclass(frozen=True)
class ImageRecord:
    """One image of the project.

    ``path`` is where the pixels are read from (the copy under ``images/`` for copied images,
    otherwise the referenced file); ``source`` is the file it was added from. ``status`` is one
    of ``unlabeled``, ``proposed``, ``corrected``, ``no_lesion``; ``text`` the current
    description (``None`` if none was given yet). ``window``: the CT window (level, width in
    HU) its pixels reach the model through, in training and proposals (``None``: min-max).
    """

    id: int
    name: str
    path: Path
    source: str
    width: int
    height: int
    n_slices: int
    is_volume: bool
    rgb: bool
    copied: bool
    status: str
    text: str | None
    added_at: str
    window: Window | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape a mask must have: ``(H, W)``, or ``(Z, H, W)`` for a volume."""
        if self.is_volume:
            return (self.n_slices, self.height, self.width)
        return (self.height, self.width)

    @property
    def is_labeled(self) -> bool:
        """True once the image has at least one commit (status corrected or no_lesion)."""
        return self.status in ("corrected", "no_lesion")


@dataclass(frozen=True)
class CommitRecord:
    """One committed label version (never overwritten). ``slice`` is ``None`` for a 2D image or
    a whole-volume commit, else the slice index of a volume. ``clicks`` and ``box``: the prompts
    the label was made with (schema version 3; empty for older commits)."""

    id: int
    image_id: int
    version: int
    slice: int | None
    mask_path: Path
    proposal_path: Path | None
    text: str | None
    model_version: str | None
    kind: str
    committed_at: str
    #: the clicks ``((y, x, +1 | -1), ...)`` the label was corrected with, in the pixel
    #: coordinates of the image (of its slice, for a volume); ``()`` for none
    clicks: tuple[tuple[float, float, int], ...] = ()
    #: the box ``(y0, x0, y1, x1)`` drawn around the object, or ``None``
    box: tuple[float, float, float, float] | None = None

    def load_mask(self) -> np.ndarray:
        """The committed mask as bool ``[H, W]`` (or ``[Z, H, W]`` for a whole-volume commit)."""
        return decode_mask(self.mask_path)

    def load_proposal(self) -> np.ndarray | None:
        """The proposal this commit replaced (bool), or ``None`` if none was recorded."""
        if self.proposal_path is None:
            return None
        return decode_mask(self.proposal_path)


@dataclass(frozen=True)
class ProposalRecord:
    """A mask proposal shown to the user (binary, as displayed)."""

    id: int
    image_id: int
    slice: int | None
    path: Path
    text: str | None
    model_version: str | None
    created_at: str

    def load_mask(self) -> np.ndarray:
        """The proposal as a bool array."""
        return decode_mask(self.path)


@dataclass(frozen=True)
class TextRecord:
    """One entry of an image's text history."""

    id: int
    image_id: int
    text: str
    used_at: str


@dataclass(frozen=True)
class RoundRecord:
    """One retraining round; ``metrics`` is a JSON object (loss, val Dice, per-epoch curves...)."""

    id: int
    started_at: str
    finished_at: str | None
    status: str
    checkpoint_path: Path | None
    metrics: dict[str, Any]
    n_labeled: int
    n_unlabeled: int


@dataclass(frozen=True)
class TrainingItem:
    """One 2D training sample: an image (or one slice of a volume), its label and text.

    ``mask_path`` is ``None`` for an unlabeled sample. For a volume ``slice`` is the slice index;
    the mask file is either that slice's PNG or a whole-volume TIFF (then :meth:`load_mask`
    takes the slice out of it). ``kind`` is the label's commit kind (``correction``,
    ``no_lesion`` or ``accepted_pseudo``) and ``text`` the text of that commit (falling back to
    the image's current text), or the image's current text for unlabeled samples.
    """

    image: ImageRecord
    mask_path: Path | None
    text: str | None
    slice: int | None = None
    kind: str | None = None
    commit_id: int | None = None

    def load_mask(self) -> np.ndarray | None:
        """The label as bool ``[H, W]``, or ``None`` for an unlabeled sample."""
        if self.mask_path is None:
            return None
        mask = decode_mask(self.mask_path)
        if mask.ndim == 3:
            mask = mask[self.slice or 0]
        return mask


@dataclass
class ImportSummary:
    """What :meth:`Project.import_lvit` did."""

    added: list[ImageRecord] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    n_masks: int = 0


@dataclass
class ExportSummary:
    """What :meth:`Project.export_lvit` wrote; ``skipped`` names images it could not export."""

    out_dir: Path
    n_images: int = 0
    n_masks: int = 0
    skipped: list[str] = field(default_factory=list)


def encode_commit_prompts(
    clicks: tuple[tuple[float, float, int], ...], box: tuple[float, float, float, float] | None
) -> str | None:
    """The ``commits.prompts`` JSON of checked clicks and box (``None`` when there are none)."""
    if not clicks and box is None:
        return None
    return json.dumps(
        {
            "clicks": [[float(y), float(x), int(s)] for y, x, s in clicks],
            "box": None if box is None else [float(v) for v in box],
        }
    )


def decode_commit_prompts(stored: str | None) -> dict[str, Any]:
    """``{"clicks": ..., "box": ...}`` for a :class:`CommitRecord` from ``commits.prompts``;
    NULL (a commit without prompts, or from before schema version 3) gives none."""
    if not stored:
        return {"clicks": (), "box": None}
    data = json.loads(stored)
    clicks = tuple((float(y), float(x), int(s)) for y, x, s in data.get("clicks") or ())
    box = data.get("box")
    return {"clicks": clicks, "box": None if box is None else tuple(float(v) for v in box)}

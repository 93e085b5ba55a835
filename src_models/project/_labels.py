"""Labels: validating masks against their image, proposals, committed label versions (the
crash-safe write path), the current mask of an image or volume slice, and the labelled /
unlabelled samples that training reads."""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from typing import Any

import numpy as np

from src_models.inference_checks import check_prompts

from ._db import ImageRef, _row_dict
from ._fs import atomic_write_bytes, encode_mask_png, encode_mask_tiff
from ._images import ImagesMixin
from .records import (
    CommitRecord,
    ImageRecord,
    ProposalRecord,
    TrainingItem,
    encode_commit_prompts,
)
from .schema import COMMIT_KINDS


def _as_binary(mask: Any, what: str = "mask") -> np.ndarray:
    """Validate a label array and return it as bool.

    bool stays; integers: nonzero -> True (napari label ids); floats must be exactly 0/1 and
    finite. Anything else raises ``ValueError``.
    """
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return arr
    kind = arr.dtype.kind
    if kind in "iu":
        return arr != 0
    if kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            n_bad = int((~finite).sum())
            raise ValueError(f"the {what} contains {n_bad} NaN or infinite values")
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            examples = np.unique(arr[bad])[:5].tolist()
            raise ValueError(
                f"a float {what} must hold only 0 and 1, found values such as {examples}; "
                f"threshold probabilities first (e.g. prob >= 0.5)"
            )
        return arr == 1
    raise ValueError(f"the {what} must be a bool, integer or 0/1 float array, got {arr.dtype}")


class LabelsMixin(ImagesMixin):
    """Proposals, commits, masks and training items of a :class:`~.store.Project`."""

    # ------------------------------------------------------------------ masks: validation

    def _validate_mask(
        self, rec: ImageRecord, mask: Any, slice: int | None, what: str = "mask"
    ) -> tuple[np.ndarray, int | None]:
        """Check a mask against an image; returns (bool mask, stored slice index or None)."""
        arr = np.asarray(mask)
        if not rec.is_volume:
            if slice not in (None, 0):
                raise ValueError(
                    f"image '{rec.name}' is 2D (shape {rec.shape}): slice={slice} does not exist"
                )
            if arr.shape != rec.shape:
                raise ValueError(
                    f"{what} shape {arr.shape} does not match image '{rec.name}' shape {rec.shape}"
                )
            return _as_binary(arr, what), None
        z = rec.n_slices
        if slice is None:
            if arr.shape != rec.shape:
                hint = "; for one slice pass slice=k" if arr.shape == rec.shape[1:] else ""
                raise ValueError(
                    f"{what} shape {arr.shape} does not match volume '{rec.name}' shape "
                    f"{rec.shape}{hint}"
                )
            return _as_binary(arr, what), None
        k = int(slice)
        if not 0 <= k < z:
            raise ValueError(f"slice {k} is out of range for volume '{rec.name}' ({z} slices)")
        if arr.shape == rec.shape:
            arr = arr[k]
        elif arr.shape != rec.shape[1:]:
            raise ValueError(
                f"{what} shape {arr.shape} does not match slice {k} of volume '{rec.name}': "
                f"expected {rec.shape[1:]} (or the whole volume {rec.shape})"
            )
        return _as_binary(arr, what), k

    @staticmethod
    def _encode(mask: np.ndarray) -> tuple[bytes, str]:
        if mask.ndim == 3:
            return encode_mask_tiff(mask), ".tif"
        return encode_mask_png(mask), ".png"

    def _write_proposal(
        self,
        conn: sqlite3.Connection,
        rec: ImageRecord,
        data: bytes,
        suffix: str,
        slc: int | None,
        text: str | None,
        model_version: str | None,
    ) -> ProposalRecord:
        tag = f"-z{slc}" if slc is not None else ""
        while True:
            rel = f"proposals/{rec.id}/{time.time_ns():x}-{secrets.token_hex(4)}{tag}{suffix}"
            if not (self._folder / rel).exists():
                break
        atomic_write_bytes(self._folder / rel, data, exclusive=True)
        cur = conn.execute(
            "INSERT INTO proposals (image_id, slice, path, text, model_version, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (rec.id, slc, rel, text, model_version, self._clock()),
        )
        cur = conn.execute("SELECT * FROM proposals WHERE id = ?", (cur.lastrowid,))
        return self._proposal_record(_row_dict(cur, cur.fetchone()))

    # ------------------------------------------------------------------ proposals

    def save_proposal(
        self,
        image: ImageRef,
        mask: Any,
        model_version: str | None,
        *,
        text: str | None = None,
        slice: int | None = None,
    ) -> ProposalRecord:
        """Store a proposal (binary mask as shown to the user) and mark the image ``proposed``
        unless it already has a label. ``text`` (the prompt) enters the text history."""
        rec = self.image(image)
        arr, slc = self._validate_mask(rec, mask, slice, "proposal")
        data, suffix = self._encode(arr)
        with self._write() as conn:
            if text is not None:
                text = self._record_text(conn, rec.id, text)
            prop = self._write_proposal(conn, rec, data, suffix, slc, text, model_version)
            conn.execute(
                "UPDATE images SET status = 'proposed' WHERE id = ? AND status = 'unlabeled'",
                (rec.id,),
            )
        return prop

    def proposals(self, image: ImageRef) -> list[ProposalRecord]:
        """All stored proposals of an image, oldest first."""
        rec = self.image(image)
        rows = self._query("SELECT * FROM proposals WHERE image_id = ? ORDER BY id", (rec.id,))
        return [self._proposal_record(r) for r in rows]

    def latest_proposal(self, image: ImageRef) -> ProposalRecord | None:
        """The most recent proposal of an image, or ``None``."""
        props = self.proposals(image)
        return props[-1] if props else None

    # ------------------------------------------------------------------ commits

    def commit(
        self,
        image: ImageRef,
        mask: Any,
        text: str | None = None,
        model_version: str | None = None,
        proposal: ProposalRecord | np.ndarray | str | os.PathLike | None = None,
        *,
        slice: int | None = None,
        kind: str = "correction",
        clicks: Any = None,
        box: Any = None,
    ) -> CommitRecord:
        """Commit a label as a new version of the image's label (never overwriting older ones).

        ``mask``: ``[H, W]`` for a 2D image; for a volume ``[Z, H, W]`` (whole volume) or, with
        ``slice=k``, ``[H, W]`` or the whole ``[Z, H, W]`` of which slice ``k`` is taken. bool
        or integer arrays (nonzero = lesion) or floats that are exactly 0/1; anything else, or a
        shape that does not match the image, raises ``ValueError`` naming both shapes.
        ``text``: the description the label goes with (default: the image's current text; a new
        text becomes the current one and enters the history). ``proposal``: the proposal this
        label replaces (a :class:`ProposalRecord`, a path, or an array that is stored now).

        ``kind``: ``correction`` (made or corrected by hand), ``no_lesion`` (an empty mask) or
        ``accepted_pseudo`` (an EPI pseudo label accepted as it is: it trains like any label,
        and the history tells it from hand-made ones).

        ``clicks`` ``[(y, x, +1 | -1), ...]`` and ``box`` ``(y0, x0, y1, x1)``: the prompts the
        label was corrected with, in the image's (slice's) pixel coordinates; stored with the
        commit (:attr:`CommitRecord.clicks`, :attr:`CommitRecord.box`) and checked as a
        prediction checks them (inside the image, signs +1/-1, a box with an area).

        The mask file is written atomically and durably before the manifest row is inserted,
        both under the project's write lock. The image's status becomes ``corrected``
        (``no_lesion`` for a 2D/whole-volume commit of kind ``no_lesion``).
        """
        if kind not in COMMIT_KINDS:
            raise ValueError(f"unknown commit kind {kind!r}; use one of {COMMIT_KINDS}")
        rec = self.image(image)
        arr, slc = self._validate_mask(rec, mask, slice)
        prompts = None
        if clicks is not None or box is not None:
            checked = check_prompts(clicks, box, None, (rec.height, rec.width))
            if checked is not None:
                prompts = encode_commit_prompts(checked.clicks, checked.box)
        if kind == "no_lesion" and arr.any():
            raise ValueError("a commit of kind 'no_lesion' must have an empty mask")
        data, suffix = self._encode(arr)
        prop_data = None
        prop_path: str | None = None
        if isinstance(proposal, ProposalRecord):
            if proposal.image_id != rec.id:
                raise ValueError(
                    f"proposal {proposal.id} belongs to image {proposal.image_id}, not to "
                    f"'{rec.name}' ({rec.id})"
                )
            prop_path = self._rel(proposal.path)
        elif isinstance(proposal, (str, os.PathLike)):
            prop_path = self._rel(proposal)
        elif proposal is not None:
            parr, _ = self._validate_mask(rec, proposal, slice, "proposal")
            prop_data = self._encode(parr)
        with self._write() as conn:
            if text is not None:
                text = self._record_text(conn, rec.id, text)
            else:
                text = conn.execute("SELECT text FROM images WHERE id = ?", (rec.id,)).fetchone()[0]
            if prop_data is not None:
                prop = self._write_proposal(
                    conn, rec, prop_data[0], prop_data[1], slc, text, model_version
                )
                prop_path = self._rel(prop.path)
            version = (
                conn.execute(
                    "SELECT coalesce(max(version), 0) FROM commits WHERE image_id = ?", (rec.id,)
                ).fetchone()[0]
                + 1
            )
            tag = f"-z{slc}" if slc is not None else ""
            while True:
                rel = f"masks/{rec.id}/{version:05d}-{secrets.token_hex(4)}{tag}{suffix}"
                if not (self._folder / rel).exists():
                    break
            # 1) the file, complete and durable; 2) the row. A crash in between leaves an
            # orphan file that the next open moves aside; never a row without its file.
            atomic_write_bytes(self._folder / rel, data, exclusive=True)
            row = (rec.id, version, slc, rel, prop_path, text, model_version, kind, self._clock())
            columns = (
                "image_id, version, slice, mask_path, proposal_path, text, model_version, kind,"
                " committed_at"
            )
            if prompts is not None:  # (the column exists from schema version 3)
                row, columns = (*row, prompts), columns + ", prompts"
            marks = ", ".join("?" * len(row))
            cur = conn.execute(f"INSERT INTO commits ({columns}) VALUES ({marks})", row)
            commit_id = cur.lastrowid
            status = "no_lesion" if (kind == "no_lesion" and slc is None) else "corrected"
            conn.execute("UPDATE images SET status = ? WHERE id = ?", (status, rec.id))
            cur = conn.execute("SELECT * FROM commits WHERE id = ?", (commit_id,))
            return self._commit_record(_row_dict(cur, cur.fetchone()))

    def commit_no_lesion(
        self,
        image: ImageRef,
        text: str | None = None,
        model_version: str | None = None,
        *,
        slice: int | None = None,
    ) -> CommitRecord:
        """One-click "no lesion": commit an empty mask of kind ``no_lesion`` (status
        ``no_lesion``; for one slice of a volume the volume's status becomes ``corrected``)."""
        rec = self.image(image)
        shape = rec.shape if (not rec.is_volume or slice is None) else rec.shape[1:]
        return self.commit(
            rec,
            np.zeros(shape, dtype=bool),
            text=text,
            model_version=model_version,
            slice=slice,
            kind="no_lesion",
        )

    def history(self, image: ImageRef, *, slice: int | None = None) -> list[CommitRecord]:
        """Every commit of an image, oldest first (each loadable with ``load_mask()``).
        ``slice=k`` keeps the commits that labelled slice ``k`` of a volume (whole-volume
        commits included)."""
        rec = self.image(image)
        if slice is None:
            rows = self._query("SELECT * FROM commits WHERE image_id = ? ORDER BY id", (rec.id,))
        else:
            rows = self._query(
                "SELECT * FROM commits WHERE image_id = ? AND (slice IS NULL OR slice = ?)"
                " ORDER BY id",
                (rec.id, int(slice)),
            )
        return [self._commit_record(r) for r in rows]

    def latest_commit(self, image: ImageRef) -> CommitRecord | None:
        """The image's latest commit, or ``None``."""
        rec = self.image(image)
        rows = self._query(
            "SELECT * FROM commits WHERE image_id = ? ORDER BY id DESC LIMIT 1", (rec.id,)
        )
        return self._commit_record(rows[0]) if rows else None

    def current_mask(self, image: ImageRef, *, slice: int | None = None) -> np.ndarray | None:
        """The current label (bool), or ``None`` if the image was never labelled.

        2D image: its latest commit. Volume: ``[Z, H, W]`` composed from the latest
        whole-volume commit and the later per-slice commits (slices never labelled are empty);
        with ``slice=k`` the ``[H, W]`` label of that slice, or ``None`` if it has none.
        """
        rec = self.image(image)
        commits = self.history(rec)
        if not commits:
            return None
        if not rec.is_volume:
            return commits[-1].load_mask()
        slices = self._slice_sources(rec, commits)
        if slice is not None:
            k = int(slice)
            if not 0 <= k < rec.n_slices:
                raise ValueError(f"slice {k} is out of range for '{rec.name}' ({rec.n_slices})")
            src = slices.get(k)
            if src is None:
                return None
            m = src.load_mask()
            return m[k] if m.ndim == 3 else m
        out = np.zeros(rec.shape, dtype=bool)
        cache: dict[int, np.ndarray] = {}
        for k, c in slices.items():
            if c.id not in cache:
                cache[c.id] = c.load_mask()
            m = cache[c.id]
            out[k] = m[k] if m.ndim == 3 else m
        return out

    @staticmethod
    def _slice_sources(rec: ImageRecord, commits: list[CommitRecord]) -> dict[int, CommitRecord]:
        """For a volume: slice index -> the commit that currently labels it."""
        out: dict[int, CommitRecord] = {}
        for c in commits:  # oldest first: later commits win
            if c.slice is None:
                out = dict.fromkeys(range(rec.n_slices), c)
            else:
                out[int(c.slice)] = c
        return out

    # ------------------------------------------------------------------ training views

    def _training_items(self) -> tuple[list[TrainingItem], list[TrainingItem]]:
        with self._snapshot() as conn:  # one consistent view of images and commits
            cur = conn.execute("SELECT * FROM images ORDER BY id")
            images = [self._image_record(_row_dict(cur, r)) for r in cur.fetchall()]
            cur = conn.execute("SELECT * FROM commits ORDER BY id")
            commits = [self._commit_record(_row_dict(cur, r)) for r in cur.fetchall()]
        by_image: dict[int, list[CommitRecord]] = {}
        for c in commits:
            by_image.setdefault(c.image_id, []).append(c)
        labeled: list[TrainingItem] = []
        unlabeled: list[TrainingItem] = []
        for rec in images:
            cs = by_image.get(rec.id, [])
            if not rec.is_volume:
                if cs:
                    c = cs[-1]
                    text = c.text or rec.text
                    labeled.append(TrainingItem(rec, c.mask_path, text, None, c.kind, c.id))
                else:
                    unlabeled.append(TrainingItem(rec, None, rec.text))
                continue
            sources = self._slice_sources(rec, cs)
            for k in range(rec.n_slices):
                c = sources.get(k)
                if c is None:
                    unlabeled.append(TrainingItem(rec, None, rec.text, k))
                else:
                    text = c.text or rec.text
                    labeled.append(TrainingItem(rec, c.mask_path, text, k, c.kind, c.id))
        return labeled, unlabeled

    def labeled(self) -> list[TrainingItem]:
        """Labelled 2D samples for training: each labelled image (each labelled slice of a
        volume) with the path of its current mask file and the text of that commit."""
        return self._training_items()[0]

    def unlabeled(self) -> list[TrainingItem]:
        """Samples without a label (``mask_path=None``) with their current text: the images
        (slices of volumes) the EPI pseudo labels are for."""
        return self._training_items()[1]

"""Retraining state: pseudo labels (one ``.npy`` per image), checkpoints and the current
checkpoint, and the rounds table with its metrics."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._db import ImageRef, _row_dict
from ._fs import atomic_write_bytes, encode_npy, fsync_dir
from ._images import ImagesMixin
from .records import RoundRecord
from .schema import ROUND_STATUSES


def json_safe(v: Any) -> Any:
    """``v`` with plain JSON types: dict keys as strings, tuples as lists, numpy scalars as
    Python numbers, paths as strings, and non-finite floats as ``None`` (JSON has no NaN/inf)."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def _dump_metrics(metrics: dict[str, Any]) -> str:
    if not isinstance(metrics, dict):
        raise TypeError(f"round metrics must be a dict, got {type(metrics).__name__}")
    return json.dumps(json_safe(metrics), allow_nan=False)


class RoundsMixin(ImagesMixin):
    """Pseudo labels, checkpoints and rounds of a :class:`~.store.Project`."""

    # ------------------------------------------------------------------ pseudo labels

    def pseudo_path(self, image: ImageRef) -> Path:
        """Where the pseudo label of an image is (or would be) stored."""
        return self._folder / "pseudo" / f"{self.image(image).id}.npy"

    def save_pseudo(self, image: ImageRef, prob: Any, *, any_shape: bool = False) -> Path:
        """Store a pseudo label (probabilities in [0, 1]) as float16 ``.npy``, replacing the
        previous one atomically. Its shape must be the image's (``any_shape`` lifts this, e.g.
        for labels kept at the model's resolution)."""
        rec = self.image(image)
        arr = np.asarray(prob)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"a pseudo label must be numeric, got dtype {arr.dtype}")
        if not any_shape and arr.shape != rec.shape:
            raise ValueError(
                f"pseudo label shape {arr.shape} does not match image '{rec.name}' shape "
                f"{rec.shape}"
            )
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError("the pseudo label contains NaN or infinite values")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"pseudo label values must lie in [0, 1], found [{lo:g}, {hi:g}]")
        data = encode_npy(np.clip(arr, 0.0, 1.0).astype(np.float16))
        self._refuse_if_read_only()
        return atomic_write_bytes(self.pseudo_path(rec), data)

    def load_pseudo(self, image: ImageRef) -> np.ndarray | None:
        """The stored pseudo label (float16), or ``None`` if there is none."""
        p = self.pseudo_path(image)
        try:
            return np.load(p, allow_pickle=False)
        except FileNotFoundError:
            return None

    def clear_pseudo(self, image: ImageRef) -> bool:
        """Remove an image's pseudo label (it is derived data); True if there was one."""
        p = self.pseudo_path(image)
        try:
            p.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(p.parent)
        return True

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_dir(self) -> Path:
        """``checkpoints/`` inside the project."""
        return self._folder / "checkpoints"

    @property
    def current_checkpoint(self) -> Path | None:
        """The checkpoint proposals should use (set when a round finishes), or ``None``."""
        value = self.get_meta("current_checkpoint")
        return self._abs(value) if value else None

    @current_checkpoint.setter
    def current_checkpoint(self, path: str | os.PathLike | None) -> None:
        self.set_meta("current_checkpoint", self._rel(path) if path is not None else None)

    # ------------------------------------------------------------------ rounds

    def start_round(self, n_labeled: int, n_unlabeled: int) -> int:
        """Record the start of a retraining round (status ``running``); returns its id."""
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO rounds (started_at, status, n_labeled, n_unlabeled, metrics)"
                " VALUES (?, 'running', ?, ?, '{}')",
                (self._clock(), int(n_labeled), int(n_unlabeled)),
            )
            return int(cur.lastrowid)

    def update_round(self, round_id: int, metrics: dict[str, Any]) -> None:
        """Replace a running round's metrics (e.g. after each epoch, for live curves)."""
        data = _dump_metrics(metrics)
        with self._write() as conn:
            cur = conn.execute("UPDATE rounds SET metrics = ? WHERE id = ?", (data, int(round_id)))
            if cur.rowcount == 0:
                raise KeyError(f"no round {round_id}")

    def finish_round(
        self,
        round_id: int,
        status: str = "done",
        checkpoint_path: str | os.PathLike | None = None,
        metrics: dict[str, Any] | None = None,
        *,
        make_current: bool = True,
    ) -> RoundRecord:
        """Close a round with ``status`` (done, cancelled, failed), its checkpoint and metrics.

        A ``done`` round with a checkpoint becomes the project's :attr:`current_checkpoint`
        (unless ``make_current=False``).
        """
        if status not in ROUND_STATUSES or status == "running":
            raise ValueError(f"a round finishes as 'done', 'cancelled' or 'failed', not {status!r}")
        ckpt = self._rel(checkpoint_path) if checkpoint_path is not None else None
        with self._write() as conn:
            row = conn.execute(
                "SELECT metrics FROM rounds WHERE id = ?", (int(round_id),)
            ).fetchone()
            if row is None:
                raise KeyError(f"no round {round_id}")
            data = _dump_metrics(metrics) if metrics is not None else row[0]
            conn.execute(
                "UPDATE rounds SET status = ?, finished_at = ?, checkpoint_path = ?, metrics = ?"
                " WHERE id = ?",
                (status, self._clock(), ckpt, data, int(round_id)),
            )
            if status == "done" and ckpt is not None and make_current:
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('current_checkpoint', ?)",
                    (json.dumps(ckpt),),
                )
            cur = conn.execute("SELECT * FROM rounds WHERE id = ?", (int(round_id),))
            return self._round_record(_row_dict(cur, cur.fetchone()))

    def rounds(self) -> list[RoundRecord]:
        """All rounds, oldest first."""
        return [self._round_record(r) for r in self._query("SELECT * FROM rounds ORDER BY id")]

"""Images and their texts: adding images (one, a folder), looking them up, status counts,
and the description history of each image."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ._db import (
    _IMPORT_BATCH,
    ImageRef,
    ProjectBase,
    ProjectError,
    _row_dict,
    _safe_file_stem,
    _split_suffix,
)
from ._fs import atomic_copy
from .records import ImageRecord, TextRecord
from .schema import IMAGE_STATUSES


class ImagesMixin(ProjectBase):
    """Images and texts of a :class:`~.store.Project`."""

    # ------------------------------------------------------------------ images

    def _probe(self, path: Path) -> tuple[tuple[int, ...], bool]:
        from ..data.io import probe_image

        shape, rgb = probe_image(path)
        return tuple(int(s) for s in shape), bool(rgb)

    def _insert_image(
        self,
        conn: sqlite3.Connection,
        src: Path,
        name: str,
        shape: tuple[int, ...],
        rgb: bool,
        text: str | None,
        copy: bool,
        exist_ok: bool,
    ) -> tuple[ImageRecord, bool]:
        """Insert an image inside an open write transaction. Returns (record, created)."""
        cur = conn.execute("SELECT * FROM images WHERE name = ?", (name,))
        row = cur.fetchone()
        if row is not None:
            existing = self._image_record(_row_dict(cur, row))
            if exist_ok and existing.source == str(src):
                return existing, False
            raise ProjectError(
                f"an image named {name!r} is already in the project (from '{existing.source}'); "
                f"give this one another name (name=...)"
            )
        is_volume = len(shape) == 3
        if len(shape) not in (2, 3):
            raise ValueError(f"image '{src}' has an unsupported spatial shape {shape}")
        if copy:
            stem, suffix = _split_suffix(src.name)
            base = _safe_file_stem(name)
            dest = self._folder / "images" / f"{base}{suffix}"
            while dest.exists():
                dest = self._folder / "images" / f"{base}-{secrets.token_hex(3)}{suffix}"
            atomic_copy(src, dest)
            stored = self._rel(dest)
        else:
            stored = self._rel(src)
        text = text.strip() if isinstance(text, str) else None
        now = self._clock()
        cur = conn.execute(
            "INSERT INTO images (name, path, source, copied, width, height, n_slices, is_volume,"
            " rgb, status, text, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'unlabeled', ?, ?)",
            (
                name,
                stored,
                str(src),
                int(copy),
                shape[-1],
                shape[-2],
                shape[0] if is_volume else 1,
                int(is_volume),
                int(rgb),
                text or None,
                now,
            ),
        )
        image_id = int(cur.lastrowid)
        if text:
            conn.execute(
                "INSERT INTO texts (image_id, text, used_at) VALUES (?, ?, ?)",
                (image_id, text, now),
            )
        return self._get_image(conn, image_id), True

    def _get_image(self, conn: sqlite3.Connection, image_id: int) -> ImageRecord:
        cur = conn.execute("SELECT * FROM images WHERE id = ?", (image_id,))
        return self._image_record(_row_dict(cur, cur.fetchone()))

    @property
    def copy_images(self) -> bool:
        """Whether :meth:`add_image` copies images into the project by default."""
        return bool(self.get_meta("copy_images", False))

    def add_image(
        self,
        path: str | os.PathLike,
        text: str | None = None,
        name: str | None = None,
        *,
        copy: bool | None = None,
        exist_ok: bool = False,
        window: Any = None,
    ) -> ImageRecord:
        """Add an image file (2D or volume); its header is read to record the shape.

        ``name`` defaults to the file name without suffix and must be unique in the project.
        ``copy`` (default: the project's ``copy_images``) copies the file into ``images/``,
        otherwise the project references it. A duplicate name raises :class:`ProjectError`,
        unless ``exist_ok`` and it was added from the same file: then the existing record is
        returned. Unreadable images raise ``ImageReadError`` (a ``ValueError``). ``window``:
        a CT window for it (see :meth:`set_window`).
        """
        src = Path(path).expanduser().resolve()
        shape, rgb = self._probe(src)
        if name is None:
            name = _split_suffix(src.name)[0]
        name = str(name).strip()
        if not name:
            raise ValueError("an image name cannot be empty")
        copy = self.copy_images if copy is None else bool(copy)
        with self._write() as conn:
            record, _ = self._insert_image(conn, src, name, shape, rgb, text, copy, exist_ok)
            if window is not None:
                self._store_window(conn, record.id, window)
                record = self._get_image(conn, record.id)
        return record

    def set_window(self, image: ImageRef, window: Any) -> ImageRecord:
        """Set the CT window an image reaches the model through (training, proposals): a
        preset name (``"lung"``, ...), ``(level, width)`` in HU, or ``None`` for min-max
        scaling. It applies to images stored as HU, not to 8-bit or RGB ones (see
        :mod:`src_models.data.windows`). Returns the updated record."""
        rec = self.image(image)
        with self._write() as conn:
            self._store_window(conn, rec.id, window)
            return self._get_image(conn, rec.id)

    def _store_window(self, conn: sqlite3.Connection, image_id: int, window: Any) -> None:
        from ..data.windows import as_window

        w = as_window(window)  # a bad window raises before anything is written
        key = f"window/{image_id}"
        if w is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (key, json.dumps([w.level, w.width])),
            )

    def add_folder(
        self,
        folder: str | os.PathLike,
        *,
        recursive: bool = False,
        copy: bool | None = None,
        exist_ok: bool = True,
    ) -> list[ImageRecord]:
        """Add every image file of a folder (sorted by name); returns the records.

        Names are the file names without suffix (with ``recursive``, the relative path without
        suffix, e.g. ``"case1/slice3"``). Images already added from the same file are returned
        as they are (``exist_ok``). For an LViT dataset folder (``img/``, ``labelcol/``, text
        table) use :meth:`import_lvit`.
        """
        from ..data.io import is_image_file

        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise ProjectError(f"'{root}' is not a folder")
        files = root.rglob("*") if recursive else root.iterdir()
        paths = sorted(p for p in files if p.is_file() and is_image_file(p))
        prepared = []
        for p in paths:
            rel = p.relative_to(root).as_posix()
            prepared.append((p, _split_suffix(rel)[0], *self._probe(p)))
        copy = self.copy_images if copy is None else bool(copy)
        out: list[ImageRecord] = []
        for start in range(0, len(prepared), _IMPORT_BATCH):
            with self._write() as conn:
                for p, name, shape, rgb in prepared[start : start + _IMPORT_BATCH]:
                    rec, _ = self._insert_image(conn, p, name, shape, rgb, None, copy, exist_ok)
                    out.append(rec)
        return out

    def image(self, ref: ImageRef) -> ImageRecord:
        """The current record of an image given by id, name or (possibly stale) record.

        Raises ``KeyError`` for an unknown image.
        """
        if isinstance(ref, ImageRecord):
            rows = self._query("SELECT * FROM images WHERE id = ?", (ref.id,))
        elif isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
            rows = self._query("SELECT * FROM images WHERE id = ?", (int(ref),))
        elif isinstance(ref, str):
            rows = self._query("SELECT * FROM images WHERE name = ?", (ref,))
        else:
            raise TypeError(f"an image is given by id, name or ImageRecord, not {type(ref)}")
        if not rows:
            raise KeyError(f"no image {ref!r} in the project '{self._folder}'")
        return self._image_record(rows[0])

    def images(self, status: str | Iterable[str] | None = None) -> list[ImageRecord]:
        """All images (ordered by id), or those with the given status(es)."""
        if status is None:
            rows = self._query("SELECT * FROM images ORDER BY id")
        else:
            wanted = [status] if isinstance(status, str) else list(status)
            for s in wanted:
                if s not in IMAGE_STATUSES:
                    raise ValueError(f"unknown status {s!r}; use one of {IMAGE_STATUSES}")
            marks = ", ".join("?" for _ in wanted)
            rows = self._query(
                f"SELECT * FROM images WHERE status IN ({marks}) ORDER BY id", wanted
            )
        return [self._image_record(r) for r in rows]

    def __len__(self) -> int:
        return int(self._query("SELECT count(*) AS n FROM images")[0]["n"])

    def __contains__(self, ref: object) -> bool:
        try:
            self.image(ref)  # type: ignore[arg-type]
        except (KeyError, TypeError):
            return False
        return True

    def counts(self) -> dict[str, int]:
        """Number of images per status (every status present, zeros included)."""
        out = dict.fromkeys(IMAGE_STATUSES, 0)
        for r in self._query("SELECT status, count(*) AS n FROM images GROUP BY status"):
            out[r["status"]] = int(r["n"])
        return out

    # ------------------------------------------------------------------ texts

    def _record_text(self, conn: sqlite3.Connection, image_id: int, text: str) -> str | None:
        """Make ``text`` the image's current text and append it to the history if it differs
        from the latest entry. Returns the stored text (``None`` for an empty text)."""
        text = str(text).strip()
        last = conn.execute(
            "SELECT text FROM texts WHERE image_id = ? ORDER BY id DESC LIMIT 1", (image_id,)
        ).fetchone()
        if last is None or last[0] != text:
            conn.execute(
                "INSERT INTO texts (image_id, text, used_at) VALUES (?, ?, ?)",
                (image_id, text, self._clock()),
            )
        conn.execute("UPDATE images SET text = ? WHERE id = ?", (text or None, image_id))
        return text or None

    def set_text(self, image: ImageRef, text: str) -> ImageRecord:
        """Set the image's description (kept in its text history); an empty text clears it."""
        rec = self.image(image)
        with self._write() as conn:
            self._record_text(conn, rec.id, text)
            return self._get_image(conn, rec.id)

    def text_history(self, image: ImageRef) -> list[TextRecord]:
        """Every text set or used on the image, oldest first (consecutive repeats collapsed)."""
        rec = self.image(image)
        rows = self._query("SELECT * FROM texts WHERE image_id = ? ORDER BY id", (rec.id,))
        return [TextRecord(int(r["id"]), int(r["image_id"]), r["text"], r["used_at"]) for r in rows]

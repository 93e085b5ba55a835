"""The annotation project store: an SQLite manifest plus mask files in a folder.

Layout of a project folder::

    project.sqlite        manifest (WAL mode; see :mod:`.schema`)
    images/               copies of images (only when the project copies images)
    masks/<image_id>/     one file per committed label version, never overwritten:
                          <version>-<token>.png (2D / one slice: ..-z<k>.png) or .tif (volume)
    masks/orphans/        files whose manifest row never landed (crash), moved here on open
    proposals/<image_id>/ the proposals that commits replaced / that were shown
    pseudo/<image_id>.npy pseudo-label bank (float16 probabilities, replaced atomically)
    checkpoints/          model checkpoints written by retraining rounds

Crash safety: a label file is written completely and durably (temp file, fsync, rename, fsync
of the folder) *before* its row is inserted, and both happen while the project's write lock
(an SQLite ``BEGIN IMMEDIATE`` transaction) is held. After a crash a commit is either complete
(row + file) or absent (at most an unreferenced file, which the next :meth:`Project.open`
moves to ``masks/orphans/``). Rows are never updated or deleted (triggers refuse it).

Concurrency: each :class:`Project` has its own connection guarded by a lock, so one object can
be shared by threads; other processes (a retraining process, a CLI) open the same folder with
their own :class:`Project`; SQLite's WAL mode lets them read while the GUI commits.

This module imports no torch; the image readers of :mod:`src_models.data` are imported lazily.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ._fs import (
    atomic_copy,
    atomic_write_bytes,
    encode_mask_png,
    encode_mask_tiff,
    encode_npy,
    fsync_dir,
    is_temp_name,
    makedirs_durable,
)
from .records import (
    CommitRecord,
    ExportSummary,
    ImageRecord,
    ImportSummary,
    ProposalRecord,
    RoundRecord,
    TextRecord,
    TrainingItem,
)
from .schema import (
    APPLICATION_ID,
    COMMIT_KINDS,
    IMAGE_STATUSES,
    MIGRATIONS,
    ROUND_STATUSES,
    SCHEMA,
    SCHEMA_VERSION,
)

__all__ = ["MANIFEST_NAME", "ImageRef", "Project", "ProjectError", "is_project"]

#: File name of the manifest inside a project folder.
MANIFEST_NAME = "project.sqlite"
_SUBDIRS = ("images", "masks", "proposals", "pseudo", "checkpoints")
_ORPHANS = "masks/orphans"
_BUSY_TIMEOUT_S = 30.0
_PSEUDO_TMP_MAX_AGE_S = 3600.0
_IMPORT_BATCH = 128
_COPY_AS_IS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: An image given by id, name or record.
ImageRef = int | str | ImageRecord


class ProjectError(ValueError):
    """The folder is not a usable project (missing, corrupt, newer schema) or a request
    conflicts with its content (duplicate name, closed project)."""


def is_project(folder: str | os.PathLike) -> bool:
    """True if ``folder`` holds a project manifest (it is not opened or validated)."""
    return (Path(folder) / MANIFEST_NAME).is_file()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _split_suffix(name: str) -> tuple[str, str]:
    low = name.lower()
    if low.endswith(".nii.gz"):
        return name[:-7], name[-7:]
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return name, ""
    return stem, "." + ext


def _safe_file_stem(name: str) -> str:
    """A file-name-safe version of an image name (path separators and odd characters -> '_')."""
    s = name.replace("/", "__").replace("\\", "__")
    s = re.sub(r"[^\w.\-+ ]", "_", s).strip(" .")
    return s or "image"


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


def _row_dict(cur: sqlite3.Cursor, row: tuple) -> dict[str, Any]:
    return {d[0]: v for d, v in zip(cur.description, row, strict=True)}


class Project:
    """An annotation project folder (see the module docstring for the layout).

    Create one with :meth:`create`, open an existing one with :meth:`open`; use it as a context
    manager or call :meth:`close`. Methods that take an image accept its id, its name or an
    :class:`ImageRecord`.
    """

    # ------------------------------------------------------------------ opening and closing

    def __init__(self, folder: Path, conn: sqlite3.Connection) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._folder = folder
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()
        self._tx_depth = 0
        #: Files moved to ``masks/orphans/`` by the last orphan sweep (absolute new paths).
        self.orphans_moved: list[Path] = []

    @property
    def folder(self) -> Path:
        """The project folder (absolute)."""
        return self._folder

    @property
    def manifest_path(self) -> Path:
        """The SQLite manifest file."""
        return self._folder / MANIFEST_NAME

    @staticmethod
    def _connect(db: Path, *, create: bool) -> sqlite3.Connection:
        uri = db.absolute().as_uri() + ("?mode=rwc" if create else "?mode=rw")
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # guarded by the Project's lock
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ProjectError(f"cannot switch '{db}' to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    @classmethod
    def create(
        cls, folder: str | os.PathLike, copy_images: bool = False, *, exist_ok: bool = False
    ) -> Project:
        """Create a new project in ``folder`` (created if needed; it may hold other files).

        ``copy_images``: the default for :meth:`add_image` (copy images into ``images/`` or
        store a reference to the original file). ``exist_ok=True`` opens an existing project
        instead of raising :class:`ProjectError`.
        """
        root = Path(folder).expanduser().resolve()
        if (root / MANIFEST_NAME).exists() and exist_ok:
            return cls.open(root)
        # (an existing but empty manifest, e.g. from a create() killed before its first
        # transaction, is filled in below; a non-empty one is refused inside the transaction)
        if root.exists() and not root.is_dir():
            raise ProjectError(f"cannot create a project in '{root}': it is a file")
        makedirs_durable(root)
        for sub in _SUBDIRS:
            (root / sub).mkdir(exist_ok=True)
        fsync_dir(root)
        db = root / MANIFEST_NAME
        try:
            conn = cls._connect(db, create=True)
        except sqlite3.Error as exc:
            raise ProjectError(f"cannot create the project manifest '{db}': {exc}") from exc
        try:
            conn.execute("BEGIN IMMEDIATE")
            if (
                conn.execute("PRAGMA user_version").fetchone()[0] != 0
                or conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            ):
                conn.execute("ROLLBACK")
                conn.close()
                if exist_ok:  # another process created it first
                    return cls.open(root)
                raise ProjectError(f"'{root}' already holds a project; open it with Project.open")
            for stmt in _statements(SCHEMA):
                conn.execute(stmt)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            now = _now()
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("created_at", json.dumps(now)),
                    ("copy_images", json.dumps(bool(copy_images))),
                    ("schema_version", json.dumps(SCHEMA_VERSION)),
                ],
            )
            conn.execute("COMMIT")
        except ProjectError:
            raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        return cls(root, conn)

    @classmethod
    def open(cls, folder: str | os.PathLike, *, sweep_orphans: bool = True) -> Project:
        """Open an existing project.

        Raises :class:`ProjectError` if ``folder`` is not a project, its manifest is corrupt or
        was written by a newer version. Older schemas are migrated. With ``sweep_orphans``
        (default) label/proposal/image files without a manifest row (left by a crash between
        writing a file and recording it) are moved to ``masks/orphans/``; nothing is deleted.
        """
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise ProjectError(f"'{root}' is not a project: the folder does not exist")
        db = root / MANIFEST_NAME
        if not db.is_file():
            raise ProjectError(f"'{root}' is not a napari-lvit project (no {MANIFEST_NAME} in it)")
        try:
            conn = cls._connect(db, create=False)
        except sqlite3.DatabaseError as exc:
            raise ProjectError(
                f"the project manifest '{db}' is corrupt or not an SQLite file: {exc}"
            ) from exc
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if app_id != APPLICATION_ID:
                raise ProjectError(
                    f"'{db}' is an SQLite file but not a napari-lvit project manifest "
                    f"(application_id {app_id:#x})"
                )
            if version > SCHEMA_VERSION:
                raise ProjectError(
                    f"the project '{root}' was written with schema version {version}, newer than "
                    f"this version of napari-lvit understands ({SCHEMA_VERSION}); upgrade "
                    f"napari-lvit"
                )
            if version < SCHEMA_VERSION:
                cls._migrate(conn, version, db)
            for sub in _SUBDIRS:
                (root / sub).mkdir(exist_ok=True)
        except ProjectError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ProjectError(f"the project manifest '{db}' is corrupt: {exc}") from exc
        project = cls(root, conn)
        if sweep_orphans:
            try:
                project.sweep_orphans(wait=1.0)
            except BaseException:
                project.close()
                raise
        return project

    @staticmethod
    def _migrate(conn: sqlite3.Connection, version: int, db: Path) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read under the lock
            while current < SCHEMA_VERSION:
                step = MIGRATIONS.get(current)
                if step is None:
                    raise ProjectError(
                        f"no migration of '{db}' from schema version {current} to {current + 1}"
                    )
                step(conn)
                current += 1
                conn.execute(f"PRAGMA user_version = {current}")
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (json.dumps(SCHEMA_VERSION),),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @classmethod
    def open_or_create(cls, folder: str | os.PathLike, copy_images: bool = False) -> Project:
        """Open the project in ``folder``, creating it first if there is none."""
        return cls.create(folder, copy_images=copy_images, exist_ok=True)

    def close(self) -> None:
        """Close the manifest connection (idempotent). The object is unusable afterwards."""
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                conn.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Project({str(self._folder)!r}, {state})"

    # ------------------------------------------------------------------ low-level helpers

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ProjectError(f"the project '{self._folder}' is closed")
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: the project-wide write lock, across
        processes). Re-entrant within one thread: nested uses join the outer transaction."""
        with self._lock:
            conn = self._db()
            if self._tx_depth:
                self._tx_depth += 1
                try:
                    yield conn
                finally:
                    self._tx_depth -= 1
                return
            conn.execute("BEGIN IMMEDIATE")
            self._tx_depth = 1
            try:
                yield conn
            except BaseException:
                self._tx_depth = 0
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._tx_depth = 0
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several queries see one state of the manifest."""
        with self._lock:
            conn = self._db()
            if conn.in_transaction:  # inside our own write transaction
                yield conn
                return
            conn.execute("BEGIN DEFERRED")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db().execute(sql, params)
            return [_row_dict(cur, r) for r in cur.fetchall()]

    def _rel(self, path: str | os.PathLike) -> str:
        """How a path is stored: relative (POSIX) inside the project folder, else absolute."""
        p = Path(path).expanduser().resolve()
        try:
            return p.relative_to(self._folder).as_posix()
        except ValueError:
            return str(p)

    def _abs(self, stored: str) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self._folder / p

    # ------------------------------------------------------------------ records

    def _image_record(self, row: dict[str, Any]) -> ImageRecord:
        return ImageRecord(
            id=int(row["id"]),
            name=row["name"],
            path=self._abs(row["path"]),
            source=row["source"],
            width=int(row["width"]),
            height=int(row["height"]),
            n_slices=int(row["n_slices"]),
            is_volume=bool(row["is_volume"]),
            rgb=bool(row["rgb"]),
            copied=bool(row["copied"]),
            status=row["status"],
            text=row["text"],
            added_at=row["added_at"],
        )

    def _commit_record(self, row: dict[str, Any]) -> CommitRecord:
        return CommitRecord(
            id=int(row["id"]),
            image_id=int(row["image_id"]),
            version=int(row["version"]),
            slice=row["slice"],
            mask_path=self._abs(row["mask_path"]),
            proposal_path=self._abs(row["proposal_path"]) if row["proposal_path"] else None,
            text=row["text"],
            model_version=row["model_version"],
            kind=row["kind"],
            committed_at=row["committed_at"],
        )

    def _proposal_record(self, row: dict[str, Any]) -> ProposalRecord:
        return ProposalRecord(
            id=int(row["id"]),
            image_id=int(row["image_id"]),
            slice=row["slice"],
            path=self._abs(row["path"]),
            text=row["text"],
            model_version=row["model_version"],
            created_at=row["created_at"],
        )

    def _round_record(self, row: dict[str, Any]) -> RoundRecord:
        return RoundRecord(
            id=int(row["id"]),
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            status=row["status"],
            checkpoint_path=self._abs(row["checkpoint_path"]) if row["checkpoint_path"] else None,
            metrics=json.loads(row["metrics"] or "{}"),
            n_labeled=int(row["n_labeled"]),
            n_unlabeled=int(row["n_unlabeled"]),
        )

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
        now = _now()
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
    ) -> ImageRecord:
        """Add an image file (2D or volume); its header is read to record the shape.

        ``name`` defaults to the file name without suffix and must be unique in the project.
        ``copy`` (default: the project's ``copy_images``) copies the file into ``images/``,
        otherwise the project references it. A duplicate name raises :class:`ProjectError`,
        unless ``exist_ok`` and it was added from the same file: then the existing record is
        returned. Unreadable images raise ``ImageReadError`` (a ``ValueError``).
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
        return record

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
                (image_id, text, _now()),
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
            (rec.id, slc, rel, text, model_version, _now()),
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
    ) -> CommitRecord:
        """Commit a label as a new version of the image's label (never overwriting older ones).

        ``mask``: ``[H, W]`` for a 2D image; for a volume ``[Z, H, W]`` (whole volume) or, with
        ``slice=k``, ``[H, W]`` or the whole ``[Z, H, W]`` of which slice ``k`` is taken. bool
        or integer arrays (nonzero = lesion) or floats that are exactly 0/1; anything else, or a
        shape that does not match the image, raises ``ValueError`` naming both shapes.
        ``text``: the description the label goes with (default: the image's current text; a new
        text becomes the current one and enters the history). ``proposal``: the proposal this
        label replaces (a :class:`ProposalRecord`, a path, or an array that is stored now).

        The mask file is written atomically and durably before the manifest row is inserted,
        both under the project's write lock. The image's status becomes ``corrected``
        (``no_lesion`` for a 2D/whole-volume commit of kind ``no_lesion``).
        """
        if kind not in COMMIT_KINDS:
            raise ValueError(f"unknown commit kind {kind!r}; use one of {COMMIT_KINDS}")
        rec = self.image(image)
        arr, slc = self._validate_mask(rec, mask, slice)
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
            cur = conn.execute(
                "INSERT INTO commits (image_id, version, slice, mask_path, proposal_path, text,"
                " model_version, kind, committed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.id, version, slc, rel, prop_path, text, model_version, kind, _now()),
            )
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

    # ------------------------------------------------------------------ meta

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key`` (e.g. model name, settings)."""
        data = json.dumps(value)
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, data))

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows or rows[0]["value"] is None:
            return default
        return json.loads(rows[0]["value"])

    def meta(self) -> dict[str, Any]:
        """All meta entries."""
        return {r["key"]: json.loads(r["value"]) for r in self._query("SELECT * FROM meta")}

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
                (_now(), int(n_labeled), int(n_unlabeled)),
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
                (status, _now(), ckpt, data, int(round_id)),
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

    # ------------------------------------------------------------------ integrity

    def sweep_orphans(self, *, wait: float | None = None) -> list[Path]:
        """Move files without a manifest row (from a crash between writing a file and inserting
        its row) out of ``masks/``, ``proposals/`` and ``images/`` into ``masks/orphans/``.

        Runs under the project's write lock, so it never races a commit in progress in another
        process. Nothing is deleted; stale temporary files of pseudo labels (older than an hour)
        are removed. Returns the new paths (also kept in :attr:`orphans_moved`).

        ``wait``: give up (and sweep nothing) if the write lock is not free within ``wait``
        seconds, instead of the usual 30 s busy timeout; :meth:`open` uses 1 s, so opening a
        project that another process is writing to never stalls on this housekeeping.
        """
        with self._lock:
            conn = self._db()
            if wait is not None:
                conn.execute(f"PRAGMA busy_timeout = {max(0, int(wait * 1000))}")
            try:
                moved = self._sweep_orphans()
            except sqlite3.OperationalError as exc:
                if wait is None or "locked" not in str(exc).lower():
                    raise
                moved = []  # busy: the next open sweeps
            finally:
                if wait is not None:
                    conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        self.orphans_moved = moved
        return moved

    def _sweep_orphans(self) -> list[Path]:
        moved: list[Path] = []
        with self._write() as conn:
            referenced = {r[0] for r in conn.execute("SELECT mask_path FROM commits")}
            referenced |= {r[0] for r in conn.execute("SELECT path FROM proposals")}
            referenced |= {r[0] for r in conn.execute("SELECT proposal_path FROM commits") if r[0]}
            referenced |= {r[0] for r in conn.execute("SELECT path FROM images WHERE copied = 1")}
            orphan_root = self._folder / _ORPHANS
            for sub in ("masks", "proposals", "images"):
                base = self._folder / sub
                if not base.is_dir():
                    continue
                for p in sorted(base.rglob("*")):
                    if not p.is_file():
                        continue
                    rel = p.relative_to(self._folder).as_posix()
                    if rel.startswith(_ORPHANS + "/") or rel in referenced:
                        continue
                    dest = orphan_root / rel
                    while dest.exists():
                        dest = dest.with_name(f"{dest.name}.{secrets.token_hex(3)}")
                    makedirs_durable(dest.parent)
                    os.replace(p, dest)
                    fsync_dir(dest.parent)
                    fsync_dir(p.parent)
                    moved.append(dest)
        pseudo = self._folder / "pseudo"
        if pseudo.is_dir():
            cutoff = time.time() - _PSEUDO_TMP_MAX_AGE_S
            for p in pseudo.iterdir():
                if is_temp_name(p.name):
                    with contextlib.suppress(OSError):
                        if p.stat().st_mtime < cutoff:
                            p.unlink()
        return moved

    def check(self, *, deep: bool = False) -> list[str]:
        """Problems found in the project, as messages (an empty list means healthy).

        Checks the database (``PRAGMA quick_check``, foreign keys), that every committed mask
        and recorded proposal file exists (``deep``: also loads each mask and compares its
        shape with the image), that referenced images exist, that statuses agree with the
        commits, and that the current checkpoint exists.
        """
        problems: list[str] = []
        with self._lock:
            conn = self._db()
            for (msg,) in conn.execute("PRAGMA quick_check").fetchall():
                if msg != "ok":
                    problems.append(f"database: {msg}")
            for row in conn.execute("PRAGMA foreign_key_check").fetchall():
                problems.append(f"database: foreign key violation {tuple(row)}")
        images = {r.id: r for r in self.images()}
        commits = [self._commit_record(r) for r in self._query("SELECT * FROM commits ORDER BY id")]
        latest: dict[int, CommitRecord] = {}
        for c in commits:
            latest[c.image_id] = c
            rec = images[c.image_id]
            if not c.mask_path.is_file():
                problems.append(
                    f"commit {c.id} of image '{rec.name}': mask file '{c.mask_path}' is missing"
                )
                continue
            if c.proposal_path is not None and not c.proposal_path.is_file():
                problems.append(
                    f"commit {c.id} of image '{rec.name}': proposal file '{c.proposal_path}' is "
                    f"missing"
                )
            if deep:
                try:
                    m = c.load_mask()
                except Exception as exc:
                    problems.append(f"commit {c.id} of image '{rec.name}': unreadable mask ({exc})")
                    continue
                expected = rec.shape if c.slice is None else rec.shape[1:]
                if m.shape != expected:
                    problems.append(
                        f"commit {c.id} of image '{rec.name}': mask shape {m.shape} differs from "
                        f"the image's {expected}"
                    )
                if c.kind == "no_lesion" and m.any():
                    problems.append(
                        f"commit {c.id} of image '{rec.name}': its no_lesion mask is not empty"
                    )
        for r in self._query("SELECT * FROM proposals ORDER BY id"):
            p = self._proposal_record(r)
            if not p.path.is_file():
                problems.append(f"proposal {p.id}: file '{p.path}' is missing")
        for rec in images.values():
            if not rec.path.is_file():
                problems.append(f"image '{rec.name}': file '{rec.path}' is missing")
            c = latest.get(rec.id)
            if c is None and rec.is_labeled:
                problems.append(f"image '{rec.name}': status {rec.status} but no commit")
            elif c is not None and not rec.is_labeled:
                problems.append(f"image '{rec.name}': has commits but status {rec.status}")
        ckpt = self.current_checkpoint
        if ckpt is not None and not ckpt.exists():
            problems.append(f"current checkpoint '{ckpt}' is missing")
        return problems

    def integrity_check(self) -> list[str]:
        """Full ``PRAGMA integrity_check`` of the manifest (``["ok"]`` when healthy)."""
        with self._lock:
            return [r[0] for r in self._db().execute("PRAGMA integrity_check").fetchall()]

    # ------------------------------------------------------------------ LViT import/export

    def import_lvit(
        self,
        split_dir: str | os.PathLike,
        with_masks: bool = True,
        *,
        copy: bool | None = None,
        model_version: str = "import",
    ) -> ImportSummary:
        """Import an LViT split folder (``img/``, ``labelcol/``, text table).

        Images are added with their descriptions (names = image file stems); with
        ``with_masks`` each mask becomes a commit of kind ``correction`` with model version
        ``"import"``, and images without a mask are skipped (with a warning from
        :func:`~src_models.data.dataset.scan_split`); without it every image is imported
        unlabelled. Images already imported from the same file are skipped (no second commit).
        Runs in batches of transactions, so an interrupted import can simply be re-run.
        """
        from ..data.dataset import scan_split
        from ..data.io import load_image, mask_from_array

        records = scan_split(split_dir, require_masks=with_masks, require_text=False)
        copy = self.copy_images if copy is None else bool(copy)
        summary = ImportSummary()
        for start in range(0, len(records), _IMPORT_BATCH):
            batch = []
            for r in records[start : start + _IMPORT_BATCH]:
                src = Path(r.image_path).resolve()
                shape, rgb = self._probe(src)
                if with_masks and r.mask_path is not None:
                    loaded = load_image(r.mask_path)
                    m = mask_from_array(loaded.data, rgb=loaded.rgb)
                    if m.shape != shape:
                        raise ValueError(
                            f"mask '{r.mask_path}' shape {m.shape} does not match image "
                            f"'{src}' shape {shape}"
                        )
                    mask = m
                else:
                    mask = None
                batch.append((r, src, shape, rgb, mask))
            with self._write() as conn:
                for r, src, shape, rgb, mask in batch:
                    rec, created = self._insert_image(
                        conn, src, r.name, shape, rgb, r.text, copy, exist_ok=True
                    )
                    if not created:
                        summary.skipped.append(rec.name)
                        continue
                    summary.added.append(rec)
                    if mask is not None:  # joins this transaction (re-entrant write lock)
                        self.commit(rec, mask, model_version=model_version)
                        summary.n_masks += 1
        return summary

    def export_lvit(self, out_dir: str | os.PathLike, only_labeled: bool = True) -> ExportSummary:
        """Write the project as an LViT split folder: ``img/`` (the images), ``labelcol/`` (the
        current masks, PNG 0/255, named ``<name>.png``) and ``text.csv`` (``Image`` = the mask
        file name, ``Description``).

        PNG/JPEG/BMP/TIFF images are copied as they are; other formats (DICOM, NIfTI) are
        written as TIFF with their pixel values. Volumes have no LViT form and are skipped
        (listed in the summary). ``only_labeled=False`` also writes unlabelled images (their
        table rows name the image file, as there is no mask).
        """
        out = Path(out_dir).expanduser().resolve()
        (out / "img").mkdir(parents=True, exist_ok=True)
        (out / "labelcol").mkdir(parents=True, exist_ok=True)
        summary = ExportSummary(out)
        latest = {}
        for c in (self._commit_record(r) for r in self._query("SELECT * FROM commits ORDER BY id")):
            latest[c.image_id] = c
        used: set[str] = set()
        rows: list[tuple[str, str]] = []
        for rec in self.images():
            c = latest.get(rec.id)
            if only_labeled and c is None:
                continue
            if rec.is_volume:
                summary.skipped.append(rec.name)
                continue
            stem = _safe_file_stem(rec.name)
            if stem.lower() in used:
                stem = f"{stem}-{rec.id}"
            used.add(stem.lower())
            suffix = _split_suffix(rec.path.name)[1].lower()
            if suffix in _COPY_AS_IS:
                atomic_copy(rec.path, out / "img" / f"{stem}{suffix}")
            else:
                import tifffile

                from ..data.io import read_image

                buf = io.BytesIO()
                tifffile.imwrite(buf, read_image(rec.path))
                atomic_write_bytes(out / "img" / f"{stem}.tif", buf.getvalue())
                suffix = ".tif"
            summary.n_images += 1
            text = (c.text if c is not None and c.text else rec.text) or ""
            if c is not None:
                mask_name = f"{stem}.png"
                atomic_write_bytes(out / "labelcol" / mask_name, encode_mask_png(c.load_mask()))
                summary.n_masks += 1
                rows.append((mask_name, text))
            else:
                rows.append((f"{stem}{suffix}", text))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["Image", "Description"])
        writer.writerows(rows)
        atomic_write_bytes(out / "text.csv", buf.getvalue().encode("utf-8"))
        return summary


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


def _statements(script: str) -> list[str]:
    """Split a schema script into statements (triggers contain ';' inside BEGIN ... END)."""
    out: list[str] = []
    buf: list[str] = []
    for line in script.splitlines():
        if not line.strip():
            continue
        buf.append(line)
        candidate = "\n".join(buf)
        if sqlite3.complete_statement(candidate):
            out.append(candidate.strip())
            buf = []
    if buf:
        raise ValueError("incomplete SQL statement in the schema")
    return out

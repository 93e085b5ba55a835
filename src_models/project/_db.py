"""The base of :class:`~.store.Project`: its SQLite connection and transactions, path and
record helpers, and the ``meta`` key-value table.

Everything the concern mixins (``_images``, ``_labels``, ``_rounds``, ``_maintenance``,
``_lvit_io``) share lives here, so that they depend on this module only and never on
:mod:`.store`, which composes them. Meta sits here, not with the rounds, because the images
need it too (``copy_images``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from src_models.data.windows import Window, as_window
from src_models.errors import UserError

from .records import (
    CommitRecord,
    ImageRecord,
    ProposalRecord,
    RoundRecord,
    decode_commit_prompts,
)

#: File name of the manifest inside a project folder.
MANIFEST_NAME = "project.sqlite"
_BUSY_TIMEOUT_S = 30.0
_IMPORT_BATCH = 128

#: An image given by id, name or record.
ImageRef = int | str | ImageRecord


class ProjectError(UserError, ValueError):
    """The folder is not a usable project (missing, corrupt, newer schema) or a request
    conflicts with its content (duplicate name, closed project)."""


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


def _row_dict(cur: sqlite3.Cursor, row: tuple) -> dict[str, Any]:
    return {d[0]: v for d, v in zip(cur.description, row, strict=True)}


class ProjectBase:
    """State, connection and shared helpers of a project (see :class:`~.store.Project`)."""

    # ------------------------------------------------------------------ connection

    def __init__(self, folder: Path, conn: sqlite3.Connection) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._folder = folder
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()
        self._tx_depth = 0
        #: Files moved to ``masks/orphans/`` by the last orphan sweep (absolute new paths).
        self.orphans_moved: list[Path] = []
        #: Opened read-only (its folder cannot be written): browse and segment, no commit.
        self.read_only = False

    def _refuse_if_read_only(self) -> None:
        if self.read_only:
            raise ProjectError(
                f"the project '{self._folder}' is open read-only (its folder cannot be "
                "written): nothing can be saved in it",
                hint="copy the project folder somewhere you may write to, and open the copy",
            )

    @property
    def folder(self) -> Path:
        """The project folder (absolute)."""
        return self._folder

    @property
    def manifest_path(self) -> Path:
        """The SQLite manifest file."""
        return self._folder / MANIFEST_NAME

    @staticmethod
    def _connect(
        db: Path,
        *,
        create: bool,
        check: Callable[[sqlite3.Connection], None] | None = None,
        read_only: bool = False,
    ) -> sqlite3.Connection:
        """A connection in WAL mode; ``check`` sees it first (before anything is written, so
        that refusing a file leaves it as it was)."""
        if read_only:  # nothing written: no WAL switch, no -shm (immutable: no locks either)
            uri = db.absolute().as_uri() + "?mode=ro&immutable=1"
        else:
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
            if check is not None:
                check(conn)
            if read_only:
                conn.execute("PRAGMA query_only = ON")
                return conn
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ProjectError(f"cannot switch '{db}' to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        return conn

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
            self._refuse_if_read_only()
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
            window=self._image_window(int(row["id"])),
        )

    def _image_window(self, image_id: int) -> Window | None:
        """An image's CT window, kept in ``meta`` under ``window/<id>`` (no schema change)."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (f"window/{image_id}",))
        if not rows or rows[0]["value"] is None:
            return None
        try:
            return as_window(json.loads(rows[0]["value"]))
        except ValueError:  # a hand-edited value: the image is scaled min-max, as without one
            return None

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
            **decode_commit_prompts(row.get("prompts")),
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

    # ------------------------------------------------------------------ clock

    @staticmethod
    def _clock() -> str:
        """The time stamp of a row being written (``Project`` routes it through ``store._now``)."""
        return _now()

"""The annotation project store: an SQLite manifest plus mask files in a folder.

Layout of a project folder::

    project.sqlite        manifest (WAL mode; see :mod:`.schema`)
    images/               copies of images (only when the project copies images)
    masks/<image_id>/     one file per committed label version, never overwritten:
                          <version>-<token>.png (2D / one slice: ..-z<k>.png) or .tif (volume)
    masks/orphans/        files whose manifest row never landed (crash), moved here on open
    proposals/<image_id>/ the proposals that commits replaced / that were shown
    pseudo/<image_id>.npy a pseudo label saved by hand (float16, replaced atomically)
    pseudo/epi/           EPI's pseudo-label bank (current and previous map per unlabelled
                          sample; :mod:`src_models.engine.semi.bank`, :mod:`.pseudo_review`)
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

The methods live in one module per concern, composed here as mixins: :mod:`._db` (connection,
transactions, records, meta), :mod:`._images` (images, texts), :mod:`._labels` (proposals,
commits, masks, training items), :mod:`._rounds` (pseudo labels, checkpoints, rounds),
:mod:`._maintenance` (orphan sweep, checks) and :mod:`._lvit_io` (LViT import/export). This
module creates, opens and migrates the manifest.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from ._db import MANIFEST_NAME, ImageRef, ProjectError, _now
from ._fs import fsync_dir, makedirs_durable
from ._labels import _as_binary  # noqa: F401 (importable from here, as before the split)
from ._lvit_io import LvitIOMixin
from ._maintenance import MaintenanceMixin
from ._rounds import json_safe  # noqa: F401 (retrain.py imports it from here)
from .schema import APPLICATION_ID, MIGRATIONS, SCHEMA, SCHEMA_VERSION

__all__ = ["MANIFEST_NAME", "ImageRef", "Project", "ProjectError", "is_project"]

_SUBDIRS = ("images", "masks", "proposals", "pseudo", "checkpoints")


def is_project(folder: str | os.PathLike) -> bool:
    """True if ``folder`` holds a project manifest (it is not opened or validated)."""
    return (Path(folder) / MANIFEST_NAME).is_file()


class Project(LvitIOMixin, MaintenanceMixin):
    """An annotation project folder (see the module docstring for the layout).

    Create one with :meth:`create`, open an existing one with :meth:`open`; use it as a context
    manager or call :meth:`close`. Methods that take an image accept its id, its name or an
    :class:`ImageRecord`.
    """

    # ------------------------------------------------------------------ opening and closing

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
        if (root / MANIFEST_NAME).exists() and exist_ok and not _is_empty_manifest(root):
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
    def open(
        cls,
        folder: str | os.PathLike,
        *,
        sweep_orphans: bool = True,
        read_only: bool | None = None,
    ) -> Project:
        """Open an existing project.

        Raises :class:`ProjectError` if ``folder`` is not a project, its manifest is corrupt or
        was written by a newer version. Older schemas are migrated. With ``sweep_orphans``
        (default) label/proposal/image files without a manifest row (left by a crash between
        writing a file and recording it) are moved to ``masks/orphans/``; nothing is deleted.

        ``read_only`` (default: when the folder or its manifest cannot be written) opens it
        for reading: browse and segment, while every change raises :class:`ProjectError`
        saying so (:attr:`read_only` is then True). A manifest left empty by a creation that
        was interrupted (killed before its first transaction ended) is completed here.
        """
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise ProjectError(f"'{root}' is not a project: the folder does not exist")
        db = root / MANIFEST_NAME
        if not db.is_file():
            raise ProjectError(f"'{root}' is not a napari-lvit project (no {MANIFEST_NAME} in it)")
        if read_only is None:
            read_only = not (os.access(root, os.W_OK | os.X_OK) and os.access(db, os.W_OK))

        def check(conn: sqlite3.Connection) -> None:  # before the WAL switch writes the file
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if app_id == 0 and version == 0 and not read_only:
                tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if tables == 0:
                    raise _Interrupted
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

        try:
            conn = cls._connect(db, create=False, check=check, read_only=read_only)
        except _Interrupted:
            # an empty manifest: a create() killed before its first transaction ended; finish it
            return cls.create(root, exist_ok=True)
        except sqlite3.DatabaseError as exc:
            raise ProjectError(
                f"the project manifest '{db}' is corrupt or not an SQLite file: {exc}"
            ) from exc
        if read_only:
            project = cls(root, conn)
            project.read_only = True
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                project.close()
                raise ProjectError(f"the project manifest '{db}' is corrupt: {exc}") from exc
            if version < SCHEMA_VERSION:
                project.close()
                raise ProjectError(
                    f"the project '{root}' is read-only and needs an upgrade of its schema "
                    f"(version {version} to {SCHEMA_VERSION}), which writes to it",
                    hint="copy the project folder somewhere you may write to, and open the copy",
                )
            return project
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
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

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Project({str(self._folder)!r}, {state})"

    @staticmethod
    def _clock() -> str:
        # `_now` is read from this module at call time, so that patching `store._now` (the
        # crash tests stop a commit between its file and its row that way) reaches every row
        # the mixins write, as it did when they were all in this module.
        return _now()


def _is_empty_manifest(root: Path) -> bool:
    """Whether the manifest in ``root`` is an SQLite file with nothing in it yet (a creation
    killed before its first transaction ended); read without writing anything."""
    db = root / MANIFEST_NAME
    try:
        if db.stat().st_size == 0:
            return True
        conn = sqlite3.connect(db.absolute().as_uri() + "?mode=ro", uri=True)
        try:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM sqlite_master), "
                "(SELECT application_id FROM pragma_application_id), "
                "(SELECT user_version FROM pragma_user_version)"
            ).fetchone()
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        return False
    return tuple(row) == (0, 0, 0)


class _Interrupted(Exception):
    """The manifest is empty: its creation was interrupted."""


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

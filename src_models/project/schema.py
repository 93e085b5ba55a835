"""The SQLite schema of a project manifest, its version and the migration hook.

The schema version lives in ``PRAGMA user_version``; ``PRAGMA application_id`` marks the file as
a napari-lvit project. To change the schema: bump :data:`SCHEMA_VERSION`, update :data:`SCHEMA`
(used for new projects) and add ``MIGRATIONS[old_version] = function(conn)`` that upgrades a
database from ``old_version`` to ``old_version + 1``. Migrations run in one transaction when an
older project is opened; a project written by a newer version is refused.

Versions: 1, the first; 2 adds the commit kind ``accepted_pseudo`` (a pseudo label the user
accepted as it is), which needs the ``commits`` table rebuilt (SQLite cannot change a CHECK
in place): :func:`_v1_to_v2` copies its rows unchanged into the new table; 3 adds the
column ``commits.prompts`` (the clicks and box a label was corrected with, JSON
``{"clicks": [[y, x, sign], ...], "box": [y0, x0, y1, x1] | null}``, NULL for none), which
:func:`_v2_to_v3` adds to an older table (its rows keep NULL: they were made without clicks).

Design notes:

- ``commits`` and ``texts`` are append-only (triggers refuse UPDATE and DELETE): a committed
  label is never overwritten, the current label of an image is its latest commit.
- Paths inside the project folder are stored relative to it (POSIX separators), so a project
  folder can be moved; image references outside it are stored absolute.
- Times are UTC ISO 8601 strings with microseconds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

__all__ = [
    "APPLICATION_ID",
    "COMMIT_KINDS",
    "IMAGE_STATUSES",
    "MIGRATIONS",
    "ROUND_STATUSES",
    "SCHEMA",
    "SCHEMA_VERSION",
]

#: ``PRAGMA application_id`` of a project manifest ("LVIT" in ASCII).
APPLICATION_ID = 0x4C564954
#: Current schema version (``PRAGMA user_version``).
SCHEMA_VERSION = 3

IMAGE_STATUSES: tuple[str, ...] = ("unlabeled", "proposed", "corrected", "no_lesion")
#: ``correction``: a hand-made or corrected label; ``no_lesion``: the one-click empty label;
#: ``accepted_pseudo``: an EPI pseudo label accepted as it is (schema version 2)
COMMIT_KINDS: tuple[str, ...] = ("correction", "no_lesion", "accepted_pseudo")
ROUND_STATUSES: tuple[str, ...] = ("running", "done", "cancelled", "failed")


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def _commits_table(kinds: tuple[str, ...], table: str = "commits", prompts: bool = True) -> str:
    """The commits table (``kinds``: the CHECK of its ``kind``; ``prompts``: with the column
    of schema version 3)."""
    extra = "\n    prompts       TEXT," if prompts else ""
    return f"""
CREATE TABLE {table} (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id      INTEGER NOT NULL REFERENCES images (id) ON DELETE RESTRICT,
    version       INTEGER NOT NULL CHECK (version > 0),
    slice         INTEGER CHECK (slice IS NULL OR slice >= 0),
    mask_path     TEXT    NOT NULL UNIQUE,
    proposal_path TEXT,
    text          TEXT,
    model_version TEXT,
    kind          TEXT    NOT NULL CHECK (kind IN {_in(kinds)}),
    committed_at  TEXT    NOT NULL,{extra}
    UNIQUE (image_id, version)
);
"""


#: the index and the append-only triggers of ``commits``, one statement each
_COMMITS_EXTRAS: tuple[str, ...] = (
    "CREATE INDEX commits_image ON commits (image_id, id);",
    "CREATE TRIGGER commits_no_update BEFORE UPDATE ON commits\n"
    "BEGIN SELECT RAISE(ABORT, 'commits are append-only: commit a new version instead'); END;",
    "CREATE TRIGGER commits_no_delete BEFORE DELETE ON commits\n"
    "BEGIN SELECT RAISE(ABORT, 'commits are append-only: committed labels are never deleted');"
    " END;",
)

SCHEMA = f"""
CREATE TABLE images (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    path        TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    copied      INTEGER NOT NULL DEFAULT 0 CHECK (copied IN (0, 1)),
    width       INTEGER NOT NULL CHECK (width > 0),
    height      INTEGER NOT NULL CHECK (height > 0),
    n_slices    INTEGER NOT NULL DEFAULT 1 CHECK (n_slices > 0),
    is_volume   INTEGER NOT NULL DEFAULT 0 CHECK (is_volume IN (0, 1)),
    rgb         INTEGER NOT NULL DEFAULT 0 CHECK (rgb IN (0, 1)),
    status      TEXT    NOT NULL DEFAULT 'unlabeled' CHECK (status IN {_in(IMAGE_STATUSES)}),
    text        TEXT,
    added_at    TEXT    NOT NULL
);
CREATE INDEX images_status ON images (status);

CREATE TABLE texts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id    INTEGER NOT NULL REFERENCES images (id) ON DELETE RESTRICT,
    text        TEXT    NOT NULL,
    used_at     TEXT    NOT NULL
);
CREATE INDEX texts_image ON texts (image_id, id);

CREATE TABLE proposals (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id      INTEGER NOT NULL REFERENCES images (id) ON DELETE RESTRICT,
    slice         INTEGER CHECK (slice IS NULL OR slice >= 0),
    path          TEXT    NOT NULL UNIQUE,
    text          TEXT,
    model_version TEXT,
    created_at    TEXT    NOT NULL
);
CREATE INDEX proposals_image ON proposals (image_id, id);

{_commits_table(COMMIT_KINDS)}{chr(10).join(_COMMITS_EXTRAS)}
CREATE TRIGGER texts_no_update BEFORE UPDATE ON texts
BEGIN SELECT RAISE(ABORT, 'the text history is append-only'); END;
CREATE TRIGGER texts_no_delete BEFORE DELETE ON texts
BEGIN SELECT RAISE(ABORT, 'the text history is append-only'); END;

CREATE TABLE rounds (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at      TEXT    NOT NULL,
    finished_at     TEXT,
    status          TEXT    NOT NULL DEFAULT 'running' CHECK (status IN {_in(ROUND_STATUSES)}),
    checkpoint_path TEXT,
    metrics         TEXT    NOT NULL DEFAULT '{{}}',
    n_labeled       INTEGER NOT NULL DEFAULT 0,
    n_unlabeled     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);
"""

#: ``MIGRATIONS[v](conn)`` upgrades a database from schema version ``v`` to ``v + 1``. It runs
#: inside the transaction that also sets the new ``user_version``.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    """Rebuild ``commits`` with the ``accepted_pseudo`` kind; every row is copied as it is
    (ids, versions, paths, times). Dropping the old table drops its index and triggers, which
    are created again on the new one (a DROP fires no DELETE trigger)."""
    columns = (
        "id, image_id, version, slice, mask_path, proposal_path, text, model_version, kind,"
        " committed_at"
    )
    conn.execute(_commits_table(COMMIT_KINDS, "commits_v2", prompts=False))
    conn.execute(f"INSERT INTO commits_v2 ({columns}) SELECT {columns} FROM commits")
    conn.execute("DROP TABLE commits")
    conn.execute("ALTER TABLE commits_v2 RENAME TO commits")
    for stmt in _COMMITS_EXTRAS:
        conn.execute(stmt)


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    """Add ``commits.prompts`` (NULL in every existing row; ADD COLUMN fires no trigger)."""
    conn.execute("ALTER TABLE commits ADD COLUMN prompts TEXT")


MIGRATIONS[1] = _v1_to_v2
MIGRATIONS[2] = _v2_to_v3

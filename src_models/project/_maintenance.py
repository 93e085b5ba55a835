"""Housekeeping: moving files without a manifest row (a crash between writing a file and
recording it) to ``masks/orphans/``, and the health checks of a project."""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time
from pathlib import Path

from ._db import _BUSY_TIMEOUT_S
from ._fs import fsync_dir, is_temp_name, makedirs_durable
from ._rounds import RoundsMixin
from .records import CommitRecord

_ORPHANS = "masks/orphans"
_PSEUDO_TMP_MAX_AGE_S = 3600.0


class MaintenanceMixin(RoundsMixin):
    """Orphan sweep and checks of a :class:`~.store.Project`."""

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

"""The files and lock of retraining rounds: one retraining at a time per project (an OS file
lock), the round's work and final checkpoint, durable publishing, and the recovery of rounds
left ``running`` by a process that died."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ._fs import fsync_dir
from .store import Project

__all__ = ["LOCK_NAME", "WORK_SUFFIX", "ProjectLock", "recover_stale_rounds"]

LOCK_NAME = ".retrain.lock"
WORK_SUFFIX = ".work.safetensors"


class ProjectLock:
    """An exclusive, non-blocking OS lock on ``checkpoints/.retrain.lock`` (POSIX flock; the
    kernel drops it when the process dies, even by SIGKILL). Without fcntl it always succeeds."""

    def __init__(self, project: Project) -> None:
        self.path = project.checkpoint_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def recover_stale_rounds(project: Project) -> list[int]:
    """Record rounds left ``running`` by a process that died (killed, crashed) as ``failed``.

    A round is stale when no process holds the project's retraining lock. Returns their ids;
    does nothing (returns ``[]``) while a retraining runs.
    """
    running = [r for r in project.rounds() if r.status == "running"]
    if not running:
        return []
    lock = ProjectLock(project)
    if not lock.acquire():
        return []
    try:
        return fail_running(project)
    finally:
        lock.release()


def fail_running(project: Project) -> list[int]:
    out = []
    for r in project.rounds():
        if r.status != "running":
            continue
        metrics = dict(r.metrics)
        metrics["error"] = "the training process ended without finishing the round (killed?)"
        project.finish_round(r.id, "failed", metrics=metrics)
        remove_round_files(project, r.id)
        out.append(r.id)
    return out


def round_paths(project: Project, round_id: int) -> tuple[Path, Path]:
    """(work file the trainer writes, final checkpoint) of a round."""
    base = project.checkpoint_dir / f"round-{round_id:04d}"
    return Path(str(base) + WORK_SUFFIX), Path(str(base) + ".safetensors")


def remove_round_files(project: Project, round_id: int) -> None:
    """Remove a failed/cancelled round's files (never the final checkpoint of a done round)."""
    work, _ = round_paths(project, round_id)
    stem = work.name[: -len(".safetensors")]
    for p in project.checkpoint_dir.glob(stem + "*"):
        with contextlib.suppress(OSError):
            p.unlink()
    for p in project.checkpoint_dir.glob(f".{stem}*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


def publish(work: Path, final: Path) -> Path:
    """Make the trained checkpoint durable under its final name: fsync, rename, fsync dir;
    then check that it loads its metadata."""
    from src_models.engine.checkpoint import read_checkpoint_meta

    fd = os.open(work, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(work, final)
    fsync_dir(final.parent)
    read_checkpoint_meta(final)
    return final

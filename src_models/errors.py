"""The errors a user can act on, and the one line that tells them.

Whatever a user gives that cannot be used (a file, a folder, a flag, a checkpoint, a project)
raises a :class:`UserError`, or one of its kinds, which are ``ValueError`` too:
:class:`~src_models.data.readers.ImageReadError`,
:class:`~src_models.engine.checkpoint.CheckpointError`,
:class:`~src_models.project.ProjectError`, :class:`~src_models.data.tables.DatasetError`,
:class:`~src_models.project.retrain_config.RetrainError`. Its message names the thing and the
reason; ``hint`` says what to do when the reason alone does not.

Two boundaries turn an exception into what the user sees, and both call :func:`describe`:
``napari-lvit`` (:func:`src_models.cli.main`: one line on stderr, exit 2) and the napari widgets
(:func:`napari_lvit._errors.report_error`: napari's notification area). Besides
:class:`UserError`, :func:`describe` treats the kinds this code base raises for bad input
(``ValueError``, ``KeyError`` from a lookup by name, ``OSError`` from the file system, running
out of memory) as the user's to fix; anything else is unexpected (a bug), and its line says so.
"""

from __future__ import annotations

import errno

__all__ = ["UserError", "describe", "one_line"]


class UserError(Exception):
    """Something the user gave cannot be used: ``str(exc)`` says what and why, ``hint`` (or
    ``None``) what to do about it."""

    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(str(text).split())


def _os_message(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    where = " -> ".join(f"'{n}'" for n in names)
    message = f"{reason}: {where}" if where else reason
    if exc.errno == errno.ENOSPC:
        return f"{message}; free some disk space and try again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{message}; choose a place you may write to"
    return message


def describe(exc: BaseException) -> tuple[str, bool]:
    """``(message, is_user_error)``: one line for ``exc``; ``is_user_error`` is False for an
    unexpected exception (its message then names its type)."""
    if isinstance(exc, UserError):
        message = str(exc)
        hint = getattr(exc, "hint", None)
        if hint and hint not in message:
            message = f"{message.rstrip('.')}; {hint}"
        return one_line(message), True
    if isinstance(exc, OSError):
        return one_line(_os_message(exc)), True
    if isinstance(exc, KeyError):  # a lookup by name: str() would quote the message
        return one_line(exc.args[0] if exc.args else "key not found"), True
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        reason = str(exc).split("\n")[0] or "no memory left"
        return (
            one_line(
                f"out of memory ({reason}); try a smaller image, batch size or model, or "
                "another device"
            ),
            True,
        )
    if isinstance(exc, ValueError):
        return one_line(str(exc) or type(exc).__name__), True
    first = str(exc).strip().split("\n")[0]
    return one_line(f"unexpected {type(exc).__name__}" + (f": {first}" if first else "")), False

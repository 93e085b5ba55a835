"""The widgets' one error boundary: every failure the user sees becomes one line in napari's
notification area (:func:`napari.utils.notifications.show_error`), never a traceback dialog.

The line is :func:`src_models.errors.describe`'s, the same the command line prints: the user's
own errors (a bad file, a broken checkpoint, a refused image) say what and what to do; an
unexpected exception says so, and its traceback goes to the terminal (stderr) for a report.
"""

from __future__ import annotations

import sys
import traceback

from napari.utils.notifications import show_error

from src_models.errors import describe, one_line

__all__ = ["error_line", "report_error"]


def error_line(error: BaseException | str, context: str | None = None) -> str:
    """One line for ``error`` (an exception or a message), after ``context`` when given."""
    if isinstance(error, BaseException):
        message, user_error = describe(error)
        if not user_error:
            traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
            message += " (a bug: its traceback is in the terminal; please report it)"
    else:
        message = one_line(error)
    return f"{context}: {message}" if context else message


def report_error(error: BaseException | str, context: str | None = None) -> str:
    """Show ``error`` in napari's notification area as one line; returns the line."""
    line = error_line(error, context)
    show_error(line)
    return line

"""Keyboard shortcuts of the annotation loop, bound on the viewer (they act when the canvas
has the focus). No Qt import: napari's key bindings call plain functions."""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

#: key -> (method of the annotation widget, what it does)
SHORTCUTS = {
    "Shift-S": ("segment", "Segment"),
    "Shift-C": ("commit", "Commit the labels as this image's correction"),
    "Shift-X": ("no_lesion", "No lesion in this image"),
    "Shift-E": ("clear", "Clear the labels (nothing is saved)"),
    "Shift-N": ("next_image", "Next image"),
    "Shift-B": ("previous_image", "Previous image (back)"),
    "Shift-U": ("go_to_suggested", "Go to the suggested (most uncertain) image"),
    "Shift-K": ("accept_pseudo", "Keep: accept this image's pseudo label as its label"),
    "Shift-R": ("review_next", "Review next: the pseudo label most likely right"),
    "Shift-P": ("toggle_click_mode", "Click mode: correct the labels with clicks and a box"),
}


def shortcut_help() -> str:
    return "\n".join(f"{key}: {what}" for key, (_, what) in SHORTCUTS.items())


def bind_shortcuts(viewer: Any, widget: Any) -> None:
    """Bind every shortcut on ``viewer`` to ``widget``'s method (held weakly: a key pressed
    after the widget is gone does nothing)."""
    ref = weakref.ref(widget)
    for key, (method, _) in SHORTCUTS.items():

        def action(viewer, method=method):
            target = ref()
            if target is not None:
                with contextlib.suppress(RuntimeError):  # the Qt widget is gone
                    getattr(target, method)()

        viewer.bind_key(key, action, overwrite=True)

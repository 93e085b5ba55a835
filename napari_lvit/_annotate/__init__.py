"""The annotation loop dock widget (``AnnotationWidget``) and ``napari-lvit annotate``.

Modules by responsibility:

- ``session``: the project, its images, labels state, commits, suggestions' data and the
  retraining config, without Qt (tested without a display); ``pseudo``: EPI's pseudo labels
  (marks, the shown image's maps, "Review next"), without Qt;
- ``events``: retraining events as JSON lines and the texts shown for them (no Qt);
- ``shortcuts``: the keyboard shortcuts (no Qt);
- ``views``, ``panel``, ``plot``: the Qt views, the Retrain panel and its matplotlib curves;
  ``pseudo_view``: the pseudo-label box and the layers that draw a pseudo label;
- ``layers``: the napari layers of the shown image;
- ``background``, ``models``: whole-volume segmentation, suggestions, the model choices;
- ``runner``: the retraining in a separate process or a thread worker;
- ``widget``: ``AnnotationWidget``, which composes them; ``launch``: ``run_annotate``.

Only the display-free names are imported here; the Qt ones load on first use, so that
``napari_lvit._annotate.session`` imports without Qt.
"""

from __future__ import annotations

import importlib
from typing import Any

from napari_lvit._annotate.session import PROJECT_MODEL, AnnotationSession
from napari_lvit._annotate.shortcuts import SHORTCUTS, shortcut_help

_LAZY = {"AnnotationWidget": "widget", "run_annotate": "launch"}

__all__ = [
    "PROJECT_MODEL",
    "SHORTCUTS",
    "AnnotationSession",
    "AnnotationWidget",
    "run_annotate",
    "shortcut_help",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""``napari-lvit annotate``: napari with the annotation widget docked and a folder opened."""

from __future__ import annotations

import os


def run_annotate(
    path: str | os.PathLike | None = None,
    project: str | os.PathLike | None = None,
    model: str | None = None,
    block: bool = True,
):
    """Open napari with the annotation widget docked and ``path`` opened in it.

    With ``block=False`` the viewer and the widget are returned instead of entering the Qt
    event loop (tests, scripts)."""
    import napari

    from napari_lvit._widget import FROM_FILE

    viewer = napari.Viewer(title="napari-lvit: annotation loop")
    _, widget = viewer.window.add_plugin_dock_widget("napari-lvit", "Annotation loop")
    if model is not None:
        if model in widget.seg.model.choices:
            widget.seg.model.value = model
        else:
            widget.seg.model.value = FROM_FILE
            widget.seg.checkpoint.value = model
    if path is not None:
        widget.open(path, project)
    if block:
        napari.run()
    return viewer, widget

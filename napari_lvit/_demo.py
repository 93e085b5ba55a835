"""``napari-lvit demo``: napari with a synthetic chest X-ray, its report, and the default model."""

from __future__ import annotations

from pathlib import Path

PLUGIN = "napari-lvit"
WIDGET = "Text-guided segmentation"
SAMPLE = "chest_xray_both_lungs"  # the report names one lung: edit "left"/"right"


def run_demo(model: str = "default", block: bool = True, screenshot: Path | None = None):
    """Open the viewer, dock the widget, segment the sample with its report.

    With ``block=False`` the segmentation runs on the calling thread and the viewer is
    returned instead of entering the Qt event loop (for tests and screenshots).
    """
    import napari

    from napari_lvit._widget import FROM_FILE

    viewer = napari.Viewer(title="napari-lvit demo")
    viewer.open_sample(PLUGIN, SAMPLE)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    if model in widget.model.choices:
        widget.model.value = model
    else:
        widget.model.value = FROM_FILE
        widget.checkpoint.value = model
    image = next(layer for layer in viewer.layers if "description" in layer.metadata)
    widget.image.value = image
    widget.text.value = image.metadata["description"]
    widget.run_synchronously = not block
    widget.segment()
    if screenshot is not None:
        from qtpy.QtWidgets import QApplication

        # Room for the dock widget beside the canvas, laid out before the grab.
        viewer.window._qt_window.resize(1400, 900)
        QApplication.processEvents()
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(screenshot), canvas_only=False)
    if block:
        napari.run()
    return viewer, widget

"""``napari-lvit demo``: napari with a synthetic chest X-ray, its report, and the default model.

The report names the lesion in the left lung; the text's proposal covers it. Then, with a model
that reads clicks (the default does), click mode turns on and one click on the lesion in the
right lung, which the report does not name, adds it to the mask: what a clinician does when
the report missed a finding.
"""

from __future__ import annotations

from pathlib import Path

PLUGIN = "napari-lvit"
WIDGET = "Text-guided segmentation"
SAMPLE = "chest_xray_both_lungs"  # the report names one lung: edit "left"/"right"


def run_demo(
    model: str = "default",
    block: bool = True,
    screenshot: Path | None = None,
    click: bool = True,
):
    """Open the viewer, dock the widget, segment the sample with its report and (``click``,
    when the model reads clicks) add the unreported lesion with one click.

    The setup runs on the calling thread, before the event loop; with ``block=False`` the
    viewer is then returned instead of entering the Qt event loop (for tests and screenshots).
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
    widget.run_synchronously = True
    widget.segment()
    if click:
        click_the_unreported_lesion(viewer, widget, image)
    widget.run_synchronously = not block
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


def click_the_unreported_lesion(viewer, widget, image) -> bool:
    """Click mode on, and one add-click at the deepest point of the lesion the report does not
    name (where the RITM protocol's first click goes); ``False`` (nothing done) when the model
    reads no clicks."""
    from napari_lvit._click_mode import CLICKS_SUFFIX
    from napari_lvit._mouse import click
    from napari_lvit._sample_data import both_lungs_scene
    from src_models.engine.clicks import first_click

    predictor = widget.predictor(widget.model_source, str(widget.device.value))
    if not predictor.reads_prompts:
        return False
    _, _, (_, unreported) = both_lungs_scene()
    y, x, _ = first_click(unreported)
    widget.toggle_click_mode()
    click(viewer.layers[image.name + CLICKS_SUFFIX], tuple(image.data_to_world((y, x))))
    viewer.layers[image.name + CLICKS_SUFFIX].selected_data = set()  # show the point as it is
    overlay = viewer.canvas.overlays["text"]
    overlay.text = "The report names the left lung; one click adds the lesion in the right lung"
    overlay.position, overlay.font_size, overlay.visible = "top_left", 10, True
    return True

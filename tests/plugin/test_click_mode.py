"""Click mode in a real viewer (needs a display: run under xvfb-run): a click into the Points
layer re-segments and the Labels layer changes; Ctrl+click removes, undo restores, a box
counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_lvit._click_mode import BOX_SUFFIX, CLICKS_SUFFIX, TOGGLE_KEY
from napari_lvit._mouse import click
from napari_lvit._widget import PROPOSAL_SUFFIX, SegmentWidget
from src_models.engine.checkpoint import save_checkpoint
from src_models.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def clicks_checkpoint(tmp_path):
    """A prompted model whose adapter is not zero (untrained: only the plumbing is tested,
    clicks must change the mask)."""
    torch.manual_seed(0)
    model = create_model("unet_tiny", prompts=True)
    with torch.no_grad():
        model.prompt_adapter.project.weight.normal_(std=3.0)
    return save_checkpoint(tmp_path / "clicks.safetensors", model)


def test_clicks_into_the_points_layer_change_the_labels(make_napari_viewer, clicks_checkpoint):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    image = viewer.add_image(
        rng.random((64, 64)).astype(np.float32), name="scan", scale=(0.5, 0.5), translate=(10, 20)
    )
    widget = SegmentWidget(viewer)
    widget.run_synchronously = True
    widget.set_model_sources({"clicks model": lambda: str(clicks_checkpoint)})
    widget.model.value = "clicks model"
    widget.device.value = "cpu"
    widget.image.value = image
    widget.segment()
    labels = viewer.layers["scan" + PROPOSAL_SUFFIX]
    proposal = labels.data.copy()

    from napari.utils.key_bindings import coerce_keybinding

    viewer.keymap[coerce_keybinding(TOGGLE_KEY)](viewer)  # the shortcut turns click mode on
    points = viewer.layers["scan" + CLICKS_SUFFIX]
    assert viewer.layers.selection.active is points and points.mode == "add"
    assert np.allclose(points.scale, image.scale) and np.allclose(points.translate, image.translate)

    # a click on image pixel (30, 40): world = translate + scale * pixel
    click(points, (10 + 0.5 * 30, 20 + 0.5 * 40))
    assert len(points.data) == 1 and list(points.features["sign"]) == [1]
    assert widget.click_prompts().clicks == ((30.0, 40.0, 1),)
    after_add = labels.data.copy()
    assert not np.array_equal(after_add, proposal)

    click(points, (10 + 0.5 * 12, 20 + 0.5 * 50), modifiers=("Control",))  # removes
    assert list(points.features["sign"]) == [1, -1]
    assert not np.array_equal(labels.data, after_add)

    widget.click_mode.undo_last_click()  # Ctrl+Z on the layer
    assert len(points.data) == 1 and np.array_equal(labels.data, after_add)  # kept, not rerun

    shapes = viewer.layers["scan" + BOX_SUFFIX]
    shapes.add_rectangles(np.array([[5.0, 5.0], [40.0, 50.0]]))  # in the layer's data pixels
    assert widget.click_prompts().box == (5.0, 5.0, 40.0, 50.0)
    assert not np.array_equal(labels.data, after_add)

    click(points, (0.0, 0.0))  # outside the image (its world origin is at (10, 20))
    assert "outside the image left out" in widget.status.value

    widget.toggle_click_mode()
    assert not widget.click_mode.active and widget.click_button.text == "Click mode"
    before = labels.data.copy()
    click(points, (10 + 0.5 * 50, 20 + 0.5 * 10))  # click mode off: the labels stay
    assert np.array_equal(labels.data, before)

    widget.toggle_click_mode()
    viewer.layers.remove(points)  # the user deletes the clicks layer: click mode ends
    assert not widget.click_mode.active
    widget.toggle_click_mode()  # and starts again with a new one
    assert widget.click_mode.active and widget.click_mode.points is not points
    assert viewer.layers["scan" + CLICKS_SUFFIX] is widget.click_mode.points


def test_click_mode_with_a_model_without_prompts_says_so(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((32, 32), np.float32), name="scan")
    widget = SegmentWidget(viewer)
    widget.run_synchronously = True
    widget.model.value = "unet_tiny"
    widget.device.value = "cpu"
    widget.image.value = image
    widget.toggle_click_mode()
    with pytest.warns(UserWarning, match="untrained"):
        click(viewer.layers["scan" + CLICKS_SUFFIX], (5.0, 5.0))
    assert "reads no clicks or boxes" in widget.status.value
    assert not widget.busy and widget.segment_button.enabled


def test_the_annotation_loop_commits_the_clicks_with_the_label(
    make_napari_viewer, clicks_checkpoint, tmp_path
):
    from napari.utils.key_bindings import coerce_keybinding

    from napari_lvit._annotate import AnnotationWidget
    from napari_lvit._widget import FROM_FILE
    from src_models.data.synthetic import write_dataset
    from src_models.project import Project

    images = write_dataset(tmp_path / "data", kind="qata", n=2, size=64) / "img"
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-lvit", "Annotation loop")
    assert isinstance(widget, AnnotationWidget)
    widget.run_synchronously = True
    widget.seg.model.value = FROM_FILE
    widget.seg.checkpoint.value = clicks_checkpoint
    widget.seg.device.value = "cpu"
    assert widget.open(images)

    def press(key: str) -> None:
        viewer.keymap[coerce_keybinding(key)](viewer)

    press("Shift-S")  # Segment
    labels = widget.labels_layer
    proposal = labels.data.copy()
    press("Shift-P")  # click mode
    name = widget.current.name
    points = viewer.layers[name + CLICKS_SUFFIX]
    click(points, (30.0, 20.0))
    assert not np.array_equal(labels.data, proposal) and widget.labels_edited()
    press("Shift-C")  # Commit
    assert len(points.data) == 0  # the next correction starts without clicks
    with Project.open(images / ".napari-lvit") as project:
        (commit,) = project.history(name)
    assert commit.clicks == ((30.0, 20.0, 1),) and commit.box is None
    np.testing.assert_array_equal(commit.load_mask(), labels.data != 0)

    press("Shift-N")  # the next image: the old click layers go with the old image
    assert name + CLICKS_SUFFIX not in viewer.layers and not widget.seg.click_mode.active

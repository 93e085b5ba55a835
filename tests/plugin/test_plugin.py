"""The plugin in a real napari viewer (needs a display: run under xvfb-run)."""

import numpy as np
import pytest
import torch

from napari_lvit._widget import PROPOSAL_SUFFIX, SegmentWidget, image_plane

PLUGIN = "napari-lvit"
WIDGET = "Text-guided segmentation"


def test_installed_manifest_validates_and_every_python_name_imports():
    import importlib

    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest(PLUGIN)
    assert manifest.name == PLUGIN
    manifest.validate_imports()  # raises when a python_name does not import
    for command in manifest.contributions.commands:
        module, attr = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr))
    assert {w.display_name for w in manifest.contributions.widgets} == {WIDGET, "Annotation loop"}


def _dock(viewer) -> SegmentWidget:
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert isinstance(widget, SegmentWidget)
    return widget


@pytest.mark.filterwarnings("ignore:model 'lvit_tiny' is untrained")
def test_segment_in_a_real_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(0)
    image = (rng.random((96, 80)) * 255).astype(np.uint8)
    layer = viewer.add_image(image, name="scan", scale=(0.5, 0.7), translate=(3, 4))
    widget = _dock(viewer)
    widget.model.value = "lvit_tiny"
    widget.device.value = "cpu"
    widget.image.value = layer
    widget.text.value = "Unilateral pulmonary infection, one infected area, lower left lung."
    widget.threshold.value = 0.5

    widget.segment_button.native.click()  # runs in a worker thread
    qtbot.waitUntil(lambda: f"scan{PROPOSAL_SUFFIX}" in viewer.layers, timeout=60_000)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    labels = viewer.layers[f"scan{PROPOSAL_SUFFIX}"]
    assert labels.data.shape == image.shape
    assert np.allclose(labels.scale, layer.scale) and np.allclose(labels.translate, layer.translate)
    assert set(np.unique(labels.data)) <= {0, 1}
    assert widget.segment_button.enabled

    # The slider re-cuts the stored probabilities: a threshold of 0.01 keeps at least as much.
    before = int(labels.data.sum())
    widget.threshold.value = 0.01
    assert int(labels.data.sum()) >= before

    shot = viewer.screenshot(canvas_only=True)
    assert shot.ndim == 3 and shot[..., :3].std() > 1.0  # real pixels, not a blank canvas


@pytest.mark.filterwarnings("ignore:model 'lvit_tiny' is untrained")
def test_threshold_never_overwrites_a_correction(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.linspace(0, 1, 64 * 64).reshape(64, 64), name="img")
    widget = _dock(viewer)
    widget.run_synchronously = True
    widget.model.value = "lvit_tiny"
    widget.image.value = layer
    widget.text.value = "lower right lung"
    widget.segment()
    labels = viewer.layers[f"img{PROPOSAL_SUFFIX}"]
    labels.data[:8, :8] = 1 - labels.data[:8, :8]  # the user paints
    painted = labels.data.copy()
    widget.threshold.value = 0.9
    assert np.array_equal(labels.data, painted)
    assert "edited" in widget.status.value


def test_empty_text_gives_a_message_not_a_traceback(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    widget = _dock(viewer)
    widget.run_synchronously = True
    widget.model.value = "lvit_tiny"
    widget.image.value = layer
    widget.text.value = "   "
    with pytest.warns(UserWarning, match="untrained"):
        widget.segment()
    assert "description" in widget.status.value
    assert f"img{PROPOSAL_SUFFIX}" not in viewer.layers
    assert widget.segment_button.enabled


@pytest.mark.filterwarnings("ignore:model 'lvit_tiny' is untrained")
def test_volume_segments_the_shown_slice(make_napari_viewer):
    viewer = make_napari_viewer()
    volume = np.random.default_rng(1).random((5, 64, 64)).astype(np.float32)
    layer = viewer.add_image(volume, name="ct")
    viewer.dims.set_current_step(0, 3)
    widget = _dock(viewer)
    widget.run_synchronously = True
    widget.model.value = "lvit_tiny"
    widget.image.value = layer
    widget.text.value = "lesion"
    widget.threshold.value = 0.01
    widget.segment()
    labels = viewer.layers[f"ct{PROPOSAL_SUFFIX}"]
    assert labels.data.shape == volume.shape
    filled = [z for z in range(5) if labels.data[z].any()]
    assert filled == [3]


def test_image_plane_of_rgb_and_volume():
    from napari.layers import Image

    rgb = Image(np.zeros((10, 12, 3), np.uint8), rgb=True)
    plane, index = image_plane(rgb, (0, 0))
    assert plane.shape == (10, 12, 3) and index == ()
    vol = Image(np.arange(4 * 6 * 6).reshape(4, 6, 6))
    plane, index = image_plane(vol, (2, 0, 0))
    assert index == (2,) and np.array_equal(plane, vol.data[2])


def test_sample_data_opens_with_its_report(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "chest_xray")
    image = viewer.layers["synthetic chest X-ray"]
    assert "lung" in image.metadata["description"]
    widget = _dock(viewer)
    widget.image.value = image
    assert widget.text.value == image.metadata["description"]


@pytest.mark.filterwarnings("ignore:model 'lvit_tiny' is untrained")
def test_a_typed_description_is_encoded_before_segment_is_pressed(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    widget = _dock(viewer)
    widget.model.value = "lvit_tiny"
    widget.device.value = "cpu"
    widget.image.value = layer
    widget.text.value = "Lesion in the upper left lung."
    qtbot.wait(400)
    assert widget._predictors == {}  # typing alone loads no model

    widget.segment_button.native.click()
    qtbot.waitUntil(
        lambda: not widget.busy and f"img{PROPOSAL_SUFFIX}" in viewer.layers, timeout=60_000
    )
    (predictor,) = widget._predictors.values()
    new_text = "Lesion in the lower right lung."
    assert not predictor.text_encoder.is_cached(new_text)
    widget.text.value = new_text  # the user types a new sentence and pauses
    qtbot.waitUntil(lambda: predictor.text_encoder.is_cached(new_text), timeout=10_000)
    cached = predictor.text_encoder.encode([new_text])

    fresh = type(predictor)("lvit_tiny", device="cpu", text_encoder=predictor.text_encoder.id)
    assert torch.allclose(cached.tokens, fresh.text_encoder.encode([new_text]).tokens, atol=1e-5)

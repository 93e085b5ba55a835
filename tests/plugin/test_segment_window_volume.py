"""The Segment widget's CT window presets and its Whole volume run (slices batched, progress,
Cancel), in a real viewer (needs a display: run under xvfb-run)."""

import numpy as np
import pytest

from napari_lvit._widget import PROPOSAL_SUFFIX, SegmentWidget
from src_models.data.windows import apply_window

pytestmark = pytest.mark.filterwarnings("ignore:model 'unet_tiny' is untrained")


def _ct_volume(n: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.choice([-1000.0, -850.0, 40.0, 700.0], size=(n, 64, 64)).astype(np.float32)


@pytest.fixture
def widget(make_napari_viewer):
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    w.run_synchronously = True
    w.model.value = "unet_tiny"  # reads no text, 64 px: quick on one core
    w.device.value = "cpu"
    w.volume_batch_size = 2
    return viewer, w


def shown(widget) -> bool:
    """Not hidden (magicgui's ``visible`` is also False while the dock itself is not shown)."""
    return not widget.native.isHidden()


def _seen_inputs(widget):
    """The batches the widget's model receives (a forward pre-hook)."""
    predictor = widget.predictor("unet_tiny", "cpu")
    inputs = []
    predictor.model.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].clone()))
    return inputs


def test_a_preset_sets_the_contrast_and_the_model_input(widget):
    viewer, w = widget
    volume = _ct_volume()
    layer = viewer.add_image(volume, name="ct")
    w.image.value = layer
    changed = []
    w.window_changed.connect(lambda lay, win: changed.append((lay, win)))
    assert w.window.value == "none"
    w.window.value = "lung"
    assert np.allclose(layer.contrast_limits, (-1350, 150))
    assert layer.metadata["window"] == [-600.0, 1500.0]
    assert changed == [(layer, (-600.0, 1500.0))]
    w.window.value = "bone"
    assert np.allclose(layer.contrast_limits, (-500, 1300))

    inputs = _seen_inputs(w)
    viewer.dims.set_current_step(0, 3)
    w.segment()
    np.testing.assert_allclose(inputs[-1][0, 0].numpy(), apply_window(volume[3], "bone"), atol=1e-6)

    w.window.value = "none"  # back to the image's own range, and min-max for the model
    assert "window" not in layer.metadata
    assert np.allclose(layer.contrast_limits, (volume.min(), volume.max()))
    w.segment()
    lo, hi = volume[3].min(), volume[3].max()
    np.testing.assert_allclose(inputs[-1][0, 0].numpy(), (volume[3] - lo) / (hi - lo), atol=1e-6)


def test_the_window_follows_its_layer_and_8_bit_images_take_none(widget):
    viewer, w = widget
    ct = viewer.add_image(_ct_volume(), name="ct", metadata={"window": [40, 80]})
    xray = viewer.add_image(np.zeros((64, 64), np.uint8), name="xray")
    w.image.value = ct
    assert w.window.value == "brain"
    w.image.value = xray
    assert w.window.value == "none"
    limits = tuple(xray.contrast_limits)
    w.window.value = "lung"
    assert w.window.value == "none" and "window" not in xray.metadata
    assert tuple(xray.contrast_limits) == limits and "8-bit" in w.status.value
    custom = viewer.add_image(_ct_volume(), name="ct2", metadata={"window": [50, 350]})
    w.image.value = custom  # a window that is no preset is shown as it is
    assert w.window.value == "50,350" and "W350 L50" in w.window.native.currentText()


def test_whole_volume_batches_the_slices_and_shows_progress(widget):
    viewer, w = widget
    volume = _ct_volume(5)
    layer = viewer.add_image(volume, name="ct")
    w.image.value = layer
    assert shown(w.volume_button)
    w.window.value = "lung"
    inputs = _seen_inputs(w)
    progress = []
    w.volume_progress.connect(lambda done, total: progress.append((done, total)))
    w.threshold.value = 0.3
    w.volume_button.native.click()
    assert progress == [(2, 5), (4, 5), (5, 5)]
    assert w.progress.value == 5 and w.progress.max == 5
    assert not shown(w.progress) and not shown(w.cancel_button)
    assert [tuple(x.shape) for x in inputs] == [(2, 3, 64, 64), (2, 3, 64, 64), (1, 3, 64, 64)]
    np.testing.assert_allclose(inputs[2][0, 0].numpy(), apply_window(volume[4], "lung"), atol=1e-6)
    labels = viewer.layers[f"ct{PROPOSAL_SUFFIX}"]
    prob = w.last_prediction.prob
    assert prob.shape == volume.shape
    assert np.array_equal(labels.data != 0, prob >= 0.3)
    one = w.predictor("unet_tiny", "cpu").predict_prob(volume[1], window="lung")
    np.testing.assert_allclose(prob[1], one, atol=1e-5)
    w.threshold.value = 0.6  # the slider re-cuts the whole volume
    assert np.array_equal(labels.data != 0, prob >= 0.6)
    assert w.segment_button.enabled and w.volume_button.enabled


def test_cancel_stops_the_run_and_writes_nothing(widget):
    viewer, w = widget
    layer = viewer.add_image(_ct_volume(6), name="ct")
    w.image.value = layer
    inputs = _seen_inputs(w)
    w.volume_progress.connect(lambda done, total: w.cancel_volume())  # after the first batch
    w.segment_volume()
    assert len(inputs) == 1  # no batch ran after Cancel
    assert f"ct{PROPOSAL_SUFFIX}" not in viewer.layers
    assert "cancelled" in w.status.value and w.segment_button.enabled
    # an earlier proposal stays as it was
    w.volume_progress.disconnect()
    w.segment()
    labels = viewer.layers[f"ct{PROPOSAL_SUFFIX}"]
    before = labels.data.copy()
    w.volume_progress.connect(lambda done, total: w.cancel_volume())
    w.segment_volume()
    assert np.array_equal(labels.data, before)


def test_whole_volume_in_a_worker_and_cancelled_in_a_worker(widget, qtbot):
    viewer, w = widget
    layer = viewer.add_image(_ct_volume(4), name="ct")
    w.image.value = layer
    w.run_synchronously = False
    progress = []
    w.volume_progress.connect(lambda done, total: progress.append(done))
    w.segment_volume()
    assert w.busy and shown(w.progress) and shown(w.cancel_button)
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert progress[-1] == 4 and f"ct{PROPOSAL_SUFFIX}" in viewer.layers
    viewer.layers.remove(f"ct{PROPOSAL_SUFFIX}")
    w.segment_volume()
    w.cancel_button.native.click()  # before the first batch is in
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert f"ct{PROPOSAL_SUFFIX}" not in viewer.layers and "cancelled" in w.status.value
    assert not shown(w.progress)


def test_whole_volume_is_offered_for_3d_grayscale_images_only(widget):
    viewer, w = widget
    w.image.value = viewer.add_image(np.zeros((64, 64), np.float32), name="flat")
    assert not shown(w.volume_button)
    w.segment_volume()
    assert "3D" in w.status.value
    w.image.value = viewer.add_image(_ct_volume(3), name="vol")
    assert shown(w.volume_button)
    w.offers_whole_volume = False  # a widget with its own (the annotation loop)
    assert not shown(w.volume_button)

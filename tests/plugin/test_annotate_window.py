"""The annotation loop with CT windows: a window picked in its Segment box is kept with the
project image and comes back with it; Whole volume runs the Segment widget's batched slices
through the window (needs a display: run under xvfb-run)."""

import numpy as np
import pytest
import tifffile

from src_models.data.windows import PRESETS, apply_window

pytestmark = pytest.mark.filterwarnings("ignore:model 'unet_tiny' is untrained")


def test_a_window_is_kept_with_the_project_image_and_whole_volume_follows_it(
    make_napari_viewer, tmp_path
):
    from napari_lvit._annotate.widget import AnnotationWidget

    folder = tmp_path / "scans"
    folder.mkdir()
    rng = np.random.default_rng(0)
    ct = rng.choice([-1000, -850, 40, 700], size=(6, 64, 64)).astype(np.int16)
    tifffile.imwrite(folder / "ct.tif", ct, photometric="minisblack")
    tifffile.imwrite(folder / "other.tif", ct[::-1].copy(), photometric="minisblack")
    viewer = make_napari_viewer()
    widget = AnnotationWidget(viewer)
    widget.run_synchronously = True
    widget.segment_on_open = False
    assert widget.open(folder)
    seg = widget.seg
    assert seg.volume_button.native.isHidden()  # the panel's "Whole volume" box runs it
    seg.model.value, seg.device.value = "unet_tiny", "cpu"
    seg.volume_batch_size = 4
    seg.window.value = "lung"
    assert widget.project.image("ct").window == PRESETS["lung"]
    assert np.allclose(widget.image_layer.contrast_limits, (-1350, 150))

    widget.next_image()  # another image: no window; then back: the project's window returns
    assert seg.window.value == "none"
    widget.previous_image()
    assert widget.current.name == "ct" and seg.window.value == "lung"
    assert np.allclose(widget.image_layer.contrast_limits, (-1350, 150))

    inputs = []
    predictor = seg.predictor("unet_tiny", "cpu")
    predictor.model.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].clone()))
    widget.volume_check.setChecked(True)
    seg.threshold.value = 0.3
    seg.segment()
    assert [tuple(x.shape) for x in inputs] == [(4, 3, 64, 64), (2, 3, 64, 64)]
    np.testing.assert_allclose(inputs[1][1, 0].numpy(), apply_window(ct[5], "lung"), atol=1e-6)
    assert np.array_equal(widget.labels_layer.data != 0, seg.last_prediction.prob >= 0.3)
    assert widget.project.latest_proposal(widget.current).slice is None
    # one slice: the Segment button's plane goes through the window too
    widget.volume_check.setChecked(False)
    viewer.dims.set_current_step(0, 2)
    seg.segment()
    expected = np.rint(apply_window(ct[2], "lung") * 255) / 255
    np.testing.assert_allclose(inputs[-1][0, 0].numpy(), expected, atol=1e-6)
    widget.close_project()

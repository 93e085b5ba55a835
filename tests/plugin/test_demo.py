"""``napari-lvit demo``: the README's main command, in the mode that returns after setting up."""

import numpy as np

from napari_lvit._click_mode import CLICKS_SUFFIX
from napari_lvit._widget import PROPOSAL_SUFFIX


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def test_demo_segments_one_click_adds_the_unreported_lesion_left_right_moves_the_mask(
    tmp_path, mock_app_model
):
    # The demo makes its own viewer, outside make_napari_viewer: mock_app_model gives it a fresh
    # app model, else the plugin's commands may already be registered by an earlier test.
    import napari
    from skimage.io import imread

    from napari_lvit._cli import main
    from napari_lvit._sample_data import both_lungs_scene

    _, _, (reported, unreported) = both_lungs_scene()
    shot = tmp_path / "demo.png"
    assert main(["demo", "--no-run", "--screenshot", str(shot)]) == 0
    viewer = napari.current_viewer()
    try:
        image = next(layer for layer in viewer.layers if "description" in layer.metadata)
        assert np.array_equal(viewer.layers["reference mask"].data.astype(bool), reported)
        clicks = viewer.layers[image.name + CLICKS_SUFFIX]
        assert len(clicks.data) == 1 and unreported[tuple(np.round(clicks.data[0]).astype(int))]
        after = viewer.layers[image.name + PROPOSAL_SUFFIX].data.astype(bool)
        assert after.shape == image.data.shape[:2]
        # the text's lesion stays and the clicked one is added
        assert dice(after & ~unreported, reported) > 0.7, "the click lost the reported lesion"
        covered = (after & unreported).sum() / unreported.sum()
        assert covered > 0.5, f"one click added {covered:.0%} of the unreported lesion"

        pixels = imread(shot)
        assert pixels.ndim == 3 and pixels[..., :3].std() > 5  # not blank

        _, widget = viewer.window.add_plugin_dock_widget("napari-lvit", "Text-guided segmentation")
        widget.run_synchronously = True
        if widget.click_mode.active:
            widget.toggle_click_mode()
        widget.text.value = image.metadata["description"]
        widget.segment()  # the text alone
        left = viewer.layers[image.name + PROPOSAL_SUFFIX].data.astype(bool)
        assert dice(left, reported) > 0.7, "the text's mask misses the reported lesion"
        assert (left & unreported).sum() < 0.2 * unreported.sum()
        widget.text.value = image.metadata["description"].replace("left", "right")
        widget.segment()
        right = viewer.layers[image.name + PROPOSAL_SUFFIX].data.astype(bool)
        iou = (left & right).sum() / max(1, (left | right).sum())
        assert right.any() and iou < 0.2, f"'right' did not move the mask (IoU {iou:.2f})"
    finally:
        viewer.close()

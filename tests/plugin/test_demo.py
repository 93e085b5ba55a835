"""``napari-lvit demo``: the README's main command, in the mode that returns after setting up."""

from napari_lvit._widget import PROPOSAL_SUFFIX


def test_demo_segments_the_sample_and_left_right_moves_the_mask(tmp_path, mock_app_model):
    # The demo makes its own viewer, outside make_napari_viewer: mock_app_model gives it a fresh
    # app model, else the plugin's commands may already be registered by an earlier test.
    import napari
    from skimage.io import imread

    from napari_lvit._cli import main

    shot = tmp_path / "demo.png"
    assert main(["demo", "--no-run", "--screenshot", str(shot)]) == 0
    viewer = napari.current_viewer()
    try:
        image = next(layer for layer in viewer.layers if "description" in layer.metadata)
        proposal = viewer.layers[image.name + PROPOSAL_SUFFIX]
        assert proposal.data.shape == image.data.shape[:2]
        reference = viewer.layers["reference mask"].data.astype(bool)
        left = proposal.data.astype(bool)
        dice = 2 * (left & reference).sum() / (left.sum() + reference.sum())
        assert dice > 0.7, f"the demo's first mask misses the reported lesions (Dice {dice:.2f})"

        pixels = imread(shot)
        assert pixels.ndim == 3 and pixels[..., :3].std() > 5  # not blank

        _, widget = viewer.window.add_plugin_dock_widget("napari-lvit", "Text-guided segmentation")
        widget.text.value = image.metadata["description"].replace("left", "right")
        widget.run_synchronously = True
        widget.segment()
        right = viewer.layers[image.name + PROPOSAL_SUFFIX].data.astype(bool)
        iou = (left & right).sum() / max(1, (left | right).sum())
        assert right.any() and iou < 0.2, f"'right' did not move the mask (IoU {iou:.2f})"
    finally:
        viewer.close()

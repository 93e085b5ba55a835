"""Screenshot of a CT series in napari: true proportions, the lung window, a proposal.

A synthetic chest CT (40 axial slices of 256 x 256 at 0.7 x 0.7 mm, 5 mm apart: a body, two
lungs with vessels, ribs, the spine, a ground-glass lesion low in the left lung) is written as
a DICOM series with pydicom, opened through napari-lvit's reader (so the layer's ``scale`` is
the voxel size in mm), shown with the lung window preset, and segmented with the shipped
default model ("Whole volume": every axial slice, batched). The canvas shows a coronal plane,
superior up, where the 5 mm slices are visibly thicker than the 0.7 mm pixels and the chest has
its real height. The default model was trained on synthetic chest X-rays, not CT: its proposal
finds the lesion's core with a few false positives (the script prints its Dice against the
phantom's lesion, 0.28). Run::

    xvfb-run -a -s "-screen 0 1280x1024x24" python scripts/screenshot_ct.py

writes ``docs/ct_series.png`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPACING = (5.0, 0.7, 0.7)  # slice, row, column (mm)
SHAPE = (40, 256, 256)
LESION_Y = 14.0  # mm behind the centre of the slice
TEXT = "Unilateral pulmonary infection, one infected area, lower left lung."


def chest_ct(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A chest-like CT volume in HU, ``[Z, Y, X]`` (slice 0 lowest, rows towards the back,
    columns towards the patient's left), and its lesion (where the blob is over half its peak).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True)), indexing="ij"
    )
    x, y = x - x.max() / 2, y - y.max() / 2  # mm from the centre of the slice
    hu = np.full(SHAPE, -1000.0)
    hu[(x / 84) ** 2 + (y / 64) ** 2 <= 1] = 40.0  # body (soft tissue)
    ribs = ((x / 78) ** 2 + (y / 58) ** 2 <= 1) & ((x / 73) ** 2 + (y / 53) ** 2 > 1)
    hu[ribs & ((z // 10) % 2 == 0)] = 650.0  # ribs: one band every 2 cm
    lungs = np.zeros(SHAPE, bool)
    for side in (-1, 1):  # ellipsoids, wider at the base
        grow = 1.0 + 0.2 * np.clip((105.0 - z) / 80.0, 0, 1)
        lungs |= ((x - side * 38) / (33 * grow)) ** 2 + ((y + 2) / (46 * grow)) ** 2 + (
            (z - 105.0) / 85
        ) ** 2 <= 1
    hu[lungs] = -860.0
    vessels = ndimage.gaussian_filter(rng.normal(size=SHAPE), (0.4, 2.0, 2.0)) > 0.5
    hu[lungs & vessels] = -300.0
    # ground glass low in the left lung: a blurry, textured blob
    r2 = ((x - 40) / 26) ** 2 + ((y - LESION_Y) / 24) ** 2 + ((z - 55) / 30) ** 2
    texture = ndimage.gaussian_filter(rng.normal(size=SHAPE), (0.5, 2.0, 2.0))
    hu = np.where(lungs, hu + 700.0 * np.exp(-1.5 * r2) * (1 + texture), hu)
    lesion = lungs & (np.exp(-1.5 * r2) >= 0.5)
    hu[(x / 11) ** 2 + ((y - 50) / 11) ** 2 <= 1] = 700.0  # vertebra
    hu[(x / 14) ** 2 + ((y + 18) / 22) ** 2 <= 1] = 45.0  # heart
    hu = ndimage.gaussian_filter(hu, (0.3, 0.8, 0.8)) + rng.normal(0.0, 12.0, SHAPE)
    return np.clip(hu, -1024, 2000), lesion


def settle(app) -> None:
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "ct_series.png")
    p.add_argument("--model", default="default")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="napari-lvit-ct-"))
    os.environ["NAPARI_CONFIG"] = str(work / "napari-settings.yaml")  # napari's defaults
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_lvit._widget import PROPOSAL_SUFFIX, SegmentWidget
    from src_models.data.dicom import write_dicom_series

    hu, lesion = chest_ct()
    stored = np.rint(hu + 1024).astype(np.int16)  # stored values, rescale intercept -1024
    series = work / "chest_ct"
    write_dicom_series(series, stored, spacing=SPACING, origin=(-89.3, -89.3, -150.0))

    viewer = napari.Viewer()
    app = QApplication.instance()
    viewer.window._qt_window.resize(1280, 860)
    (layer,) = viewer.open(str(series), plugin="napari-lvit")
    _, widget = viewer.window.add_plugin_dock_widget("napari-lvit", "Text-guided segmentation")
    assert isinstance(widget, SegmentWidget)
    widget.model.value = args.model
    widget.device.value = "cpu"
    widget.image.value = layer
    widget.window.value = "lung"
    widget.text.value = TEXT
    widget.run_synchronously = True  # one script step after the other
    widget.segment_volume()
    labels = viewer.layers[layer.name + PROPOSAL_SUFFIX]
    print(f"layer scale {tuple(layer.scale)} mm, contrast {tuple(layer.contrast_limits)}")
    mask = labels.data != 0
    dice = 2 * (mask & lesion).sum() / (mask.sum() + lesion.sum())
    print(f"proposal: {mask.mean() * 100:.2f}% of the voxels, Dice {dice:.2f} with the lesion")

    # a coronal plane through the lesion, superior up: z (5 mm) against x (0.7 mm)
    viewer.dims.order = (1, 0, 2)
    row = int(round((LESION_Y + (SHAPE[1] - 1) * SPACING[1] / 2) / SPACING[1]))
    viewer.dims.set_point(1, layer.translate[1] + row * SPACING[1])
    viewer.scene.camera.orientation2d = ("up", "right")
    viewer.layers.selection.active = layer  # its controls show the window's contrast limits
    layer.axis_labels = labels.axis_labels = ("S", "P", "L")  # where each axis points (LPS)
    overlays = viewer.canvas.overlays
    overlays["axes"].visible = True
    text = overlays["text"]
    text.text = (
        f"coronal plane, {SPACING[1]} x {SPACING[2]} x {SPACING[0]:g} mm voxels, lung window"
    )
    text.position, text.font_size, text.visible = "top_left", 10, True
    # no scale bar: napari 0.9.2 labels it "pixel" unless layer units are set, and setting
    # units ("mm") blanked the canvas here
    viewer.reset_view()
    settle(app)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.window._qt_window.grab().save(str(args.out))
    print(f"{args.out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Screenshot of the annotation widget docked in napari at napari's default window size.

A small synthetic project (6 chest X-rays with their reports), two of them corrected and one
marked "no lesion", a short retraining round from the shipped default model (in a thread
worker) so that the curves show a few epochs, and the cursor over the curves (the value
readout). Run::

    xvfb-run -a -s "-screen 0 1280x1024x24" python scripts/screenshot_annotate.py

The window keeps napari's default size, so the dock scrolls: ``docs/annotation_widget.png``
(or ``--out``) shows its lower part (Commit, Retrain, the curves),
``docs/annotation_widget_top.png`` its top (the project's images, Segment).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wait(app, done, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        app.processEvents()
        time.sleep(0.02)


def settle(app) -> None:
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "annotation_widget.png")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--model", default="default", help="what the project starts from")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="napari-lvit-shot-"))
    # napari's own defaults (window size, theme), not settings saved by earlier sessions
    os.environ["NAPARI_CONFIG"] = str(work / "napari-settings.yaml")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))

    import csv

    import numpy as np
    from qtpy.QtCore import QPoint
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication
    from skimage.io import imread

    from napari_lvit._annotate import run_annotate
    from src_models.data.synthetic import write_dataset

    data = write_dataset(work / "data", kind="qata", n=6, size=128)
    viewer, widget = run_annotate(data / "img", model=args.model, block=False)
    app = QApplication.instance()
    widget.seg.device.value = "cpu"
    widget.run_synchronously = True
    widget.retrain_mode = "thread"
    widget.retrain_options = {"num_threads": 1}
    with open(data / "text.csv", newline="") as f:  # the reports, as a clinician would type them
        for item in csv.DictReader(f):
            widget.project.set_text(Path(item["Image"]).stem, item["Description"])
    widget.refresh_list()
    for row in (0, 1):  # correct two images with their reference masks
        widget.show_image(row)
        name = widget.current.name
        widget.labels_layer.data = (imread(data / "labelcol" / f"{name}.png") > 0).astype(np.uint8)
        widget.commit()
    widget.show_image(2)
    widget.no_lesion()
    widget.epochs_spin.setValue(args.epochs)
    widget.retrain()
    wait(app, lambda: widget.idle, 600)
    epochs = [e.get("epoch") for e in widget.retrain_events if e["type"] == "EpochEnd"]
    print(f"retraining: {widget.retrain_label.text()} epochs reported: {epochs}")
    widget.show_image(3)  # an unlabelled image, segmented by the new model on open
    wait(app, lambda: widget.idle, 120)

    window = viewer.window._qt_window
    settle(app)
    top = args.out.with_name(args.out.stem + "_top" + args.out.suffix)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(top))  # the dock at its top: project, images, Segment
    widget.scroll_to(widget.panel)  # the rest of the dock: Commit, Retrain and the curves
    settle(app)
    plot = widget.plot
    # the cursor over the curves, at the third epoch: the readout names that point
    x = plot.ax.transData.transform((3, 0))[0] / plot.device_pixel_ratio
    QTest.mouseMove(plot, QPoint(int(x), plot.height() // 2))
    settle(app)
    window.grab().save(str(args.out))
    size = window.size()
    print(f"{args.out}, {top} ({size.width()}x{size.height()} window, napari's default)")
    widget.close_project()
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Screenshot of click mode: one click adds the lesion that the text's proposal missed.

A synthetic chest X-ray with two faint lesions in the left lung (``make_qata_sample``, fixed
seed, lesion contrast 0.6) and its report, which names both. The Segment widget segments it
with a prompted checkpoint (one that reads clicks and boxes); the proposal finds one lesion and
misses the other. The widget's Click mode button turns click mode on, and one left click, sent
through napari's own mouse callbacks of the ``[clicks]`` layer as the plugin's tests do, lands
on the missed lesion (where the RITM protocol clicks: ``src_models.engine.clicks.next_click``
against the reference mask). The widget re-segments (its worker run synchronously) and the
Labels layer shows the corrected mask. The script prints the IoU of the Labels layer with the
reference mask before and after the click. Run::

    xvfb-run -a -s "-screen 0 1600x1200x24" python scripts/screenshot_click_mode.py

writes ``docs/click_mode.png`` (or ``--out``), with the shipped default or another checkpoint
that reads clicks (``--checkpoint``).
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
HOW_TO = "train one with `napari-lvit train ... --clicks 3`, or use the shipped default"


def settle(app) -> None:
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)


def check_checkpoint(path: Path) -> str | None:
    """Why ``path`` cannot be used (``None`` when it is a checkpoint that reads prompts)."""
    if not path.is_file():
        return f"no checkpoint at {path}: {HOW_TO}"
    from src_models.engine.checkpoint import read_checkpoint_meta

    try:
        meta = read_checkpoint_meta(path)
    except Exception as exc:  # noqa: BLE001 - one line for the user
        return f"{path} is not a readable checkpoint ({exc}): {HOW_TO}"
    if not meta.get("reads_prompts"):
        return f"the model in {path} reads no clicks or boxes: {HOW_TO}"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="reads clicks (default: the shipped one)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "click_mode.png")
    p.add_argument("--seed", type=int, default=18, help="of the synthetic X-ray")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--contrast", type=float, default=0.6, help="of the lesions (1: as trained)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.checkpoint is None:
        from src_models.inference import DEFAULT_CHECKPOINT

        args.checkpoint = DEFAULT_CHECKPOINT
    problem = check_checkpoint(args.checkpoint)
    if problem is not None:
        print(f"screenshot_click_mode: {problem}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="napari-lvit-clicks-"))
    os.environ["NAPARI_CONFIG"] = str(work / "napari-settings.yaml")  # napari's defaults

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_lvit._click_mode import CLICKS_SUFFIX
    from napari_lvit._mouse import click
    from napari_lvit._widget import FROM_FILE, PROPOSAL_SUFFIX, SegmentWidget
    from src_models.data.synthetic import make_qata_sample
    from src_models.engine.clicks import next_click
    from src_models.metrics import iou_score as iou

    torch.set_num_threads(1)  # a small model on a shared machine
    image, truth, text = make_qata_sample(
        np.random.default_rng([args.seed, 11]), args.size, contrast=args.contrast
    )

    viewer = napari.Viewer()
    app = QApplication.instance()
    viewer.window._qt_window.resize(1280, 860)
    layer = viewer.add_image(image, name="chest X-ray")
    _, widget = viewer.window.add_plugin_dock_widget("napari-lvit", "Text-guided segmentation")
    assert isinstance(widget, SegmentWidget)
    widget.run_synchronously = True  # one script step after the other
    widget.model.value = FROM_FILE
    widget.checkpoint.value = args.checkpoint
    widget.device.value = "cpu"
    widget.image.value = layer
    widget.text.value = text
    widget.segment_button.native.click()
    labels = viewer.layers[layer.name + PROPOSAL_SUFFIX]
    before = labels.data != 0
    iou_before = iou(before, truth)

    widget.click_button.native.click()  # click mode on: the [clicks] and [box] layers
    assert widget.click_mode.active, widget.status.value
    points = viewer.layers[layer.name + CLICKS_SUFFIX]
    y, x, sign = next_click(before, truth)
    assert sign == 1, "the proposal missed no lesion: try another --seed"
    click(points, tuple(layer.data_to_world((y, x))))
    after = labels.data != 0
    points.selected_data = set()  # napari selects the point it added: show it as it is
    iou_after = iou(after, truth)

    overlay = viewer.canvas.overlays["text"]
    overlay.text = f"one click adds the missed lesion: IoU {iou_before:.2f} -> {iou_after:.2f}"
    overlay.position, overlay.font_size, overlay.visible = "top_left", 10, True
    viewer.reset_view()
    settle(app)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.window._qt_window.grab().save(str(args.out))
    print(
        f"{args.out}: {text!r}; one click at pixel ({y}, {x}) on the missed lesion; IoU with "
        f"the reference mask {iou_before:.3f} before, {iou_after:.3f} after "
        f"(status: {widget.status.value})"
    )
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

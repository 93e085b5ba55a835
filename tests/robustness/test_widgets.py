"""The widgets with bad inputs (needs a display: run under xvfb-run): each failure is one line
in napari's notification area (through :func:`napari_lvit._errors.report_error`), the layers
stay as they were (never a half-written proposal) and nothing on disk changes."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from robustness_cases import BIG_SIDE, tree  # (tests/robustness/ is on sys.path)

from napari_lvit import _errors
from napari_lvit._widget import FROM_FILE, PROPOSAL_SUFFIX

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture
def notices(monkeypatch):
    """What reached napari's notification area as an error, one entry per notification."""
    shown: list[str] = []
    monkeypatch.setattr(_errors, "show_error", shown.append)
    return shown


def _segment_widget(viewer, ws, checkpoint="unet.safetensors"):
    _, widget = viewer.window.add_plugin_dock_widget("napari-lvit", "Text-guided segmentation")
    widget.run_synchronously = True
    widget.model.value = FROM_FILE
    widget.checkpoint.value = ws / checkpoint
    widget.device.value = "cpu"
    return widget


def _only(notices: list[str], *fragments: str) -> str:
    assert len(notices) == 1, notices
    (line,) = notices
    assert "\n" not in line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def _proposals(viewer) -> list[str]:
    return [layer.name for layer in viewer.layers if layer.name.endswith(PROPOSAL_SUFFIX)]


@pytest.mark.parametrize(
    ("checkpoint", "image", "fragments"),
    [
        ("garbage.safetensors", None, ["not a safetensors file or it is corrupt"]),
        ("nan.safetensors", None, ["hold NaN or infinite values", "use another checkpoint"]),
        ("unet.safetensors", np.full((48, 48), np.nan, np.float32), ["NaN or infinite values"]),
    ],
)
def test_segment_fails_with_one_notification_and_no_layer(
    make_napari_viewer, ws, notices, checkpoint, image, fragments
):
    (ws / "garbage.safetensors").write_bytes((ws / "garbage.png").read_bytes())
    viewer = make_napari_viewer()
    data = np.zeros((48, 48), np.uint8) if image is None else image
    layer = viewer.add_image(data, name="scan", rgb=False)
    widget = _segment_widget(viewer, ws, checkpoint)
    widget.image.value = layer
    before = tree(ws)
    widget.segment()
    line = _only(notices, "Segmentation failed: ", *fragments)
    assert widget.status.value == line and widget.segment_button.enabled
    assert _proposals(viewer) == []
    assert tree(ws) == before


def test_a_failed_segment_leaves_the_shown_proposal_as_it_was(make_napari_viewer, ws, notices):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((48, 48), np.uint8), name="scan")
    widget = _segment_widget(viewer, ws)
    widget.image.value = layer
    widget.segment()
    assert notices == [] and _proposals(viewer) == [f"scan{PROPOSAL_SUFFIX}"]
    labels = viewer.layers[f"scan{PROPOSAL_SUFFIX}"]
    shown = np.array(labels.data)
    widget.checkpoint.value = ws / "nan.safetensors"
    widget.segment()
    _only(notices, "hold NaN or infinite values", "diverged")
    assert np.array_equal(labels.data, shown)


def test_a_20000_px_image_is_refused_before_anything_is_allocated(make_napari_viewer, ws, notices):
    import tracemalloc

    viewer = make_napari_viewer()
    huge = np.broadcast_to(np.zeros((1, 1), np.uint8), (BIG_SIDE, BIG_SIDE))  # no memory
    layer = viewer.add_image(huge, name="huge", contrast_limits=(0, 255), multiscale=False)
    widget = _segment_widget(viewer, ws)
    widget.image.value = layer
    tracemalloc.start()
    try:
        widget.segment()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _only(notices, "400000000 pixels (20000 x 20000)", "crop or downscale")
    assert peak < 50 * 2**20, peak
    assert _proposals(viewer) == []


def test_no_checkpoint_chosen(make_napari_viewer, ws, notices):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((48, 48), np.uint8), name="scan")
    widget = _segment_widget(viewer, ws)
    widget.checkpoint.value = ""
    widget.image.value = layer
    widget.segment()
    _only(notices, "choose a checkpoint file")
    viewer.layers.remove(layer)
    widget.segment()
    assert notices[-1] == "Open an image first."
    assert _proposals(viewer) == []


def test_a_proposal_that_does_not_fit_its_image_changes_no_layer(make_napari_viewer, ws, notices):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((48, 48), np.uint8), name="scan")
    widget = _segment_widget(viewer, ws)
    widget.image.value = layer
    widget.plane_provider = lambda lay, step: (np.asarray(lay.data)[:40], ())  # a bad hook
    widget.segment()
    _only(notices, "the proposal has shape (40, 48)", "(48, 48)", "nothing was changed")
    assert _proposals(viewer) == []


def test_an_unexpected_error_is_one_line_and_its_traceback_goes_to_the_terminal(
    make_napari_viewer, ws, notices, monkeypatch, capsys
):
    from src_models.inference import Predictor

    def bug(self, *args, **kwargs):
        raise RuntimeError("an internal bug\nsecond line")

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((48, 48), np.uint8), name="scan")
    widget = _segment_widget(viewer, ws)
    widget.image.value = layer
    monkeypatch.setattr(Predictor, "predict", bug)
    widget.segment()
    line = _only(
        notices, "unexpected RuntimeError: an internal bug", "traceback is in the terminal"
    )
    assert "second line" not in line
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    assert _proposals(viewer) == []


# ------------------------------------------------------------------------------- annotation loop


def _annotation_widget(viewer, ws):
    _, widget = viewer.window.add_plugin_dock_widget("napari-lvit", "Annotation loop")
    widget.run_synchronously = True
    widget.seg.model.value = FROM_FILE
    widget.seg.checkpoint.value = ws / "unet.safetensors"
    widget.seg.device.value = "cpu"
    return widget


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing", ["Cannot open", "neither a project nor a folder of images"]),
        ("empty", ["Cannot open", "no image files"]),
        ("corrupt", ["Cannot open", "corrupt or not an SQLite file"]),
        ("file", ["Cannot open", "neither a project nor a folder"]),
    ],
)
def test_opening_a_bad_folder(make_napari_viewer, ws, notices, case, fragments):
    target = {"missing": ws / "nowhere", "empty": ws / "empty", "file": ws / "scan.png"}.get(
        case, ws / "broken_project"
    )
    if case == "empty":
        target.mkdir()
    elif case == "corrupt":
        target.mkdir()
        (target / "project.sqlite").write_bytes(b"not a database" * 100)
    viewer = make_napari_viewer()
    widget = _annotation_widget(viewer, ws)
    before = tree(ws)
    assert not widget.open(target)
    _only(notices, *fragments)
    assert widget.project is None and len(viewer.layers) == 0
    assert tree(ws) == before  # no .napari-lvit left in the empty folder


def test_a_commit_on_a_full_disk_saves_nothing_and_keeps_the_labels(
    make_napari_viewer, ws, notices, monkeypatch
):
    viewer = make_napari_viewer()
    widget = _annotation_widget(viewer, ws)
    assert widget.open(ws / "data" / "img")
    widget.labels_layer.data[10:20, 10:20] = 1
    painted = np.array(widget.labels_layer.data)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(widget.project, "commit", full)
    before = tree(ws)
    widget.commit()
    _only(notices, "Commit failed (nothing was saved)", "No space left", "free some disk space")
    assert np.array_equal(widget.labels_layer.data, painted)
    assert tree(ws) == before


def test_an_image_gone_from_disk_is_a_notification(make_napari_viewer, ws, notices):
    viewer = make_napari_viewer()
    widget = _annotation_widget(viewer, ws)
    assert widget.open(ws / "data" / "img")
    (ws / "data" / "img" / "synth_0002.png").unlink()
    before = tree(ws)
    widget.show_image(2)
    _only(notices, "Cannot show synth_0002", "does not exist")
    assert widget.current.name == "synth_0000"  # still on the image shown before
    assert tree(ws) == before


def test_a_volume_that_fails_half_way_gets_its_labels_back(
    make_napari_viewer, ws, notices, monkeypatch
):
    import tifffile

    from src_models.inference import Predictor

    folder = ws / "volumes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    volume = (rng.random((5, 32, 32)) * 255).astype(np.uint8)
    tifffile.imwrite(folder / "ct.tif", volume, photometric="minisblack")
    viewer = make_napari_viewer()
    widget = _annotation_widget(viewer, ws)
    assert widget.open(folder)
    widget.volume_check.setChecked(True)
    widget.labels_layer.data[:, 5:9, 5:9] = 1
    drawn = np.array(widget.labels_layer.data)
    calls = []
    real = Predictor._run

    def fails_at_batch_2(self, batch, text, fingerprint=None):
        calls.append(len(batch))
        if len(calls) == 2:
            raise MemoryError("cannot allocate")
        return real(self, batch, text, fingerprint)

    monkeypatch.setattr(Predictor, "_run", fails_at_batch_2)
    widget.seg.volume_batch_size = 2
    widget.segment()  # refused once: the labels have edits
    widget.segment()
    _only(notices, "Segmentation failed: out of memory")
    assert calls == [2, 2]  # slices 0-1 done, 2-3 failed: nothing was written
    assert np.array_equal(widget.labels_layer.data, drawn)
    assert widget.seg.segment_button.enabled


def test_a_read_only_project_opens_read_only_and_a_commit_saves_nothing(
    make_napari_viewer, ws, notices, monkeypatch
):
    import os

    from napari_lvit._annotate import widget as widget_module
    from src_models.project import Project

    with Project.create(ws / "project") as project:
        project.add_folder(ws / "data" / "img")
    real = os.access  # a read-only mount (chmod binds no root, who runs these tests)
    locked = os.path.realpath(ws / "project")
    monkeypatch.setattr(
        os,
        "access",
        lambda p, mode, *a, **k: (
            False if os.path.realpath(p) == locked and mode & os.W_OK else real(p, mode, *a, **k)
        ),
    )
    infos: list[str] = []
    monkeypatch.setattr(widget_module, "show_info", infos.append)
    viewer = make_napari_viewer()
    widget = _annotation_widget(viewer, ws)
    before = tree(ws)
    assert widget.open(ws / "project")
    assert notices == [] and len(infos) == 1 and "is open read-only" in infos[0]
    assert "browse and segment" in infos[0]
    widget.labels_layer.data[10:20, 10:20] = 1
    painted = np.array(widget.labels_layer.data)
    widget.commit()
    _only(notices, "Commit failed (nothing was saved)", "is open read-only", "copy the project")
    assert np.array_equal(widget.labels_layer.data, painted)
    assert tree(ws) == before

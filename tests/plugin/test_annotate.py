"""The annotation loop in a real napari viewer (needs a display: run under xvfb-run)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_lvit._annotate import PROJECT_MODEL, SHORTCUTS, AnnotationWidget
from src_models.data.synthetic import write_dataset
from src_models.project import Project

PLUGIN = "napari-lvit"
WIDGET = "Annotation loop"
TEXTS = [
    "Unilateral pulmonary infection, one infected area, lower left lung.",
    "Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
]

pytestmark = [
    pytest.mark.filterwarnings("ignore:model 'lvit_tiny' is untrained"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def _dock(viewer) -> AnnotationWidget:
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert isinstance(widget, AnnotationWidget)
    widget.seg.model.value = "lvit_tiny"
    widget.seg.device.value = "cpu"
    widget.retrain_options = {"num_threads": 1}  # lvit_tiny trains at its own 64 px
    return widget


def _press(viewer, key: str) -> None:
    """Run what a key bound on the viewer does (as napari does on a key press)."""
    from napari.utils.key_bindings import coerce_keybinding

    viewer.keymap[coerce_keybinding(key)](viewer)


def test_the_loop_open_segment_correct_commit_retrain_next(make_napari_viewer, qtbot, tmp_path):
    images = write_dataset(tmp_path / "data", kind="qata", n=4, size=64) / "img"
    viewer = make_napari_viewer(show=True)
    widget = _dock(viewer)
    widget.run_synchronously = True  # proposals on the calling thread; training stays async
    widget.epochs_spin.setValue(2)
    for key in SHORTCUTS:
        assert key in widget.toolTip()

    assert widget.open(images)  # a plain folder: the project goes to <folder>/.napari-lvit
    project_dir = images / ".napari-lvit"
    assert widget.project.folder == project_dir.resolve()
    assert [r.status for r in widget.records] == ["unlabeled"] * 4
    assert widget.current.name == "synth_0000" and widget.image_layer.data.shape == (64, 64)

    first_probs = []
    for k, text in enumerate(TEXTS):
        widget.seg.text.value = text
        _press(viewer, "Shift-S")  # Segment
        labels = widget.labels_layer
        first_probs.append(widget.seg.last_prediction.prob.copy())
        assert widget.project.image(widget.current).status == "proposed"
        # the user clears the proposal and paints the lesion with napari's brush
        _press(viewer, "Shift-E")  # Clear
        assert not labels.data.any()
        labels.brush_size = 9
        labels.paint((20 + 10 * k, 30), 1)
        painted = np.asarray(labels.data) != 0
        assert widget.labels_edited()
        _press(viewer, "Shift-C")  # Commit
        rec = widget.current
        (commit,) = widget.project.history(rec)
        np.testing.assert_array_equal(commit.load_mask(), painted)
        assert commit.proposal_path is not None and commit.text == text
        assert commit.model_version == "lvit_tiny (untrained)"
        assert widget.project.text_history(rec)[-1].text == text
        assert widget.history.itemData(0) == text
        _press(viewer, "Shift-N")  # Next
    assert widget.current.name == "synth_0002"
    assert [r.status for r in widget.records[:2]] == ["corrected", "corrected"]

    # Retrain: a separate process; the viewer keeps running while it trains
    widget.retrain()
    assert widget.retraining and widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.retraining, timeout=90_000)
    with Project.open(project_dir) as p:
        current = p.current_checkpoint
        assert [r.status for r in p.rounds()] == ["done"]
    assert current is not None and widget.loaded_checkpoint == current
    assert widget.seg.model.value == PROJECT_MODEL
    types = [e["type"] for e in widget.retrain_events]
    assert types[0] == "RetrainRoundStart" and types[-1] == "RetrainDone"
    assert len(widget.plot.loss) == 2 and widget.plot.dice[-1] is not None
    assert widget.retrain_bar.value() == widget.retrain_bar.maximum()

    # the next proposal comes from the new model and differs from the first
    widget.previous_image()
    widget.previous_image()
    assert widget.current.name == "synth_0000"
    assert not widget.labels_edited()  # it shows its committed label
    widget.seg.segment()
    assert widget.project.latest_proposal(widget.current).model_version == current.stem
    second = widget.seg.last_prediction.prob
    assert np.abs(second - first_probs[0]).max() > 1e-3

    # a training process that dies (SIGKILL) is a message; every commit stays intact
    widget.epochs_spin.setValue(500)
    widget.retrain()
    assert widget.retrain_events == []  # a new run starts a new log
    qtbot.waitUntil(
        lambda: any(e["type"] == "BatchEnd" for e in widget.retrain_events), timeout=60_000
    )
    os.kill(widget.runner.process.processId(), signal.SIGKILL)
    qtbot.waitUntil(lambda: not widget.retraining, timeout=30_000)
    assert "stopped unexpectedly" in widget.seg.status.value
    assert "commits are safe" in widget.retrain_label.text()
    with Project.open(project_dir) as p:
        assert p.check(deep=True) == [] and p.integrity_check() == ["ok"]
        assert [len(p.history(n)) for n in ("synth_0000", "synth_0001")] == [1, 1]
        assert p.current_checkpoint == current
        assert [r.status for r in p.rounds()] == ["done", "running"]
    widget.open(project_dir)  # reopening records the killed round as failed
    assert [r.status for r in widget.project.rounds()] == ["done", "failed"]
    assert widget.seg.model.value == PROJECT_MODEL

    # "Suggest next": the unlabelled image the model is least sure about
    widget.project.set_text("synth_0002", TEXTS[0])
    widget.project.set_text("synth_0003", TEXTS[1])
    widget.suggest(go=True)
    top = widget.session.suggested
    assert top.name in {"synth_0002", "synth_0003"} and 0.0 < top.score <= 1.0
    assert widget.current.name == top.name
    assert f"{top.score:.3f}" in widget.suggest_label.text()
    other = next(s for s in widget.session.scores.values() if s.name != top.name)  # only unlabelled
    assert other.name in {"synth_0002", "synth_0003"} and other.score <= top.score


def test_volume_slices_no_lesion_drafts_edits_and_thread_retrain(
    make_napari_viewer, qtbot, tmp_path
):
    folder = tmp_path / "scans"
    folder.mkdir()
    rng = np.random.default_rng(0)
    volume = (rng.random((5, 48, 48)) * 1000).astype(np.uint16)
    tifffile.imwrite(folder / "ct.tif", volume, photometric="minisblack")
    write_dataset(tmp_path / "d", kind="qata", n=1, size=64)
    (tmp_path / "d" / "img" / "synth_0000.png").rename(folder / "xray.png")
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    widget.run_synchronously = True
    assert widget.open(folder)
    assert [r.name for r in widget.records] == ["ct", "xray"]
    vol = widget.current
    assert vol.is_volume and widget.labels_layer.data.shape == (5, 48, 48)

    # whole volume, slice by slice
    widget.seg.text.value = "lesion in the lower left lung"
    widget.volume_check.setChecked(True)
    widget.seg.threshold.value = 0.01
    widget.seg.segment()
    assert widget.labels_layer.data.any(axis=(1, 2)).all()
    assert widget.project.latest_proposal(vol).slice is None
    # the shown slice only: commit slice 2 after an edit
    widget.volume_check.setChecked(False)
    viewer.dims.set_current_step(0, 2)
    widget.labels_layer.data[2] = 0
    widget.labels_layer.data[2, 5:9, 5:9] = 1
    widget.commit()
    (c,) = widget.project.history(vol)
    assert c.slice == 2 and c.load_mask().sum() == 16
    viewer.dims.set_current_step(0, 0)
    widget.no_lesion()
    assert [c.kind for c in widget.project.history(vol)] == ["correction", "no_lesion"]
    assert widget.project.current_mask(vol, slice=0).sum() == 0

    # Segment over uncommitted edits needs a second press; Next keeps the edits as a draft
    widget.labels_layer.data[1, 0:3, 0:3] = 0
    before = np.asarray(widget.labels_layer.data).copy()
    widget.seg.segment()
    assert "uncommitted edits" in widget.seg.status.value
    np.testing.assert_array_equal(widget.labels_layer.data, before)
    widget.next_image()
    assert widget.current.name == "xray" and vol.id in widget.session.drafts
    widget.previous_image()
    np.testing.assert_array_equal(widget.labels_layer.data, before)
    # Clear empties the shown slice, saves nothing
    viewer.dims.set_current_step(0, 1)
    n_commits = len(widget.project.history(vol))
    widget.clear()
    assert not widget.labels_layer.data[1].any()
    assert len(widget.project.history(vol)) == n_commits

    # errors are messages, never tracebacks
    widget.seg.model.value = PROJECT_MODEL
    widget.seg.segment()  # the edits guard asks first ...
    widget.seg.segment()  # ... then the missing model is reported
    assert "no trained model" in widget.seg.status.value
    assert not widget.open(tmp_path / "missing")
    assert "Cannot open" in widget.seg.status.value

    # retraining as a napari thread worker (the alternative to the separate process)
    widget.retrain_mode = "thread"
    widget.epochs_spin.setValue(1)
    widget.retrain()
    qtbot.waitUntil(lambda: not widget.retraining, timeout=60_000)
    assert widget.retrain_events[-1] == {
        "type": "RetrainDone",
        "status": "done",
        "rounds_done": 1,
        "checkpoint": str(widget.project.current_checkpoint),
    }
    assert widget.loaded_checkpoint == widget.project.current_checkpoint


def test_annotate_command_opens_a_lvit_folder(tmp_path):
    from napari_lvit._annotate import run_annotate

    data = write_dataset(tmp_path / "split", kind="qata", n=2, size=64)
    viewer, widget = run_annotate(data, project=tmp_path / "proj", model="lvit_tiny", block=False)
    try:
        assert widget.project.folder == (tmp_path / "proj").resolve()
        assert [r.status for r in widget.records] == ["corrected", "corrected"]  # masks imported
        assert widget.seg.text.value  # the imported description
        assert Path(widget.project.folder / "project.sqlite").is_file()
    finally:
        widget.close_project()
        viewer.close()


def test_clcc_box_reaches_the_retrain_command(make_napari_viewer, tmp_path):
    from napari_lvit._annotate.runner import retrain_command
    from src_models.cli import build_parser
    from src_models.project.retrain import RetrainConfig

    images = write_dataset(tmp_path / "data", kind="qata", n=2, size=64) / "img"
    widget = _dock(make_napari_viewer())
    assert widget.open(images)
    assert not widget.retrain_config().clcc
    widget.clcc_check.setChecked(True)
    # what the training process gets: its command line, and the config as JSON on its stdin
    args = build_parser().parse_args(retrain_command(widget.project.folder)[3:])
    config = RetrainConfig.from_json(widget.retrain_config().to_json())
    assert config.clcc and args.project == widget.project.folder


def test_a_round_below_the_current_model_is_reported_and_not_loaded(make_napari_viewer, tmp_path):
    images = write_dataset(tmp_path / "data", kind="qata", n=2, size=64) / "img"
    widget = _dock(make_napari_viewer())
    assert widget.open(images)
    before = widget.loaded_checkpoint
    widget.runner.handle_event(
        {
            "type": "RetrainRoundEnd",
            "round_id": 3,
            "status": "done",
            "checkpoint": str(tmp_path / "round-0003.safetensors"),
            "metrics": {"best_dice": 0.41, "start_dice": 0.52},
            "current": False,
        }
    )
    assert widget.retrain_label.text() == (
        "Round 3 done, val Dice 0.410: below the current model's 0.520, so the current model stays."
    )
    assert widget.loaded_checkpoint == before

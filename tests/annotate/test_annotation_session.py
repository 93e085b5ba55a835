"""The annotation loop's state and actions without a display (no Qt, no napari viewer)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_lvit._annotate.events import JsonLines, Tail, failure, new_checkpoint, round_end_text
from napari_lvit._annotate.session import AnnotationSession, build_retrain_config, model_version
from napari_lvit._annotate.shortcuts import SHORTCUTS, bind_shortcuts
from src_models.data.synthetic import write_dataset
from src_models.project.suggest import Score

TEXT = "Unilateral pulmonary infection, one infected area, lower left lung."


@pytest.fixture
def session(tmp_path):
    images = write_dataset(tmp_path / "data", kind="qata", n=3, size=64) / "img"
    s = AnnotationSession()
    assert s.open(images) is None
    yield s
    s.close()


def _enter(s: AnnotationSession, row: int) -> np.ndarray:
    """What the widget does to show image ``row``: its labels, with the baseline set."""
    rec = s.fetch(row)
    committed = s.enter(row, rec)
    labels = np.zeros(rec.shape, np.uint8) if committed is None else committed.astype(np.uint8)
    s.set_baseline(labels, "empty" if committed is None else "commit")
    return labels


def test_the_state_modules_import_without_qt_or_napari():
    code = (
        "import sys, napari_lvit._annotate, napari_lvit._annotate.session, "
        "napari_lvit._annotate.events, napari_lvit._annotate.shortcuts; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'magicgui', 'matplotlib'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_open_commit_no_lesion_and_the_list(session):
    s = session
    assert s.project is not None and "3 images, 0 labelled" in s.summary()
    assert [r.status for r in s.records] == ["unlabeled"] * 3 and s.first_row() == 0
    labels = _enter(s, 0)
    assert s.state_text(0) == "synth_0000 (1/3): unlabeled"
    assert not s.is_edited(labels)
    labels[10:20, 10:20] = 1  # the user paints
    assert s.is_edited(labels)
    commit = s.commit(labels, None, TEXT, model_version("lvit_tiny"))
    assert commit.version == 1 and commit.model_version == "lvit_tiny (untrained)"
    assert commit.proposal_path is None  # the labels did not come from a proposal
    assert commit.load_mask().sum() == 100
    assert s.current.status == "corrected" and s.records[0].status == "corrected"
    assert not s.is_edited(labels)  # committed: the new baseline
    assert s.texts() == [TEXT]
    assert s.commits_since_retrain == 1 and s.retrain_due(1) and not s.retrain_due(2)
    assert s.item_text(s.records[0]) == "● synth_0000"

    assert s.next_row() == 1
    labels = _enter(s, 1)
    labels[:5, :5] = 1
    s.no_lesion(labels, None, None, "default")
    assert not labels.any()  # emptied in place
    assert s.records[1].status == "no_lesion" and s.project.current_mask(s.current).sum() == 0
    assert s.commits_since_retrain == 2 and s.first_row() == 2
    assert "2 labelled" in s.summary()
    assert s.can_retrain() is None


def test_a_commit_keeps_the_proposal_it_replaced(session):
    s = session
    labels = _enter(s, 0)
    mask = np.zeros((64, 64), bool)
    mask[30:40, 30:40] = True
    labels[mask] = 1  # the proposal is written to the labels
    assert s.record_proposal(labels, mask, TEXT, (), "round-0001") is None
    assert s.current.status == "proposed" and s.baseline_kind == "proposal"
    assert s.project.latest_proposal(s.current).model_version == "round-0001"
    labels[30:35, 30:40] = 0  # the user erases half of it
    commit = s.commit(labels, None, TEXT, "round-0001")
    np.testing.assert_array_equal(commit.load_proposal(), mask)
    assert commit.load_mask().sum() == 50


def test_segment_over_edits_asks_twice_and_drafts_come_back(session):
    s = session
    labels = _enter(s, 0)
    assert s.may_replace(labels)  # nothing edited: go ahead
    labels[0, 0] = 1
    assert not s.may_replace(labels)  # first ask: refused
    assert s.may_replace(labels)  # second ask: replace
    assert s.stash_draft(labels)  # leaving the image keeps the edits
    assert s.item_text(s.records[0]).endswith("✎ unsaved edits")
    _enter(s, 1)
    assert s.take_draft(s.records[0].id, (32, 32)) is None  # another shape: not restored
    s.drafts[s.records[0].id] = labels.copy()
    np.testing.assert_array_equal(s.take_draft(s.records[0].id, (64, 64)), labels)
    assert s.records[0].id not in s.drafts
    assert not s.stash_draft(np.zeros((64, 64), np.uint8))  # unedited: nothing kept
    assert s.previous_row() == 0 and s.next_row() == 2


def test_a_volume_commits_the_shown_slice_or_the_whole_volume(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    volume = (np.random.default_rng(0).random((4, 32, 32)) * 1000).astype(np.uint16)
    tifffile.imwrite(folder / "ct.tif", volume, photometric="minisblack")
    s = AnnotationSession()
    s.open(folder)
    try:
        labels = _enter(s, 0)
        assert labels.shape == (4, 32, 32)
        assert s.target_slice(labels, whole_volume=False, z=9) == 3  # clipped
        assert s.target_slice(labels, whole_volume=True, z=1) is None
        labels[2, :4, :4] = 1
        commit = s.commit(labels, 2, None, "default")
        assert commit.slice == 2 and commit.load_mask().shape == (32, 32)
        labels[1] = 1
        s.clear(labels, 1)
        assert not labels[1].any() and labels[2].any()  # only the shown slice
        s.no_lesion(labels, 0, None, "default")
        assert [c.kind for c in s.project.history(s.current)] == ["correction", "no_lesion"]
    finally:
        s.close()


def test_suggestions_rank_by_uncertainty(session):
    s = session
    assert [r.name for r in s.to_score()] == ["synth_0000", "synth_0001", "synth_0002"]
    scores = [
        Score(s.records[0].id, "synth_0000", 0.2),
        Score(s.records[1].id, "synth_0001", 0.7),
        Score(s.records[2].id, "synth_0002", None, "no text"),
    ]
    for score in scores:
        s.add_score(score)
    ranking = s.rank(scores)
    assert s.suggested is ranking.top and ranking.top.name == "synth_0001"
    assert ranking.text().startswith("Next suggested: synth_0001 (uncertainty 0.700")
    assert "2 images ranked" in ranking.text()
    assert s.item_text(s.records[1]).endswith("H=0.700")
    none = s.rank([scores[2]])
    assert none.top is None and s.suggested is None
    assert none.text() == "No image could be scored (no text)"


def test_one_retrain_config_from_the_panel_and_the_overrides():
    from src_models.project.retrain import RetrainConfig

    config = build_retrain_config(
        rounds=2,
        epochs=3,
        device="cpu",
        model="lvit_tiny",
        clcc=False,
        overrides={"clcc": True, "img_size": 64, "num_threads": 1},
    )
    assert (config.rounds, config.epochs, config.device, config.model) == (2, 3, "cpu", "lvit_tiny")
    assert config.clcc and config.img_size == 64 and config.num_threads == 1  # overrides win
    assert RetrainConfig.from_json(config.to_json()) == config  # what the process reads
    auto = build_retrain_config(
        rounds=1, epochs=1, device="auto", model="auto", clcc=True, overrides={}
    )
    assert auto.clcc and auto.num_threads >= 1
    with pytest.raises(ValueError, match="multiple of 16"):
        build_retrain_config(
            rounds=1, epochs=1, device="cpu", model="auto", clcc=False, overrides={"img_size": 50}
        )


def test_training_events_from_json_lines():
    lines = JsonLines()
    first = {"type": "EpochEnd", "train_loss": 0.5}
    data = (json.dumps(first) + "\nprogress 10%\n" + json.dumps({"type": "Batch"})).encode()
    assert lines.feed(data[:10]) == []  # half a line: nothing yet
    assert lines.feed(data[10:]) == [first]  # the plain-text line is skipped
    assert lines.feed(b"\n") == [{"type": "Batch"}]
    tail = Tail(limit=12)
    tail.add("one\ntwo\nthree\nfour\n")
    assert tail.last_lines(2) == "three / four" and len(tail.text) == 12

    below = {
        "status": "done",
        "round_id": 3,
        "checkpoint": "r3.safetensors",
        "metrics": {"best_dice": 0.41, "start_dice": 0.52},
        "current": False,
    }
    assert round_end_text(below).endswith(
        "below the current model's 0.520, so the current model stays."
    )
    assert new_checkpoint(below) is None
    assert new_checkpoint({**below, "current": True}) == "r3.safetensors"
    assert (
        failure(None, True, "Killed", None) == "the training process stopped unexpectedly: Killed"
    )
    assert failure(2, False, "", None) == "exit code 2"
    assert failure(0, False, "", None) is None
    assert failure(1, False, "", {"type": "RetrainDone", "status": "done"}) is None


def test_shortcuts_call_the_widget_while_it_lives():
    class Viewer:
        keymap: dict = {}

        def bind_key(self, key, action, overwrite=False):
            self.keymap[key] = action

    class Widget:
        calls: list = []

        def __getattr__(self, name):
            return lambda: self.calls.append(name)

    viewer, widget = Viewer(), Widget()
    bind_shortcuts(viewer, widget)
    assert set(viewer.keymap) == set(SHORTCUTS)
    viewer.keymap["Shift-C"](viewer)
    viewer.keymap["Shift-U"](viewer)
    assert Widget.calls == ["commit", "go_to_suggested"]
    del widget
    viewer.keymap["Shift-N"](viewer)  # the widget is gone: nothing happens
    assert Widget.calls == ["commit", "go_to_suggested"]


def _bank(s: AnnotationSession, maps: dict) -> None:
    """Two EPI rounds of ``maps`` (name -> round-2 map; round 1 is a fainter copy)."""
    from src_models.engine.semi.bank import PseudoLabelBank
    from src_models.project.pseudo_review import bank_folder

    bank = PseudoLabelBank(bank_folder(s.project), fsync=False)
    bank.update({n: np.clip(m * 0.9, 0, 1) for n, m in maps.items()})
    bank.update(maps)
    assert s.reload_pseudo() is None


def test_pseudo_labels_marked_accepted_edited_and_reviewed_in_order(session):
    s = session
    assert s.pseudo.rounds == 0 and s.pseudo.next_to_review() is None
    sure = np.full((16, 16), 0.02, np.float32)
    sure[4:10, 4:10] = 0.99
    unsure = np.full((16, 16), 0.3, np.float32)
    unsure[4:10, 4:10] = 0.7
    _bank(s, {"synth_0000": unsure, "synth_0001": sure, "synth_0002": sure})
    assert s.item_text(s.records[1]).endswith("◇ 100%")
    assert s.item_text(s.records[0]).endswith("◇ 0%")
    assert s.pseudo.next_to_review().name == "synth_0001"  # sure and still: first

    labels = _enter(s, 1)
    s.pseudo.seen(s.current.id)  # (the widget does this when it shows an image)
    assert s.item_text(s.records[1]).endswith("◇✓ 100%")
    assert s.pseudo.next_to_review().name == "synth_0002"
    assert "2 rounds, 100% confident" in s.pseudo.text(s.current)
    prob, cut = s.pseudo.maps(s.current)
    assert prob.shape == cut.shape == (64, 64) and cut[20:36, 20:36].all()
    (commit,) = s.accept_pseudo(labels, None, TEXT)
    assert commit.kind == "accepted_pseudo" and commit.text == TEXT
    np.testing.assert_array_equal(labels != 0, cut)  # shown as the label now
    assert not s.is_edited(labels) and s.commits_since_retrain == 1
    assert s.current.status == "corrected" and not s.pseudo.of(s.current.id)
    assert s.item_text(s.records[1]) == "● synth_0001"
    with pytest.raises(ValueError, match="no pseudo label"):
        s.accept_pseudo(labels, None, TEXT)

    # Edit, then Commit unchanged: accepted; Edit and correct: a correction that replaced it
    labels = _enter(s, 2)
    assert s.edit_pseudo(labels, None) == 1 and s.baseline_kind == "pseudo"
    assert s.commit(labels, None, None, "round-0001").kind == "accepted_pseudo"
    labels = _enter(s, 0)
    s.edit_pseudo(labels, None)
    pseudo_cut = labels != 0
    labels[:2] = 1  # the user fixes it
    commit = s.commit(labels, None, None, "round-0001")
    assert commit.kind == "correction"
    np.testing.assert_array_equal(commit.load_proposal(), pseudo_cut)
    kinds = {it.image.name: it.kind for it in s.project.labeled()}
    assert kinds == {"synth_0000": "correction", "synth_0001": "accepted_pseudo"} | {
        "synth_0002": "accepted_pseudo"
    }
    assert s.pseudo.next_to_review() is None

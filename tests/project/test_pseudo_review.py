"""EPI's pseudo labels of a project for people: read from the bank, ranked, accepted as labels
of their own commit kind, exported, a bad round undone; and ``napari-lvit pseudo``."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from retrain_cases import make_project  # (tests/ is on sys.path)

from src_models.cli import main as cli_main
from src_models.data.io import read_mask
from src_models.engine.semi.bank import PseudoLabelBank
from src_models.project import Project
from src_models.project.pseudo_review import (
    PseudoLabelError,
    PseudoReview,
    accept,
    accept_above,
    bank_folder,
    confidence,
    cut_dice,
    export_pseudo_labels,
    review_order,
    sample_key,
    undo_last_round,
)
from src_models.project.retrain import RetrainConfig, RetrainRoundStart, retrain
from src_models.project.retrain_files import ProjectLock
from src_models.project.retrain_round import plan_round

TINY = {"model": "lvit_tiny", "img_size": None, "device": "cpu", "num_threads": 1}


def _sure(size: int = 16, lo: int = 4, hi: int = 10) -> np.ndarray:
    """A confident map: 0.98 on a square, 0.02 elsewhere."""
    p = np.full((size, size), 0.02, np.float32)
    p[lo:hi, lo:hi] = 0.98
    return p


@pytest.fixture
def project(tmp_path):
    """make_project's 5 images (synth_0003 and synth_0004 unlabelled) with a hand-made bank of
    two rounds at 16 px (the model size): synth_0003 sure and still, synth_0004 unsure."""
    folder = make_project(tmp_path)
    with Project.open(folder) as p:
        bank = PseudoLabelBank(bank_folder(p), fsync=False)
        unsure = np.full((16, 16), 0.45, np.float32)
        bank.update({"synth_0003": _sure(), "synth_0004": unsure, "synth_0000": _sure()})
        bank.update({"synth_0003": _sure(), "synth_0004": np.clip(unsure + 0.2, 0, 1)})
        yield p


def test_the_rule_confidence_and_the_dice_of_cuts():
    p = np.array([[0.05, 0.95], [0.5, 0.89]], np.float32)
    assert confidence(p) == 0.5  # |p - 0.5| > 0.4: 0.05 and 0.95 only
    assert confidence(p, margin=0.3) == 0.75
    assert cut_dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert cut_dice(np.eye(2), np.ones((2, 2))) == pytest.approx(2 * 2 / 6)


def test_summaries_rank_label_and_cut_at_the_image_size(project):
    review = PseudoReview(project)
    assert review.threshold == 0.5 and review.rounds == 2  # no model yet: 0.5
    got = {s.name: s for s in review.summaries()}
    assert set(got) == {"synth_0003", "synth_0004"}  # synth_0000 is labelled: not listed
    sure, unsure = got["synth_0003"], got["synth_0004"]
    assert (sure.rounds, sure.confidence, sure.dice_previous) == (2, 1.0, 1.0)
    assert sure.change == pytest.approx(0.0, abs=1e-3)
    assert unsure.confidence == 0.0 and unsure.change == pytest.approx(0.1, abs=2e-3)
    assert unsure.dice_previous == 0.0  # all background, then all lesion
    assert "2 rounds, 100% confident, moved 0.000" in sure.text()
    assert [s.name for s in review_order(got.values())] == ["synth_0003", "synth_0004"]
    # reviewed (seen at round 2): left out until the label moves again
    assert [s.name for s in review_order(got.values(), {"synth_0003": 2})] == ["synth_0004"]

    label = review.label("synth_0003")
    assert label.prob.shape == (16, 16) and label.previous.shape == (16, 16)
    mask = label.mask()
    assert mask.shape == (64, 64) and mask.dtype == bool
    assert mask[18:38, 18:38].all() and not mask[:14].any()  # the square, scaled 4x
    assert review.label("synth_0000") is None  # labelled


def test_accept_commits_its_own_kind_that_the_next_round_trains_on(project):
    review = PseudoReview(project)
    label = review.label("synth_0003")
    commit = accept(project, label)
    assert commit.kind == "accepted_pseudo" and commit.model_version.startswith("EPI pseudo")
    np.testing.assert_array_equal(commit.load_mask(), label.mask())
    assert project.image("synth_0003").status == "corrected"
    assert commit.text == project.image("synth_0003").text  # the image's description
    kinds = {it.image.name: it.kind for it in project.labeled()}
    assert kinds["synth_0003"] == "accepted_pseudo"  # a labelled training item now
    assert "synth_0003" not in {it.image.name for it in project.unlabeled()}
    assert [s.name for s in PseudoReview(project).summaries()] == ["synth_0004"]
    with pytest.raises(PseudoLabelError, match="has a label already"):
        accept(project, label)  # never over a label
    # a round trains on it but never validates on it (it would score the model's own output)
    cfg = RetrainConfig(**TINY, min_val=2, val_fraction=0.5, semi="off")
    plan = plan_round(project, cfg, 1, project.folder / "w", project.labeled(), [])
    assert "synth_0003" in {it.image.name for it in plan.samples.train}
    assert plan.samples.val and "synth_0003" not in {it.image.name for it in plan.samples.val}


def test_accept_above_export_and_undo(project, tmp_path):
    table = export_pseudo_labels(PseudoReview(project), tmp_path / "out")
    rows = list(csv.DictReader(table.read_text(encoding="utf-8").splitlines()))
    assert [r["image"] for r in rows] == ["synth_0003", "synth_0004"]
    assert rows[0]["rounds"] == "2" and float(rows[0]["confidence"]) == 1.0
    cut = read_mask(tmp_path / "out" / rows[0]["file"])
    np.testing.assert_array_equal(cut, PseudoReview(project).label("synth_0003").mask())
    assert (tmp_path / "out" / "synth_0003_prob.tif").is_file()
    export_pseudo_labels(PseudoReview(project), tmp_path / "out")  # an earlier export: again
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "synth_0003.png").write_bytes(b"my file")
    with pytest.raises(PseudoLabelError, match="holds other files"):
        export_pseudo_labels(PseudoReview(project), tmp_path / "mine")
    assert (tmp_path / "mine" / "synth_0003.png").read_bytes() == b"my file"

    lock = ProjectLock(project)  # a retraining holds the project
    assert lock.acquire()
    with pytest.raises(PseudoLabelError, match="retraining is running"):
        undo_last_round(project)
    lock.release()
    before = PseudoReview(project).label("synth_0004").previous
    assert sorted(undo_last_round(project)) == ["synth_0003", "synth_0004"]
    after = PseudoReview(project).label("synth_0004")
    np.testing.assert_array_equal(after.prob, before)
    assert after.summary.rounds == 1 and after.summary.change is None

    with pytest.raises(PseudoLabelError):
        accept_above(project, 1.5)
    (commit,) = accept_above(project, 0.9)
    assert project.image(commit.image_id).name == "synth_0003"
    assert len(undo_last_round(project)) == 3  # round 1 made the bank's first labels
    assert PseudoReview(project).summaries() == []
    with pytest.raises(PseudoLabelError, match="no round of pseudo labels to undo"):
        undo_last_round(project)


def test_the_bank_keys_are_the_names_the_training_gives_its_samples(tmp_path):
    import tifffile

    from src_models.project.project_dataset import item_planes

    volume = np.zeros((5, 8, 8), np.uint16)
    tifffile.imwrite(tmp_path / "ct.tif", volume, photometric="minisblack")
    with Project.create(tmp_path / "p") as p:
        p.add_image(tmp_path / "ct.tif")
        p.commit("ct", np.ones((8, 8), bool), slice=1)
        items = p.unlabeled()
        names = [name for _, name, _ in item_planes(items)]
        assert names == ["ct_z000", "ct_z002", "ct_z003", "ct_z004"]
        assert [sample_key(it.image, it.slice) for it in items] == names


@pytest.mark.usefixtures("one_torch_thread")
def test_a_real_round_then_the_cli_accepts_and_the_next_round_trains_on_it(tmp_path, capsys):
    folder = make_project(tmp_path)
    assert cli_main(["pseudo", str(folder)]) == 0
    assert "no pseudo labels yet" in capsys.readouterr().out
    first = [e for e in retrain(folder, epochs=1, **TINY) if isinstance(e, RetrainRoundStart)]
    assert first[0].engine == "epi" and first[0].n_unlabeled == 2
    assert cli_main(["pseudo", str(folder), "--export", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "synth_0003" in out and "synth_0004" in out and "1 round" in out
    assert (tmp_path / "x" / "pseudo_labels.csv").is_file()
    assert cli_main(["pseudo", str(folder), "--accept-above", "0"]) == 0
    assert "accepted 2 pseudo labels" in capsys.readouterr().out
    with Project.open(folder) as p:
        assert {it.kind for it in p.labeled()} == {"correction", "no_lesion", "accepted_pseudo"}
    second = [e for e in retrain(folder, epochs=1, **TINY) if isinstance(e, RetrainRoundStart)]
    assert (second[0].n_labeled, second[0].n_unlabeled) == (5, 0)  # both train as labels
    assert second[0].engine == "supervised"  # nothing left unlabelled for EPI
    assert cli_main(["pseudo", str(folder), "--accept-above", "2"]) == 2
    assert "a confidence is from 0 to 1" in capsys.readouterr().err

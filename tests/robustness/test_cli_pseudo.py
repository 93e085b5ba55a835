"""``pseudo`` and ``predict --window`` with bad inputs: one line, exit code 2, nothing on disk
changed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from robustness_cases import run_fails, tree  # (tests/robustness/ is on sys.path)

from src_models.engine.semi.bank import PseudoLabelBank
from src_models.project import Project
from src_models.project.pseudo_review import bank_folder


@pytest.fixture
def project(ws):
    """A project of one unlabelled image whose bank holds one confident pseudo label."""
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(ws / "cell.png")
    with Project.create(ws / "proj") as p:
        p.add_image(ws / "cell.png", text="x")
        prob = np.full((16, 16), 0.02, np.float32)
        prob[4:10, 4:10] = 0.98
        PseudoLabelBank(bank_folder(p), fsync=False).update({"cell": prob})
    return ws / "proj"


def test_pseudo_of_a_folder_that_is_not_a_project(ws, capsys):
    before = tree(ws)
    run_fails(capsys, ["pseudo", ws / "data"], "is not a napari-lvit project")
    assert tree(ws) == before


def test_pseudo_accept_above_outside_0_to_1(ws, project, capsys):
    before = tree(ws)
    run_fails(capsys, ["pseudo", project, "--accept-above", "1.5"], "from 0 to 1", "1.5")
    assert tree(ws) == before  # nothing accepted


def test_pseudo_export_into_a_folder_holding_other_files(ws, project, capsys):
    (ws / "out").mkdir()
    (ws / "out" / "notes.txt").write_text("mine")
    before = tree(ws)
    run_fails(capsys, ["pseudo", project, "--export", ws / "out"], "out")
    assert tree(ws) == before


def test_pseudo_undo_with_no_round_to_undo(ws, capsys):
    with Project.create(ws / "empty"):
        pass
    before = tree(ws)
    run_fails(capsys, ["pseudo", ws / "empty", "--undo"], "no pseudo labels")
    assert tree(ws) == before


def test_predict_window_on_an_8_bit_image(ws, capsys):
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(ws / "gray.png")
    before = tree(ws)
    argv = ["predict", "default", ws / "gray.png", "--window", "lung", "--text", "x"]
    run_fails(capsys, [*argv, "--out", ws / "m.png"], "--window", "uint8", "HU")
    assert tree(ws) == before  # no mask written

"""``export`` with bad inputs: one line, exit code 2, nothing on disk changed."""

from __future__ import annotations

import numpy as np
import pytest
from robustness_cases import run_fails, tree  # (tests/robustness/ is on sys.path)

from src_models.project import Project


@pytest.fixture
def project(ws):
    with Project.create(ws / "proj") as p:
        p.commit(p.add_image(ws / "scan.png", text="x"), np.ones((64, 64), bool))
    return ws / "proj"


def test_export_of_a_folder_that_is_not_a_project(ws, capsys):
    before = tree(ws)
    run_fails(capsys, ["export", ws / "data", "--format", "nifti", ws / "out"], "project")
    assert tree(ws) == before  # no manifest made in the folder, no output folder


def test_export_into_a_file(ws, project, capsys):
    target = ws / "notes.txt"
    before = tree(ws)
    run_fails(capsys, ["export", project, "--format", "nifti", target], "notes.txt")
    assert tree(ws) == before


def test_export_never_writes_over_its_source_image(ws, capsys):
    import nibabel as nib

    # a NIfTI scan in the output folder, under the name the export would give its mask
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), ws / "src.nii.gz")
    with Project.create(ws / "p3") as p:
        p.commit(p.add_image(ws / "src.nii.gz", text="x"), np.ones((4, 4, 4), bool))
    before = tree(ws)
    run_fails(capsys, ["export", ws / "p3", "--format", "nifti", ws], "src.nii.gz")
    assert tree(ws) == before

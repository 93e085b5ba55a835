"""The library's entry points with bad inputs (what the widgets and scripts call): a clear
error before any work, and nothing on disk changed."""

from __future__ import annotations

import sqlite3
import tracemalloc

import numpy as np
import pytest
import torch
from robustness_cases import BIG_SIDE, tree  # (tests/robustness/ is on sys.path)

from src_models.inference import Predictor
from src_models.inference_checks import PredictionError
from src_models.models import create_model
from src_models.project import Project, ProjectError
from src_models.project.workspace import open_workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(create_model("unet_tiny", img_size=32), device="cpu")


IMAGE = np.zeros((40, 48), np.uint8)


@pytest.mark.parametrize("threshold", [1.5, -0.01, float("nan"), "half"])
def test_a_threshold_outside_0_to_1(predictor, threshold):
    with pytest.raises(ValueError, match="threshold must be a number from 0 to 1"):
        predictor.predict(IMAGE, threshold=threshold)
    result = predictor.predict(IMAGE, threshold=0.5)
    with pytest.raises(ValueError, match="from 0 to 1"):
        result.recut(threshold)
    with pytest.raises(ValueError, match="from 0 to 1"):
        Predictor(predictor.model, device="cpu", threshold=threshold)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros(64), r"got shape \(64,\)"),
        (np.zeros((2, 3, 32, 32)), "pick one slice"),
        (np.zeros((32, 32, 2)), r"C in 1, 3, 4"),
        (np.zeros((0, 32)), "the image is empty"),
        (np.zeros((32, 32), np.complex64), "dtype complex64"),
        (np.full((32, 32), "x"), "it must hold numbers"),
        (np.full((32, 32), np.nan, np.float32), "NaN or infinite"),
    ],
)
def test_an_array_that_is_no_image(predictor, image, match):
    for method in (predictor.predict, predictor.predict_prob):
        with pytest.raises(ValueError, match=match):
            method(image)


def test_a_20000_px_array_is_refused_before_anything_is_allocated(predictor):
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (BIG_SIDE, BIG_SIDE, 3))  # no memory
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"400000000 pixels \(20000 x 20000\)"):
            predictor.predict(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20, peak  # its float copy alone would be 4.8 GB
    predictor.max_pixels = None  # the limit is the predictor's: None lifts it
    try:
        assert predictor.predict(np.zeros((64, 64), np.uint8)).mask.shape == (64, 64)
    finally:
        del predictor.max_pixels


def test_a_model_that_gives_nan_is_an_error_not_an_empty_mask():
    model = create_model("unet_tiny", img_size=32)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    broken = Predictor(model, device="cpu")
    for method in (broken.predict, broken.predict_prob):
        with pytest.raises(PredictionError, match="NaN or infinite probabilities for 1920 of 1920"):
            method(IMAGE)


# ------------------------------------------------------------------------------- projects


def test_opening_an_empty_folder_leaves_no_project_behind(ws):
    (ws / "empty").mkdir()
    before = tree(ws)
    with pytest.raises(ProjectError, match="no image files"):
        open_workspace(ws / "empty")
    assert tree(ws) == before  # no empty .napari-lvit


def test_opening_a_folder_with_a_corrupt_image_leaves_no_project_behind(ws):
    folder = ws / "data" / "img"
    (folder / "synth_0002.png").write_bytes(b"broken")
    before = tree(ws)
    with pytest.raises(ValueError, match="synth_0002.png"):
        open_workspace(folder)
    assert tree(ws) == before


def test_importing_a_split_with_a_wrong_mask_leaves_no_project_behind(ws):
    from PIL import Image

    Image.new("L", (10, 10)).save(ws / "data" / "labelcol" / "synth_0003.png")
    before = tree(ws)
    with pytest.raises(ValueError, match="synth_0003.png"):
        open_workspace(ws / "data")
    assert tree(ws) == before


def test_a_failed_first_open_into_an_existing_folder_keeps_its_files(ws):
    (ws / "empty").mkdir()
    place = ws / "mine"
    (place / "images").mkdir(parents=True)
    (place / "images" / "keep.txt").write_text("the user's own file")
    before = tree(ws)
    with pytest.raises(ProjectError, match="no image files"):
        open_workspace(ws / "empty", project=place)
    assert tree(ws) == before


def test_opening_a_foreign_sqlite_file_leaves_it_as_it_was(ws):
    folder = ws / "foreign"
    folder.mkdir()
    with sqlite3.connect(folder / "project.sqlite") as conn:
        conn.execute("CREATE TABLE notes (text)")
    conn.close()
    before = tree(ws)
    with pytest.raises(ProjectError, match="not a napari-lvit project manifest"):
        Project.open(folder)
    with pytest.raises(ProjectError, match="not a napari-lvit project manifest"):
        open_workspace(folder)
    assert tree(ws) == before  # not switched to WAL mode, no -wal file


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (np.zeros((10, 10), bool), r"shape \(10, 10\)"),
        (np.full((64, 64), 0.5, np.float32), "only 0 and 1"),
        (np.full((64, 64), np.nan, np.float32), "NaN or infinite"),
        (np.zeros((64, 64), np.complex64), "bool, integer or 0/1 float"),
    ],
)
def test_a_commit_of_a_bad_mask_saves_nothing(ws, mask, match):
    with Project.create(ws / "project") as project:
        (rec, *_) = project.add_folder(ws / "data" / "img")
        before = tree(ws)
        with pytest.raises(ValueError, match=match):
            project.commit(rec, mask)
        assert tree(ws) == before
        assert project.history(rec) == []

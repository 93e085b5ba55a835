"""The cases of issue 20 not covered elsewhere: masks that are not binary, text that is not
UTF-8 and pickled encoder weights, absurd stored configs, checkpoints trained with
``--no-text``, read-only output folders, an oversized ``synth``, an interrupted project
creation and a read-only project. Each asserts the one line the user sees and that nothing on
disk changed that should not have."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import tracemalloc
import warnings

import numpy as np
import pytest
from robustness_cases import run_fails, tree  # (tests/robustness/ is on sys.path)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = ["--model", "unet_tiny", "--img-size", "32", "--no-text", "--epochs", "1"]


# ------------------------------------------------------------------------------- masks (dataset)


@pytest.mark.parametrize(
    ("mask", "ok"),
    [
        (np.array([[0, 1], [1, 0]], np.uint8), True),
        (np.array([[0, 255], [255, 0]], np.uint8), True),
        (np.array([[False, True], [True, False]]), True),
        (np.array([[0.0, 1.0], [1.0, 0.0]], np.float32), True),
        (np.zeros((2, 2), np.uint8), True),  # an image without lesion
        (np.array([[1, 2], [3, 1]], np.uint8), False),  # background 1 to 3
        (np.array([[0, 128], [128, 0]], np.uint8), False),
        (np.array([[0, 1], [255, 0]], np.uint8), False),
        (np.array([[0.0, 0.4], [0.9, 0.0]], np.float32), False),  # probabilities
    ],
)
def test_masks_are_binary_or_an_error_naming_the_values(mask, ok):
    from src_models.data.io import mask_from_array

    if ok:
        assert mask_from_array(mask).tolist() == (mask != 0).tolist()
    else:
        shown = ", ".join(str(v) for v in np.unique(mask).tolist())
        with pytest.raises(ValueError, match=f"the mask holds the values {shown}, not a binary"):
            mask_from_array(mask)
        assert mask_from_array(mask, threshold=0).tolist() == (mask > 0).tolist()


def _shifted_background(ws):
    """The dataset with every mask's background at 1 and lesion at 3."""
    from PIL import Image

    split = ws / "data_bg"
    shutil.copytree(ws / "data", split)
    for p in (split / "labelcol").iterdir():
        m = np.asarray(Image.open(p)) > 0
        Image.fromarray(np.where(m, 3, 1).astype(np.uint8)).save(p)
    return split


def test_an_explicit_mask_threshold_reads_such_masks(ws, capsys):
    from src_models.cli import main

    split = _shifted_background(ws)
    before = tree(ws)
    run_fails(capsys, ["evaluate", ws / "unet.safetensors", split], "holds the values 1, 3")
    assert tree(ws) == before
    argv = ["evaluate", str(ws / "unet.safetensors"), str(split), "--json"]
    assert main([*argv, "--mask-threshold", "1"]) == 0
    shifted = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(ws / "unet.safetensors"), str(ws / "data"), "--json"]) == 0
    assert shifted["dice"] == pytest.approx(json.loads(capsys.readouterr().out)["dice"])
    assert tree(ws) == before


# ------------------------------------------------------------------------------- image


def test_a_two_channel_tiff_is_not_read_as_a_volume(ws):
    from src_models.data.io import ImageReadError, load_image

    with pytest.raises(ImageReadError, match=r"looks like an image with 2 channels"):
        load_image(ws / "two_channels.tif")


# ------------------------------------------------------------------------------- text


def test_a_text_that_is_not_utf8(ws, capsys, monkeypatch):
    import src_models.inference

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model was loaded for a text that cannot be used")

    monkeypatch.setattr(src_models.inference.Predictor, "__init__", must_not_run)
    before = tree(ws)
    # what Python makes of the bytes b"l\xe9sion" in argv (os.fsdecode: surrogateescape)
    text = os.fsdecode(b"l\xe9sion in the left lung")
    argv = ["predict", ws / "text.safetensors", ws / "scan.png", "--out", ws / "m.tif"]
    run_fails(capsys, [*argv, "--text", text], "the text is not valid UTF-8", "character 1")
    assert tree(ws) == before


def test_a_description_file_that_is_not_utf8_opens_the_image_without_it(ws):
    from napari_lvit._reader import read_images

    (ws / "scan.png.txt").write_bytes("l\u00e9sion".encode("latin-1"))
    before = tree(ws)
    with pytest.warns(UserWarning, match="is not UTF-8 text: its description was not read"):
        ((data, meta, kind),) = read_images(str(ws / "scan.png"))
    assert kind == "image" and data.shape == (64, 64) and "description" not in meta["metadata"]
    assert tree(ws) == before


class _Evil:
    def __reduce__(self):  # unpickling this would create a file
        return (open, ("/tmp/napari_lvit_was_unpickled", "w"))


def _encoder_folder(ws, weights: str):
    """An encoder folder (the bundled one's config and tokenizer) whose weights are a pickle."""
    from src_models.text import default_model_dir

    folder = ws / "encoder"
    folder.mkdir()
    for p in default_model_dir().iterdir():
        if p.is_file() and p.suffix != ".safetensors":
            shutil.copy(p, folder / p.name)
    (folder / weights).write_bytes(pickle.dumps(_Evil()))
    return folder


@pytest.mark.parametrize(
    ("weights", "fragments"),
    [
        ("pytorch_model.bin", ["has no model.safetensors", "pickles, which are never loaded"]),
        ("model.safetensors", ["its files are damaged", "copy the encoder folder again"]),
    ],
)
def test_a_pickle_where_the_encoder_weights_should_be_is_never_unpickled(
    ws, capsys, weights, fragments
):
    marker = "/tmp/napari_lvit_was_unpickled"
    if os.path.exists(marker):
        os.unlink(marker)
    folder = _encoder_folder(ws, weights)
    before = tree(ws)
    argv = ["train", ws / "data", "--model", "lvit_tiny", "--img-size", "32", "--epochs", "1"]
    run_fails(capsys, [*argv, "--text-encoder", folder, "--out", ws / "m.safetensors"], *fragments)
    assert not os.path.exists(marker)
    assert tree(ws) == before


# ------------------------------------------------------------------------------- checkpoint


def test_an_absurd_depth_is_refused_before_anything_is_allocated(ws):
    import torch

    from src_models.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from src_models.models import create_model

    model = create_model("lvit_tiny", img_size=32)
    path = ws / "deep.safetensors"
    save_checkpoint(path, model)
    from test_cli_predict import _edit_meta

    _edit_meta(path, model_config={**model.model_config, "vit_depth": 10**6})
    before = tree(ws)
    start = time.monotonic()
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"vit_depth = 1000000 is not a sane value"):
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20 and time.monotonic() - start < 10
    assert torch.get_num_threads() == 1
    assert tree(ws) == before


@pytest.fixture
def no_text_checkpoint(ws, capsys):
    """``napari-lvit train --no-text`` of a text model (lvit_tiny), as a user runs it."""
    from src_models.cli import main

    out = ws / "notext.safetensors"
    argv = ["train", ws / "data", "--model", "lvit_tiny", "--img-size", "32", "--no-text"]
    assert main([str(a) for a in [*argv, "--epochs", "1", "--out", out]]) == 0
    capsys.readouterr()
    return out


def test_a_checkpoint_trained_without_text_is_used_without_text(ws, capsys, no_text_checkpoint):
    from src_models.cli import main
    from src_models.engine.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(no_text_checkpoint)
    assert meta["model_name"] == "lvit_tiny" and meta["uses_text"] is False
    assert meta["text_encoder"] is None
    mask = ws / "mask.png"
    assert main(["predict", str(no_text_checkpoint), str(ws / "scan.png"), "--out", str(mask)]) == 0
    assert mask.is_file()  # no --text asked for
    assert capsys.readouterr().out.startswith(f"wrote {mask}")
    for extra in ([], ["--no-text"]):
        assert main(["evaluate", str(no_text_checkpoint), str(ws / "data"), *extra]) == 0
        assert capsys.readouterr().out.startswith("Dice ")


def test_an_old_checkpoint_trained_without_text_evaluates_with_no_text(ws, capsys):
    """Written before checkpoints said so (``uses_text`` true, no encoder): ``--no-text``."""
    from src_models.cli import main
    from src_models.engine.checkpoint import save_checkpoint
    from src_models.models import create_model

    path = ws / "old.safetensors"
    save_checkpoint(path, create_model("lvit_tiny", img_size=32), {"text_encoder": None})
    before = tree(ws)
    assert main(["evaluate", str(path), str(ws / "data"), "--no-text"]) == 0
    assert capsys.readouterr().out.startswith("Dice ")
    assert tree(ws) == before


# ------------------------------------------------------------------------------- output path


def _read_only(monkeypatch, folder):
    """``folder`` reads as not writable (as a read-only mount does; chmod binds no root)."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if os.path.realpath(path) == os.path.realpath(folder) and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_a_read_only_output_folder(ws, capsys, monkeypatch):
    (ws / "locked").mkdir()
    _read_only(monkeypatch, ws / "locked")
    before = tree(ws)
    argv = ["predict", ws / "unet.safetensors", ws / "scan.png", "--out", ws / "locked" / "m.tif"]
    run_fails(capsys, argv, "/locked' is not writable", "choose another place")
    run_fails(capsys, ["synth", ws / "locked" / "new", "--n", "2"], "is not writable")
    argv = ["train", ws / "data", *TRAIN, "--out", ws / "locked" / "m.safetensors"]
    run_fails(capsys, argv, "is not writable")
    assert tree(ws) == before


def test_a_write_refused_by_the_file_system_is_one_line(ws, capsys, monkeypatch):
    import errno

    import src_models.data.io

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(src_models.data.io, "_write_atomically", refused)
    before = tree(ws)
    argv = ["predict", ws / "unet.safetensors", ws / "scan.png", "--out", ws / "m.png"]
    run_fails(capsys, argv, "Read-only file system", "choose a place you may write to")
    assert tree(ws) == before


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--size", "100000"], ["size <= 4096", "got 100000", "GB while it is drawn"]),
        (["--size", "4096", "--n", "10000000"], ["need up to", "GB are free there"]),
    ],
)
def test_synth_refuses_what_cannot_fit_before_writing(ws, capsys, flags, fragments):
    before = tree(ws)
    run_fails(capsys, ["synth", ws / "new", *flags], *fragments)
    assert tree(ws) == before  # not even the folder


def test_outputs_are_written_in_the_format_their_suffix_names(ws, capsys):
    from PIL import Image

    from src_models.cli import main

    argv = ["predict", str(ws / "unet.safetensors"), str(ws / "scan.png")]
    assert main([*argv, "--out", str(ws / "m.png"), "--prob-out", str(ws / "p.tiff")]) == 0
    assert (ws / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(ws / "m.png").format == "PNG"
    assert (ws / "p.tiff").read_bytes()[:2] in (b"II", b"MM")
    assert not [p.name for p in ws.iterdir() if p.name.startswith(".")]  # no temp files left


# ------------------------------------------------------------------------------- project


def test_a_project_creation_killed_half_way_is_repaired_on_the_next_open(ws):
    from src_models.project import Project
    from src_models.project.workspace import open_workspace

    code = (
        "import os, sys\n"
        "import src_models.project.store as store\n"
        "store._statements = lambda script: os._exit(9)  # killed inside the first transaction\n"
        "store.Project.create(sys.argv[1])\n"
    )
    folder = ws / "data" / "img" / ".napari-lvit"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rc = subprocess.run([sys.executable, "-c", code, str(folder)], env=env, cwd=os.getcwd())
    assert rc.returncode == 9 and (folder / "project.sqlite").is_file()
    project, how = open_workspace(ws / "data" / "img")  # what the widget and `annotate` do
    with project:
        assert how == "added" and len(project) == 4 and not project.read_only
    with Project.open(folder) as again:
        assert len(again) == 4


def test_a_read_only_project_opens_read_only(ws, monkeypatch):
    from src_models.errors import describe
    from src_models.project import Project, ProjectError
    from src_models.project.workspace import open_workspace

    with Project.create(ws / "project") as project:
        project.add_folder(ws / "data" / "img")
    _read_only(monkeypatch, ws / "project")
    before = tree(ws)
    project, how = open_workspace(ws / "project")
    with project:
        assert project.read_only and how == "opened"
        assert len(project) == 4 and project.history(project.images()[0]) == []
        mask = np.zeros(project.images()[0].shape, bool)
        with pytest.raises(ProjectError, match="is open read-only") as info:
            project.commit(project.images()[0], mask)
        line = describe(info.value)[0]
        assert "copy the project folder somewhere you may write to" in line
        with pytest.raises(ProjectError, match="is open read-only"):
            project.add_folder(ws / "data" / "img", exist_ok=True)
    assert tree(ws) == before  # no -wal, no -shm, no orphan sweep, nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Project.open(ws / "project", read_only=True).close()

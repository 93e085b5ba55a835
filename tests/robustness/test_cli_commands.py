"""``train``, ``pretrain``, ``evaluate``, ``synth``, ``retrain``, ``annotate`` and the command
line's error boundary with bad inputs: one line, the right exit code, nothing on disk changed."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from robustness_cases import run_fails, tree  # (tests/robustness/ is on sys.path)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:Image .* has no mask"),
]

TRAIN = ["--model", "unet_tiny", "--img-size", "32", "--no-text", "--epochs", "1"]


def _broken_split(ws, damage: str):
    """A copy of the dataset with one kind of damage."""
    split = ws / f"data_{damage}"
    shutil.copytree(ws / "data", split)
    if damage == "no_masks":
        shutil.rmtree(split / "labelcol")
    elif damage == "corrupt_image":
        (split / "img" / "synth_0001.png").write_bytes(b"garbage")
    elif damage == "mask_size":
        from PIL import Image

        Image.new("L", (10, 10)).save(split / "labelcol" / "synth_0001.png")
    elif damage == "table":
        (split / "text.csv").write_text("Name,Text\nsynth_0000.png,a lesion\n")
    elif damage == "no_images":
        for p in (split / "img").iterdir():
            p.unlink()
    elif damage == "mask_values":  # a background of 1 to 3 instead of 0 ("75% lesion")
        import numpy as np
        from PIL import Image

        mask = split / "labelcol" / "synth_0002.png"
        values = 1 + (np.asarray(Image.open(mask)) > 0) + (np.arange(64) % 2)[None, :]
        Image.fromarray(values.astype(np.uint8)).save(mask)
    elif damage == "latin1_table":
        (split / "text.csv").write_bytes(
            "Image,Description\nsynth_0000.png,l\u00e9sion \u00e0 gauche\n".encode("latin-1")
        )
    return split


SPLIT_DAMAGE = [
    ("no_masks", ["has no 'labelcol' subfolder"]),
    ("corrupt_image", ["synth_0001.png", "not a valid image file"]),
    ("mask_size", ["has size (10, 10)", "(64, 64)"]),
    ("table", ["needs columns 'Image' and 'Description'", "['Name', 'Text']"]),
    ("no_images", ["No images in"]),
    ("mask_values", ["labelcol/synth_0002.png", "holds the values 1, 2, 3", "--mask-threshold"]),
    ("latin1_table", ["text.csv' is not UTF-8 text (byte 0xe9", "save it as UTF-8"]),
]


# ------------------------------------------------------------------------------- train


@pytest.mark.parametrize(("damage", "fragments"), SPLIT_DAMAGE)
def test_train_on_a_broken_dataset(ws, capsys, damage, fragments):
    split = _broken_split(ws, damage)
    before = tree(ws)
    run_fails(capsys, ["train", split, *TRAIN, "--out", ws / "m.safetensors"], *fragments)
    assert tree(ws) == before  # no checkpoint, no sidecar


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["--lr", "-1"], "lr must be > 0"),
        (["--labeled-fraction", "0"], "--labeled-fraction must be in (0, 1]"),
        (["--epochs", "two"], "argument --epochs: invalid int value"),
        (["--model", "unet_huge"], "unknown model 'unet_huge'; registered models:"),
        (["--text-encoder", "/no/such/encoder"], "text encoder folder not found"),
        (["--init", "missing.safetensors"], "missing.safetensors"),
        (["--resume", "missing.safetensors"], "checkpoint not found"),
        (["--init", "unet.safetensors", "--resume", "unet.safetensors"], "exclude each other"),
        (["--workers", "-1"], "num_workers must be >= 0, got -1"),
        (["--clicks", "-2"], "--clicks must be >= 0, got -2"),
    ],
)
def test_train_with_a_bad_flag(ws, capsys, monkeypatch, flags, fragment):
    monkeypatch.chdir(ws)
    before = tree(ws)
    common = [f for f in TRAIN if f != "--no-text" or "--text-encoder" not in flags]
    argv = ["train", ws / "data", *common, *flags, "--out", ws / "m.safetensors"]
    line = run_fails(capsys, argv, fragment)
    assert '"unknown model' not in line  # a KeyError's message, not its repr
    assert tree(ws) == before


@pytest.mark.parametrize(
    ("out", "flags", "fragments"),
    [
        (
            "unet.safetensors",
            ["--init", "unet.safetensors"],
            ["the --init checkpoint", "overwritten"],
        ),
        ("scan.safetensors", [], ["exists and is not a napari-lvit checkpoint"]),
        ("model.pt", [], ["unsupported file type '.pt'", ".safetensors"]),
        ("scan.png", [], ["unsupported file type '.png'"]),
        ("data", [], ["is a folder"]),
    ],
)
def test_train_never_writes_over_what_is_not_its_own_checkpoint(ws, capsys, out, flags, fragments):
    (ws / "scan.safetensors").write_bytes((ws / "scan.png").read_bytes())
    before = tree(ws)
    flags = [ws / f if f.endswith(".safetensors") else f for f in flags]
    run_fails(capsys, ["train", ws / "data", *TRAIN, *flags, "--out", ws / out], *fragments)
    assert tree(ws) == before


def test_train_never_writes_into_the_shipped_weights(ws, capsys, monkeypatch):
    from src_models import model_source

    weights = ws / "weights"  # stands in for the installed package's weights folder
    weights.mkdir()
    shipped = weights / "default.safetensors"
    shutil.copy(ws / "unet.safetensors", shipped)
    monkeypatch.setattr(model_source, "DEFAULT_CHECKPOINT", shipped)
    before = tree(ws)
    for out in (shipped, weights / "mine.safetensors"):
        argv = ["train", ws / "data", *TRAIN, "--resume", "default", "--out", out]
        run_fails(capsys, argv, "inside the installed package", "somewhere else")
    assert tree(ws) == before


def test_pretrain_with_bad_inputs(ws, capsys):
    (ws / "empty_folder").mkdir()
    before = tree(ws)
    common = ["--model", "unet_tiny", "--img-size", "32", "--no-text"]
    run_fails(
        capsys,
        ["pretrain", ws / "missing", *common, "--out", ws / "p.safetensors"],
        "does not exist",
    )
    run_fails(
        capsys,
        ["pretrain", ws / "empty_folder", *common, "--out", ws / "p.safetensors"],
        "No images",
    )
    run_fails(capsys, ["pretrain", ws / "data", *common, "--out", ws / "p.bin"], "'.bin'")
    run_fails(
        capsys,
        ["pretrain", ws / "data", *common, "--epochs", "0", "--out", ws / "p.safetensors"],
        "epochs >= 1",
    )
    assert tree(ws) == before


# ------------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize(("damage", "fragments"), [*SPLIT_DAMAGE, ("missing", ["does not exist"])])
def test_evaluate_on_a_broken_dataset(ws, capsys, damage, fragments):
    split = ws / "nowhere" if damage == "missing" else _broken_split(ws, damage)
    before = tree(ws)
    run_fails(capsys, ["evaluate", ws / "unet.safetensors", split], *fragments)
    assert tree(ws) == before


# ------------------------------------------------------------------------------- synth


def test_synth_never_writes_over_a_folder_or_a_file(ws, capsys):
    before = tree(ws)
    line = run_fails(capsys, ["synth", ws / "data", "--n", "2", "--size", "64"], "is not empty")
    assert "new (or empty) folder" in line
    run_fails(capsys, ["synth", ws / "scan.png", "--n", "2", "--size", "64"], "is a file")
    run_fails(capsys, ["synth", ws / "new", "--size", "10"], "size >= 64")
    run_fails(capsys, ["synth", ws / "new", "--n", "0"], "n must be >= 1")
    run_fails(capsys, ["synth", ws / "new", "--kind", "cats"], "invalid choice: 'cats'")
    assert tree(ws) == before


# ------------------------------------------------------------------------------- retrain


def _project(ws, commits: bool = False):
    from src_models.project import Project

    with Project.create(ws / "project") as project:
        project.add_folder(ws / "data" / "img")
    return ws / "project"


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing", ["is not a project: the folder does not exist"]),
        ("not_a_project", ["is not a napari-lvit project (no project.sqlite in it)"]),
        ("corrupt", ["is corrupt or not an SQLite file"]),
        ("foreign", ["an SQLite file but not a napari-lvit project manifest"]),
        ("newer", ["schema version 99", "upgrade napari-lvit"]),
        ("no_commits", ["commit at least one"]),
    ],
)
def test_retrain_on_a_bad_project(ws, capsys, case, fragments):
    folder = {"missing": ws / "nowhere", "not_a_project": ws / "data"}.get(case)
    if folder is None:
        folder = _project(ws)
        manifest = folder / "project.sqlite"
        if case == "corrupt":
            manifest.write_bytes(b"not a database" * 100)
        elif case == "foreign":
            manifest.unlink()
            sqlite3.connect(manifest).execute("CREATE TABLE t (x)").connection.close()
        elif case == "newer":
            with sqlite3.connect(manifest) as conn:
                conn.execute("PRAGMA user_version = 99")
    before = tree(ws)
    run_fails(capsys, ["retrain", folder, "--epochs", "1"], *fragments)
    assert tree(ws) == before


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        (None, ["--config", "no such file", "RetrainConfig JSON"]),
        ("{not json", ["not JSON"]),
        (json.dumps({"epochs": 2, "wrong": 1}), ["wrong"]),
        (json.dumps({"epochs": 0}), ["epochs must be >= 1"]),
        (json.dumps({"clicks": -1}), ["clicks must be >= 0, got -1"]),
    ],
)
def test_retrain_with_a_bad_config(ws, capsys, config, fragments):
    folder = _project(ws)
    path = ws / "config.json"
    if config is not None:
        path.write_text(config)
    before = tree(ws)
    run_fails(capsys, ["retrain", folder, "--config", path], *fragments)
    assert tree(ws) == before


def test_retrain_jsonl_says_the_same_line_as_one_error_event(ws, capfd):
    from src_models.cli import main

    folder = _project(ws)
    before = tree(ws)
    assert main(["retrain", str(folder), "--jsonl"]) == 2  # --jsonl writes to the real stdout
    out, err = capfd.readouterr()
    (line,) = err.splitlines()
    assert line.startswith("napari-lvit retrain: error: ") and "commit at least one" in line
    (event,) = [json.loads(x) for x in out.splitlines()]  # and nothing else on stdout
    assert event == {"type": "Error", "message": line.split(": error: ", 1)[1]}
    assert tree(ws) == before


# ------------------------------------------------------------------------------- annotate, demo


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["annotate", "nowhere"], ["does not exist", "a folder of images"]),
        (["annotate", "scan.png"], ["is a file, not a folder"]),
        (
            ["annotate", "data", "--model", "unet_huge"],
            ["neither a checkpoint file nor a registered"],
        ),
        (["annotate", "data", "--model", "garbage.safetensors"], ["checkpoint not found"]),
        (["annotate", "data", "--project", "scan.png"], ["--project", "is a file"]),
        (["demo", "--model", "scan.png"], ["not a safetensors file or it is corrupt"]),
    ],
)
def test_gui_commands_check_their_arguments_before_napari_opens(
    ws, capsys, monkeypatch, argv, fragments
):
    import sys

    monkeypatch.chdir(ws)
    before = tree(ws)
    had_napari = "napari.viewer" in sys.modules
    run_fails(capsys, argv, *fragments, gui=True)
    assert had_napari or "napari.viewer" not in sys.modules  # no window was opened
    assert tree(ws) == before


# ------------------------------------------------------------------------------- the boundary


def test_an_unexpected_error_is_one_line_with_a_hint_and_debug_shows_the_traceback(
    ws, capsys, monkeypatch
):
    import src_models.data.synthetic

    def bug(*args, **kwargs):
        raise RuntimeError("an internal bug\nwith a second line")

    monkeypatch.setattr(src_models.data.synthetic, "write_dataset", bug)
    before = tree(ws)
    line = run_fails(
        capsys, ["synth", ws / "new"], "unexpected RuntimeError: an internal bug", code=1
    )
    assert "rerun with --debug" in line and "second line" not in line

    from src_models.cli import main

    for argv in (["--debug", "synth", str(ws / "new")], ["synth", str(ws / "new"), "--debug"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "in bug" in err
        assert err.strip().splitlines()[-1].startswith("napari-lvit synth: error: unexpected")
    assert tree(ws) == before


def test_usage_errors_are_one_line_too(ws, capsys):
    before = tree(ws)
    run_fails(capsys, ["predict", ws / "unet.safetensors"], "required", "--help")
    run_fails(capsys, ["predict", "default", ws / "scan.png", "--out", ws / "m.tif", "--bogus"])
    assert tree(ws) == before


def test_a_full_disk_is_one_line(ws, capsys, monkeypatch):
    import errno

    import src_models.data.synthetic

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(ws / "new" / "img"))

    monkeypatch.setattr(src_models.data.synthetic, "write_dataset", full)
    before = tree(ws)
    run_fails(capsys, ["synth", ws / "new"], "No space left on device", "free some disk space")
    assert tree(ws) == before

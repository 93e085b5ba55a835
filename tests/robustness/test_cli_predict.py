"""``napari-lvit predict`` with bad inputs: one line, exit 2, no file written or changed."""

from __future__ import annotations

import json
import struct
import tracemalloc

import pytest
from robustness_cases import BIG_SIDE, run_fails, tree  # (tests/robustness/ is on sys.path)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def predict(ws, image="scan.png", *extra, checkpoint="unet.safetensors", out="mask.tif"):
    return ["predict", ws / checkpoint, ws / image, "--out", ws / out, *extra]


@pytest.mark.parametrize(
    ("image", "fragments"),
    [
        ("missing.png", ["missing.png", "does not exist"]),
        ("data", ["it is a folder"]),
        ("empty.png", ["empty.png", "not a valid image"]),
        ("garbage.png", ["garbage.png", "not a valid image"]),
        ("truncated.png", ["truncated.png", "truncated"]),
        ("notes.txt", ["unsupported file type '.txt'"]),
        ("volume.tif", ["volume of shape (5, 32, 32)", "give a 2D image"]),
        ("two_channels.tif", ["looks like an image with 2 channels", "(64, 48, 2)"]),
        ("nan.tif", ["1024 NaN or infinite values"]),
        ("inf.tif", ["1024 NaN or infinite values"]),
    ],
)
def test_a_bad_image(ws, capsys, image, fragments):
    before = tree(ws)
    run_fails(capsys, predict(ws, image), *fragments)
    assert tree(ws) == before


def test_a_20000_px_png_is_refused_from_its_header_before_anything_is_allocated(
    ws, capsys, monkeypatch
):
    from PIL import ImageFile

    import src_models.inference

    def must_not_run(*args, **kwargs):
        raise AssertionError("pixels decoded or a model loaded for a refused image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_run)  # no pixel is decoded
    monkeypatch.setattr(src_models.inference.Predictor, "__init__", must_not_run)  # no model
    before = tree(ws)
    assert (ws / "big.png").stat().st_size < 1000
    tracemalloc.start()
    try:
        line = run_fails(capsys, predict(ws, "big.png"), "400000000 pixels", "--max-pixels")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"({BIG_SIDE} x {BIG_SIDE})" in line and "GB of memory" in line
    assert peak < 20 * 2**20, peak  # an RGB 20000 x 20000 image alone is 1.2 GB
    assert tree(ws) == before


def test_an_image_over_max_pixels(ws, capsys):
    before = tree(ws)
    run_fails(capsys, predict(ws, "scan.png", "--max-pixels", "1000"), "4096 pixels (64 x 64)")
    run_fails(capsys, predict(ws, "scan.png", "--max-pixels", "0"), "--max-pixels", ">= 1")
    assert tree(ws) == before


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "inf", "half"])
def test_a_threshold_outside_0_to_1(ws, capsys, value):
    before = tree(ws)
    run_fails(capsys, predict(ws, "scan.png", "--threshold", value), "--threshold", "0 to 1")
    assert tree(ws) == before


@pytest.mark.parametrize(
    ("out", "prob_out", "fragments"),
    [
        ("scan.png", None, ["--out", "is the image of this command", "overwritten"]),
        ("mask.jpg", None, ["unsupported file type '.jpg'", ".png or .tif"]),
        ("data", None, ["--out", "is a folder"]),
        ("scan.png/mask.tif", None, ["cannot make its folder", "is a file"]),
        ("mask.tif", "mask.tif", ["--prob-out", "is the --out file"]),
        ("mask.tif", "prob.png", ["--prob-out", "unsupported file type '.png'"]),
        ("mask.tif", "unet.safetensors", ["--prob-out", "unsupported file type"]),
    ],
)
def test_an_output_that_would_overwrite_or_cannot_be_written(ws, capsys, out, prob_out, fragments):
    before = tree(ws)
    extra = [] if prob_out is None else ["--prob-out", ws / prob_out]
    run_fails(capsys, predict(ws, "scan.png", *extra, out=out), *fragments)
    assert tree(ws) == before


def test_the_checkpoint_as_out(ws, capsys):
    before = tree(ws)
    (ws / "model.tif").write_bytes((ws / "unet.safetensors").read_bytes())
    before = tree(ws)
    argv = ["predict", ws / "model.tif", ws / "scan.png", "--out", ws / "model.tif"]
    run_fails(capsys, argv, "is the checkpoint of this command")
    assert tree(ws) == before


def _edit_meta(path, **changes):
    """Rewrite a checkpoint's napari-lvit metadata in place (tensors untouched)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["napari_lvit"])
    meta.update(changes)
    header["__metadata__"]["napari_lvit"] = json.dumps(meta)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        ("missing", ["checkpoint not found"]),
        ("garbage", ["not a safetensors file or it is corrupt"]),
        ("truncated", ["it is corrupt", "copy it again"]),
        ("plain", ["not a napari-lvit checkpoint"]),
        ("newer", ["written by a newer napari-lvit", "update napari-lvit"]),
        ("unknown", ["needs model 'unet_huge'", "known models"]),
        ("mismatch", ["do not match model 'unet_tiny'", "another model"]),
        ("threshold", ["threshold must be a number from 0 to 1"]),
        ("threshold_nan", ["stored threshold", "got nan", "--threshold"]),
        ("threshold_negative", ["stored threshold", "got -1"]),
        ("threshold_huge", ["stored threshold", "got 1000000000.0"]),
        ("width", ["base_width = 65536 is not a sane value (at most 1024)"]),
        ("params", ["a model of", "parameters (more than 1000000000"]),
    ],
)
def test_a_broken_checkpoint(ws, capsys, damage, fragments):
    import torch
    from safetensors.torch import save_file

    ckpt = ws / "broken.safetensors"
    good = (ws / "unet.safetensors").read_bytes()
    if damage == "garbage":
        ckpt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    elif damage == "truncated":
        ckpt.write_bytes(good[: len(good) // 2])
    elif damage == "plain":
        save_file({"w": torch.zeros(2)}, str(ckpt))
    elif damage != "missing":
        ckpt.write_bytes(good)
        changes = {
            "newer": {"format_version": 99},
            "unknown": {"model_name": "unet_huge"},
            "mismatch": {"model_config": {"img_size": 32, "base_width": 16}},
            "threshold": {"threshold": 7},
            "threshold_nan": {"threshold": float("nan")},
            "threshold_negative": {"threshold": -1},
            "threshold_huge": {"threshold": 1e9},
            "width": {"model_config": {"img_size": 32, "base_width": 65536}},
            "params": {"model_config": {"img_size": 32, "base_width": 1024}},
        }[damage]
        _edit_meta(ckpt, **changes)
    before = tree(ws)
    run_fails(capsys, predict(ws, checkpoint="broken.safetensors"), *fragments)
    assert tree(ws) == before


def test_a_checkpoint_with_nan_weights_is_refused_at_load(ws, capsys):
    before = tree(ws)
    run_fails(
        capsys,
        predict(ws, checkpoint="nan.safetensors"),
        "nan.safetensors: 70 of its 121 weight tensors hold NaN or infinite values",
        "use another checkpoint",
    )
    assert tree(ws) == before  # no empty "no lesion" mask written


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        ("not_a_model", ["neither a checkpoint file nor a registered model", "unet_tiny"]),
    ],
)
def test_an_unknown_model(ws, capsys, source, fragments):
    before = tree(ws)
    argv = ["predict", source, ws / "scan.png", "--out", ws / "mask.tif"]
    run_fails(capsys, argv, *fragments)
    assert tree(ws) == before


@pytest.mark.parametrize(
    ("device", "fragment"),
    [("tpu", "unknown device 'tpu'"), ("gpu:0", "unknown device 'gpu:0'"), ("meta", "unsupported")],
)
def test_a_bad_device(ws, capsys, device, fragment):
    before = tree(ws)
    run_fails(capsys, predict(ws, "scan.png", "--device", device), fragment)
    assert tree(ws) == before


def test_cuda_without_a_gpu(ws, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    before = tree(ws)
    run_fails(capsys, predict(ws, "scan.png", "--device", "cuda"), "no CUDA GPU", "use 'cpu'")
    assert tree(ws) == before


@pytest.mark.parametrize(
    ("text", "fragment"),
    [(None, "no --text was given"), ("   ", "no --text was given"), ("x" * 5000, "4000")],
)
def test_a_text_model_without_a_usable_text(ws, capsys, monkeypatch, text, fragment):
    import src_models.inference

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model was loaded for a text that cannot be used")

    monkeypatch.setattr(src_models.inference.Predictor, "__init__", must_not_run)
    before = tree(ws)
    extra = [] if text is None else ["--text", text]
    run_fails(capsys, predict(ws, "scan.png", *extra, checkpoint="text.safetensors"), fragment)
    assert tree(ws) == before

"""Clicks and boxes that make no sense (issue 14): a clear message or a sensible result, never
a traceback, from the library and from ``napari-lvit predict``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from robustness_cases import run_fails, tree  # (tests/robustness/ is on sys.path)

from src_models.inference import Predictor
from src_models.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE = np.zeros((40, 48), np.uint8)


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(create_model("unet_tiny", img_size=32, prompts=True), device="cpu")


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        ({"clicks": [(-1, 5, 1)]}, r"click 1 at \(y=-1, x=5\) lies outside the 40 x 48 image"),
        ({"clicks": [(5, 5, 1), (10, 48, -1)]}, "click 2 .* outside the 40 x 48 image"),
        ({"clicks": [(40, 0, 1)]}, "outside"),
        ({"clicks": [(float("nan"), 3, 1)]}, "click 1's y must be a finite number"),
        ({"clicks": [(3, 3, 0)]}, r"sign must be \+1 \(add\) or -1 \(remove\)"),
        ({"clicks": [(3, 3, True)]}, "sign must be"),
        ({"clicks": [(3, 3)]}, r"click 1 must be \(y, x, sign\)"),
        ({"box": (10, 10, 10, 30)}, "has no area: drag a rectangle"),
        ({"box": (12, 7, 12, 7)}, "has no area"),
        ({"box": (50, 60, 70, 80)}, "lies outside the 40 x 48 image"),
        ({"box": (1, 2, 3)}, r"the box must be \(y0, x0, y1, x1\)"),
        ({"box": (1, 2, 3, float("inf"))}, "finite number"),
        ({"previous": np.zeros((40, 40))}, r"previous mask has shape \(40, 40\)"),
        ({"previous": np.full((40, 48), np.nan)}, "previous mask holds NaN"),
        ({"clicks": [(1, 1, 1)] * 100_001}, "at most 100000 are taken"),
    ],
)
def test_a_bad_prompt_is_one_clear_message(predictor, prompts, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(IMAGE, **prompts)


def test_ten_thousand_clicks_give_a_mask_in_reasonable_time(predictor):
    rng = np.random.default_rng(0)
    clicks = [
        (y, x, 1 if i % 2 else -1) for i, (y, x) in enumerate(rng.uniform(0, 39, (10_000, 2)))
    ]
    result = predictor.predict(IMAGE, clicks=clicks)
    assert result.mask.shape == IMAGE.shape


def test_a_box_partly_outside_is_cut_to_the_image(predictor):
    assert predictor.predict(IMAGE, box=(-10, -10, 20, 100)).mask.shape == IMAGE.shape


def test_clicks_on_a_model_without_prompt_inputs_say_what_to_use():
    plain = Predictor(create_model("unet_tiny", img_size=32), device="cpu")
    with pytest.raises(ValueError, match="reads no clicks or boxes.*train --clicks"):
        plain.predict(IMAGE, clicks=[(3, 3, 1)])
    assert plain.predict(IMAGE).mask.shape == IMAGE.shape  # without prompts: as before


def test_clicks_on_a_tiled_prediction_give_a_mask_of_the_image():
    model = create_model("unet_tiny", img_size=32, prompts=True)
    tiled = Predictor(model, device="cpu", tile=True, tile_min_side=32)
    assert tiled.uses_tiles(IMAGE.shape)
    prompts = {"clicks": [(3, 3, 1), (39, 47, -1)], "box": (-5, 0, 20, 60)}
    mask = tiled.predict(IMAGE, previous=np.ones(IMAGE.shape), **prompts).mask
    assert mask.shape == IMAGE.shape
    with pytest.raises(ValueError, match="outside the 40 x 48 image"):
        tiled.predict(IMAGE, clicks=[(40, 0, 1)])


def _clicks_checkpoint(ws):
    from src_models.engine.checkpoint import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(ws / "clicks.safetensors", create_model("unet_tiny", prompts=True))


def predict(ws, *extra, checkpoint="clicks.safetensors"):
    return ["predict", ws / checkpoint, ws / "scan.png", "--out", ws / "mask.tif", *extra]


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--click", "3;4"], ["--click", "expected Y,X"]),
        (["--click", "1,2,3"], ["--click", "expected Y,X"]),
        (["--box", "1,2,3"], ["--box", "expected Y0,X0,Y1,X1"]),
        (["--box", "5,5,5,20"], ["has no area"]),
        (["--click", "70,3"], ["click 1 at (y=70, x=3) lies outside the 64 x 64 image"]),
        (["--click=-3,99"], ["outside the 64 x 64 image"]),
        (["--previous", "{ws}/missing.png", "--click", "3,3"], ["--previous", "no such file"]),
        (["--previous", "{ws}/volume.tif", "--click", "3,3"], ["previous mask has shape"]),
    ],
)
def test_predict_with_a_bad_click_or_box(ws, capsys, extra, fragments):
    _clicks_checkpoint(ws)
    before = tree(ws)
    run_fails(capsys, predict(ws, *(arg.format(ws=ws) for arg in extra)), *fragments)
    assert tree(ws) == before


def test_predict_clicks_on_a_checkpoint_without_prompts(ws, capsys):
    before = tree(ws)
    run_fails(
        capsys,
        predict(ws, "--click", "3,3", checkpoint="unet.safetensors"),
        "reads no clicks or boxes",
        "train --clicks",
    )
    assert tree(ws) == before


def test_predict_clicks_in_batch_mode(ws, capsys):
    _clicks_checkpoint(ws)
    before = tree(ws)
    argv = ["predict", ws / "clicks.safetensors", ws / "scan.png", "--out-dir", ws / "masks"]
    run_fails(capsys, [*argv, "--click", "3,3"], "--click, --box and --previous are for one image")
    assert tree(ws) == before


def test_predict_with_clicks_writes_the_mask(ws, capsys):
    from src_models.cli import main

    _clicks_checkpoint(ws)
    assert main([str(a) for a in predict(ws, "--click", "10,12", "--click=-40,40")]) == 0
    assert (ws / "mask.tif").is_file()

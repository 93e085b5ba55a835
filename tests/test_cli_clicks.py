"""``napari-lvit train --clicks`` and ``predict --click/--box``: the twins of the library's
prompt inputs."""

from __future__ import annotations

import pytest

from src_models.cli import main
from src_models.data.io import read_image
from src_models.data.synthetic import write_dataset
from src_models.engine.checkpoint import load_checkpoint, read_checkpoint_meta
from src_models.models.prompts import reads_prompts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_train_with_clicks_then_predict_with_a_click_and_a_box(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", kind="qata", n=4, size=64, seed=0)
    out = tmp_path / "clicks.safetensors"
    argv = ["train", data, "--model", "unet_tiny", "--epochs", "1", "--clicks", "2"]
    assert main([str(a) for a in [*argv, "--no-text", "--device", "cpu", "--out", out]]) == 0
    meta = read_checkpoint_meta(out)
    assert meta["reads_prompts"] is True and meta["model_config"]["prompts"] is True
    assert meta["training"]["config"]["clicks"] == 2
    model, _ = load_checkpoint(out)
    assert reads_prompts(model)

    image = sorted((data / "img").iterdir())[0]
    mask = tmp_path / "mask.png"
    base = ["predict", out, image, "--out", mask]
    assert main([str(a) for a in [*base, "--click", "20,30", "--click=-5,5"]]) == 0
    clicked = read_image(mask)
    assert clicked.shape == (64, 64)
    corrected = tmp_path / "corrected.png"
    argv = ["predict", out, image, "--out", corrected, "--box", "10,10,40,50", "--previous", mask]
    assert main([str(a) for a in argv]) == 0
    assert read_image(corrected).shape == (64, 64)
    # the mask being corrected is an input: --out may not overwrite it
    assert main([str(a) for a in [*base, "--click", "3,3", "--previous", mask]]) == 2
    assert "wrote" in capsys.readouterr().out


def test_train_clicks_with_epi_gives_a_model_that_reads_clicks(tmp_path):
    # the pseudo-labelled images get their clicks from their pseudo labels
    data = write_dataset(tmp_path / "data", kind="qata", n=6, size=64, seed=0)
    out = tmp_path / "x.safetensors"
    argv = ["train", data, "--model", "unet_tiny", "--clicks", "2", "--semi", "epi"]
    argv += ["--labeled-fraction", "0.5", "--rounds", "1", "--epochs", "1", "--round-epochs", "1"]
    assert main([str(a) for a in [*argv, "--device", "cpu", "--out", out]]) == 0
    meta = read_checkpoint_meta(out)
    assert meta["reads_prompts"] and meta["training"]["semi"]["rounds"] == 1

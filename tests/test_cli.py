"""The command line end to end: synth -> train -> predict -> evaluate, and fine-tuning `default`."""

import json

import numpy as np
import tifffile

from src_models.cli import main
from src_models.engine.checkpoint import read_checkpoint_meta


def test_synth_train_predict_evaluate(tmp_path, capsys):
    train, val, ckpt = tmp_path / "train", tmp_path / "val", tmp_path / "model.safetensors"
    assert main(["synth", str(train), "--kind", "qata", "--n", "8", "--size", "64"]) == 0
    assert (
        main(["synth", str(val), "--kind", "qata", "--n", "4", "--size", "64", "--seed", "1"]) == 0
    )
    args = ["train", str(train), "--val", str(val), "--model", "lvit_tiny", "--epochs", "2"]
    assert main([*args, "--batch-size", "4", "--device", "cpu", "--out", str(ckpt)]) == 0
    meta = read_checkpoint_meta(ckpt)
    assert meta["model_name"] == "lvit_tiny" and meta["training"]["data"]["n_train"] == 8

    image = next((val / "img").iterdir())
    out = tmp_path / "mask.tif"
    text = "Unilateral pulmonary infection, one infected area, lower left lung."
    assert main(["predict", str(ckpt), str(image), "--text", text, "--out", str(out)]) == 0
    mask = tifffile.imread(out)
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 1, 255}

    capsys.readouterr()
    assert main(["evaluate", str(ckpt), str(val), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 4 and 0.0 <= result["dice"] <= 1.0 and 0.0 <= result["iou"] <= 1.0


def test_resume_from_the_shipped_default_fine_tunes_it(tmp_path, capsys):
    train, out = tmp_path / "train", tmp_path / "tuned.safetensors"
    main(["synth", str(train), "--kind", "qata", "--n", "4", "--size", "64"])
    args = ["train", str(train), "--resume", "default", "--epochs", "1", "--batch-size", "4"]
    assert main([*args, "--device", "cpu", "--out", str(out)]) == 0
    assert "fine-tuning a new run from its weights" in capsys.readouterr().out
    meta = read_checkpoint_meta(out)
    assert meta["model_name"] == "lvit_s" and meta["img_size"] == 128
    assert meta["training"]["epoch"] == 1

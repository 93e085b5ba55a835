"""The shipped default checkpoint: in the package, offline, good on fresh data, reads the text."""

import importlib.resources
import json
import os

import pytest

from src_models.data.synthetic import write_dataset
from src_models.engine.checkpoint import read_checkpoint_meta
from src_models.engine.evaluate import evaluate_left_right
from src_models.inference import DEFAULT_CHECKPOINT, Predictor


def test_the_default_checkpoint_is_package_data_and_small():
    shipped = importlib.resources.files("src_models") / "weights" / "default.safetensors"
    assert shipped.is_file() and os.path.samefile(shipped, DEFAULT_CHECKPOINT)
    meta = read_checkpoint_meta(DEFAULT_CHECKPOINT)
    assert meta["model_name"] == "lvit_s"
    assert meta["text_encoder"] == "all-MiniLM-L6-v2"
    assert DEFAULT_CHECKPOINT.stat().st_size < 8 * 2**20


@pytest.fixture(scope="module")
def predictor():
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # no hub: everything comes from the packages
    return Predictor("default", device="cpu")


def test_evaluate_default_on_fresh_qata_data(tmp_path, capsys, predictor):
    from src_models.cli import main

    write_dataset(tmp_path / "fresh", kind="qata", n=24, size=224, seed=9001)
    assert main(["evaluate", "default", str(tmp_path / "fresh"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 24
    assert result["dice"] >= 0.8


@pytest.mark.parametrize("style", ["short", "qata"])
def test_left_and_right_prompts_give_different_masks(predictor, style):
    result = evaluate_left_right(predictor, n=12, seed=9002, style=style)
    assert result["iou_between_prompts"] < 0.2
    assert result["dice"] >= 0.6  # and each mask finds the lesions its prompt names

"""`napari-lvit train` with the fewer-label options: SKS stage 1, CLCC, with and without EPI."""

import pytest

from src_models.cli import main
from src_models.data.synthetic import write_dataset


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("few")
    return write_dataset(root / "train", "qata", n=6, size=64, seed=0, empty_fraction=0.4)


@pytest.mark.parametrize("semi", ["none", "epi"])
def test_train_sks_clcc(split, tmp_path, capsys, semi):
    out = tmp_path / "m.safetensors"
    args = [
        "train", str(split), "--val", str(split), "--out", str(out),
        "--model", "sks_unet_tiny", "--img-size", "32", "--device", "cpu", "--no-text",
        "--epochs", "1", "--sks-epochs", "1", "--labeled-fraction", "0.5", "--clcc",
        "--clcc-images", "1", "--semi", semi, "--rounds", "1", "--round-epochs", "1",
    ]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "SKS stage 1: classifier on" in text and "classifier epoch 1/1" in text
    assert "without masks" in text and out.is_file()

"""GTGM-style pretraining: data (2D and volumes), the loop, the checkpoint, train --init."""

import math

import numpy as np
import pytest
import tifffile
import torch

from src_models.cli import main
from src_models.data.synthetic import write_dataset
from src_models.engine.checkpoint import read_checkpoint_meta, save_checkpoint
from src_models.engine.pretrain import (
    PretrainConfig,
    Pretrainer,
    image_encoder,
    load_pretrained_encoder,
    pretrain_dataset,
    pretrain_texts,
)
from src_models.models import create_model

SIZE = 32


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    return write_dataset(root / "train", "qata", n=6, size=64, seed=0, empty_fraction=0.3)


def test_volume_becomes_slices_and_plain_folders_work(tmp_path):
    vol = (np.random.default_rng(0).random((3, 40, 40)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "scan.tif", vol, photometric="minisblack")
    data = pretrain_dataset(tmp_path / "scan.tif", SIZE)
    assert len(data) == 3 and data.names[0].startswith("scan_z")
    folder = pretrain_dataset(tmp_path, SIZE)
    assert len(folder) == 3 and folder[0]["image"].shape == (3, SIZE, SIZE)


def test_pretrainer_terms_and_templates(split, fake_encoder):
    data = pretrain_dataset(split, SIZE)
    texts = pretrain_texts(data)
    assert all(texts) and len(data) == 6
    torch.manual_seed(0)
    model = create_model("lvit_tiny", img_size=SIZE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = PretrainConfig(epochs=2, batch_size=3, device="cpu")
    epochs = Pretrainer(model, data, fake_encoder, cfg).run()
    assert len(epochs) == 2 and epochs[0].n_text == 6
    assert all(math.isfinite(e.loss) and e.barlow > 0 and e.nce > 0 for e in epochs)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("encoder.") for k in changed)  # only the encoder


def test_encoder_loads_across_families(tmp_path):
    torch.manual_seed(0)
    src = create_model("lvit_tiny", img_size=SIZE)
    path = save_checkpoint(tmp_path / "pre.safetensors", src)
    dst = create_model("sks_lvit_tiny", img_size=SIZE)
    info = load_pretrained_encoder(dst, path)
    assert info["loaded"] == info["total"] == len(image_encoder(dst).state_dict())
    for k, v in image_encoder(src).state_dict().items():
        assert torch.equal(image_encoder(dst).state_dict()[k], v)
    wide = create_model("unet_tiny", img_size=SIZE, base_width=16)
    with pytest.raises(ValueError, match="no encoder tensor fits"):
        load_pretrained_encoder(wide, path)


def test_cli_pretrain_then_train_init(split, tmp_path, capsys):
    pre = tmp_path / "pre.safetensors"
    common = ["--model", "lvit_tiny", "--img-size", str(SIZE), "--device", "cpu", "--no-text"]
    assert (
        main(
            [
                "pretrain",
                str(split),
                "--out",
                str(pre),
                "--epochs",
                "1",
                "--batch-size",
                "3",
                *common,
            ]
        )
        == 0
    )
    meta = read_checkpoint_meta(pre)
    assert meta["training"]["kind"] == "pretrain" and meta["model_name"] == "lvit_tiny"
    out = tmp_path / "model.safetensors"
    args = ["train", str(split), "--out", str(out), "--epochs", "1", "--init", str(pre), *common]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "--init: loaded" in text and out.is_file()
    n = len(create_model("lvit_tiny", img_size=SIZE).encoder.state_dict())
    assert f"loaded {n}/{n} encoder tensors" in text

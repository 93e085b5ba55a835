"""Fixtures of the robustness suite (helpers: ``robustness_cases``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from robustness_cases import BIG_SIDE, png_header


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    """Small synthetic inputs, made once: a dataset, checkpoints, good and bad images."""
    import tifffile
    import torch
    from PIL import Image

    from src_models.data.synthetic import write_dataset
    from src_models.engine.checkpoint import save_checkpoint
    from src_models.models import create_model

    root = tmp_path_factory.mktemp("assets")
    write_dataset(root / "data", "qata", n=4, size=64, seed=0)
    torch.manual_seed(0)
    model = create_model("unet_tiny", img_size=32)
    save_checkpoint(root / "unet.safetensors", model)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_checkpoint(root / "nan.safetensors", model)
    text_model = create_model("lvit_tiny", text_dim=384)
    save_checkpoint(root / "text.safetensors", text_model, {"text_encoder": "all-MiniLM-L6-v2"})

    rng = np.random.default_rng(0)
    noise = (rng.random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(root / "scan.png")
    data = (root / "scan.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "garbage.png").write_bytes(b"this is not a PNG file at all" * 10)
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image\n")
    tifffile.imwrite(root / "volume.tif", np.zeros((5, 32, 32), np.uint8))
    tifffile.imwrite(root / "nan.tif", np.full((32, 32), np.nan, np.float32))
    tifffile.imwrite(root / "inf.tif", np.full((32, 32), np.inf, np.float32))
    png_header(root / "big.png", BIG_SIDE, BIG_SIDE)
    return root


@pytest.fixture
def ws(assets, tmp_path) -> Path:
    """This case's own copy of the assets (its working folder)."""
    return Path(shutil.copytree(assets, tmp_path / "ws"))

"""Fixtures of the robustness suite (helpers: ``robustness_cases``).

Issue 20: every bad input ends in one clear line and changes nothing on disk. The suite holds
204 cases (collected test items), by what is bad in them:

==========================  =====  ==================================================
kind                        cases  e.g.
==========================  =====  ==================================================
image                          27  corrupt / truncated / [H, W, 2] / NaN / 20000 px,
                                   a CT window on an 8-bit image
text                           10  not UTF-8 (``--text``, tables, ``<image>.txt``),
                                   a pickle as encoder weights, empty or too long
checkpoint                     32  corrupt, NaN weights, threshold NaN / -1 / 1e9,
                                   width 65536, depth 10^6, trained with ``--no-text``
dataset                        31  masks with a background of 1-3, missing masks,
                                   wrong sizes, bad tables, bad masks committed
project                        29  corrupt / foreign / newer manifest, creation killed
                                   half way, read-only project, full disk on commit,
                                   ``pseudo`` on no project / no round / bad confidence
output path                    21  an input as output, ``--prob-out`` = ``--out``, a
                                   wrong suffix, read-only folder, ``synth --size``
flags, devices, boundary       24  thresholds outside (0, 1), bad devices, usage
                                   errors, unexpected errors (``--debug``),
                                   ``--workers -1``, ``--clicks -2``
prompts (issue 14)             30  clicks outside the image, NaN, a sign of 0,
                                   a box of zero area or outside, 10,000 clicks,
                                   clicks for a model without prompt inputs or a
                                   tiled prediction, ``--click`` / ``--box`` syntax
==========================  =====  ==================================================
"""

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
    tifffile.imwrite(root / "two_channels.tif", np.zeros((64, 48, 2), np.uint8))  # [H, W, 2]
    png_header(root / "big.png", BIG_SIDE, BIG_SIDE)
    return root


@pytest.fixture
def ws(assets, tmp_path) -> Path:
    """This case's own copy of the assets (its working folder)."""
    return Path(shutil.copytree(assets, tmp_path / "ws"))

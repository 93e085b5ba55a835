import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from src_models.engine import (
    CheckpointError,
    load_checkpoint,
    load_train_state,
    load_weights_into,
    read_checkpoint_meta,
    save_checkpoint,
    save_train_state,
)
from src_models.engine.checkpoint import capture_rng_state, restore_rng_state, train_state_path
from src_models.models import create_model


@pytest.fixture
def lvit():
    torch.manual_seed(0)
    return create_model("lvit_tiny")


def _inputs(model):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, model.img_size, model.img_size, generator=g)
    text = torch.randn(2, 5, model.text_dim, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    return x, text, mask


def test_round_trip_rebuilds_the_model_with_the_same_output(tmp_path, lvit):
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        lvit,
        {"text_encoder": "fake-hash-384", "training": {"epochs": 3, "metrics": {"dice": 0.5}}},
    )
    model, meta = load_checkpoint(path)
    assert type(model) is type(lvit) and not model.training
    lvit.eval()
    x, text, mask = _inputs(lvit)
    with torch.no_grad():
        assert torch.equal(model(x, text=text, text_mask=mask), lvit(x, text=text, text_mask=mask))
    assert meta["model_name"] == "lvit_tiny"
    assert meta["model_config"] == lvit.model_config
    assert meta["text_encoder"] == "fake-hash-384"
    assert meta["img_size"] == 64 and meta["in_chans"] == 3
    assert meta["normalisation"] == "scale01" and meta["threshold"] == 0.5
    assert meta["training"]["metrics"] == {"dice": 0.5}
    assert set(meta["versions"]) == {"torch", "src_models"} and meta["created"]
    assert read_checkpoint_meta(path) == meta
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file


def test_ddp_style_wrapped_model_is_unwrapped(tmp_path, lvit):
    class Wrapper(torch.nn.Module):  # stands in for torch.compile's _orig_mod wrapper
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    path = save_checkpoint(tmp_path / "w.safetensors", Wrapper(lvit))
    model, _ = load_checkpoint(path)
    assert set(model.state_dict()) == set(lvit.state_dict())


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_not_a_safetensors_file(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors file or it is corrupt"):
        load_checkpoint(p)


def test_truncated_file_is_corrupt(tmp_path, lvit):
    path = save_checkpoint(tmp_path / "m.safetensors", lvit)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_foreign_safetensors_file(tmp_path):
    p = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(p), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a napari-lvit checkpoint"):
        load_checkpoint(p)


def test_unknown_model_name(tmp_path, lvit):
    path = save_checkpoint(tmp_path / "m.safetensors", lvit)
    _rewrite_meta(path, model_name="lvit_from_the_future")
    with pytest.raises(CheckpointError, match="lvit_from_the_future.*does not know"):
        load_checkpoint(path)


def test_weights_of_another_model(tmp_path):
    unet = create_model("unet_tiny")
    path = save_checkpoint(tmp_path / "u.safetensors", unet)
    _rewrite_meta(path, model_name="lvit_tiny", model_config={})
    with pytest.raises(CheckpointError, match="do not match model 'lvit_tiny'.*another model"):
        load_checkpoint(path)
    # loading into an existing model of another kind is refused by name ...
    with pytest.raises(CheckpointError, match="not a 'unet_tiny'"):
        load_weights_into(create_model("unet_tiny"), path)
    # ... and into the same kind with another configuration by shape
    good = save_checkpoint(tmp_path / "u8.safetensors", create_model("unet_tiny"))
    with pytest.raises(CheckpointError, match="another shape"):
        load_weights_into(create_model("unet_tiny", base_width=16), good)


def test_model_without_registry_name_cannot_be_saved(tmp_path):
    with pytest.raises(CheckpointError, match="create_model"):
        save_checkpoint(tmp_path / "x.safetensors", torch.nn.Linear(2, 2))


def test_newer_format_is_refused(tmp_path, lvit):
    path = save_checkpoint(tmp_path / "m.safetensors", lvit)
    _rewrite_meta(path, format_version=99)
    with pytest.raises(CheckpointError, match="newer napari-lvit"):
        read_checkpoint_meta(path)


def test_train_state_loads_with_weights_only_and_restores_rng(tmp_path):
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    state = {"optimizer": opt.state_dict(), "rng": capture_rng_state(), "epoch": 4}
    path = save_train_state(train_state_path(tmp_path / "m.safetensors"), state)
    assert path.name == "m.train_state.pt"
    expected = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    loaded = torch.load(path, weights_only=True)  # must not need unsafe unpickling
    assert loaded["epoch"] == 4
    restore_rng_state(load_train_state(path)["rng"])
    got = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_missing_or_foreign_train_state(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_train_state(tmp_path / "none.train_state.pt")
    p = tmp_path / "x.train_state.pt"
    torch.save({"something": 1}, p)
    with pytest.raises(CheckpointError, match="not a napari-lvit training state"):
        load_train_state(p)


def _rewrite_meta(path, **changes):
    from safetensors.torch import load_file

    meta = read_checkpoint_meta(path)
    meta.update(changes)
    save_file(load_file(str(path)), str(path), metadata={"napari_lvit": json.dumps(meta)})

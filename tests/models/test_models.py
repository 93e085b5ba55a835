"""Tests of the model families (LViT, U-Net): interface, gradients, text handling, rebuild."""

from __future__ import annotations

import json

import pytest
import torch

from src_models.models import create_model, is_model, list_models
from src_models.models.lvit import LViT, LViTConfig
from src_models.models.profile import count_macs, count_parameters, dummy_inputs

TINY = list_models("*_tiny")
EXPECTED = [
    "lvit_s",
    "lvit_t",
    "lvit_tiny",
    "reclmis",
    "reclmis_s",
    "reclmis_tiny",
    "unet",
    "unet_s",
    "unet_tiny",
]


def _inputs(model, batch=2, length=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, model.in_chans, model.img_size, model.img_size, generator=g)
    n = length if length is not None else model.config.text_len
    text = torch.randn(batch, n, model.text_dim, generator=g)
    return image, text


def test_registry_lists_all_families():
    names = list_models()
    for name in EXPECTED:
        assert name in names
        assert is_model(name)
    assert set(TINY) >= {"lvit_tiny", "unet_tiny"}


@pytest.mark.parametrize("name", [n for n in EXPECTED if n != "lvit_t"])
def test_every_model_builds_with_interface(name):
    torch.manual_seed(0)
    m = create_model(name)
    assert m.model_name == name
    assert isinstance(m.uses_text, bool)
    assert m.uses_text == name.startswith(("lvit", "reclmis"))
    assert m.img_size == m.config.img_size and m.in_chans == m.config.in_chans
    assert m.text_dim == m.config.text_dim
    json.dumps(m.model_config)  # JSON-serialisable


def test_unknown_model_names_registered_ones():
    with pytest.raises(KeyError) as err:
        create_model("no_such_model")
    assert "lvit_tiny" in str(err.value) and "unet" in str(err.value)


def test_unknown_config_field_raises():
    with pytest.raises(TypeError, match="base_width"):
        create_model("lvit_tiny", no_such_field=3)


@pytest.mark.parametrize("name", TINY)
def test_wrong_image_size_raises(name):
    m = create_model(name).eval()
    with pytest.raises(ValueError, match=rf"\[B, 3, {m.img_size}, {m.img_size}\]"):
        m(torch.rand(1, 3, m.img_size + 16, m.img_size + 16))
    with pytest.raises(ValueError, match=str(m.img_size)):
        m(torch.rand(1, 1, m.img_size, m.img_size))


def test_lvit_t_parameter_count():
    m = create_model("lvit_t", text_dim=768)
    n = count_parameters(m)
    assert abs(n - 29.7e6) / 29.7e6 < 0.01, n


def test_text_dim_override():
    m = create_model("lvit_tiny", text_dim=768)
    assert m.text_dim == 768 and m.model_config["text_dim"] == 768
    m.eval()
    image, text = _inputs(m, batch=1)
    assert text.shape[-1] == 768
    with torch.no_grad():
        assert m(image, text).shape == (1, 1, m.img_size, m.img_size)


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_backward_all_params_get_gradients(name):
    torch.manual_seed(0)
    m = create_model(name).train()
    image, text = _inputs(m, batch=2)
    mask = torch.ones(2, text.shape[1], dtype=torch.bool)
    mask[1, 20:] = False
    out = m(image, text, mask)
    assert out.shape == (2, 1, m.img_size, m.img_size)
    assert torch.isfinite(out).all()
    target = (torch.rand_like(out) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out, target)
    # Training-only modules (e.g. RecLMIS's reconstruction) learn from the model's own terms.
    auxiliary = getattr(m, "auxiliary_losses", None)
    if callable(auxiliary):
        loss = loss + sum(auxiliary().values())
    loss.backward()
    # Frozen parameters (SKS's stage-1 classifier during segmentation training) are left out.
    trained = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    missing = [n for n, p in trained if p.grad is None]
    assert not missing, f"parameters without gradient (dead modules?): {missing}"
    zero = [n for n, p in trained if not p.grad.abs().sum() > 0]
    assert not zero, f"parameters with an all-zero gradient: {zero}"
    assert all(torch.isfinite(p.grad).all() for _, p in trained)


@pytest.mark.parametrize("name", TINY)
def test_tiny_rebuild_from_model_config(name):
    torch.manual_seed(0)
    m = create_model(name)
    m2 = create_model(m.model_name, **m.model_config)
    m2.load_state_dict(m.state_dict(), strict=True)
    assert m2.model_config == m.model_config
    m.eval()
    m2.eval()
    image, text = _inputs(m, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(m(image, text), m2(image, text))


@pytest.fixture(scope="module")
def lvit():
    torch.manual_seed(0)
    return create_model("lvit_tiny").eval()


def test_text_changes_output(lvit):
    image, text = _inputs(lvit, batch=1, length=12, seed=1)
    _, other = _inputs(lvit, batch=1, length=12, seed=2)
    with torch.no_grad():
        a = lvit(image, text)
        b = lvit(image, other)
    assert not torch.allclose(a, b)


def test_last_words_of_long_text_matter(lvit):
    image, text = _inputs(lvit, batch=1, length=30, seed=3)
    changed = text.clone()
    changed[:, 10:] = torch.randn_like(changed[:, 10:])
    with torch.no_grad():
        a = lvit(image, text)
        b = lvit(image, changed)
    assert (a - b).abs().max() > 1e-6


def test_padded_tokens_have_no_influence(lvit):
    image, text = _inputs(lvit, batch=2, length=25, seed=4)
    mask = torch.ones(2, 25, dtype=torch.bool)
    mask[:, 15:] = False
    mask[1, 8:] = False
    changed = text.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), text.shape[-1]) * 10
    with torch.no_grad():
        a = lvit(image, text, mask)
        b = lvit(image, changed, mask)
        # Padding by the caller and internal padding to text_len are the same thing.
        c = lvit(image[:1], text[:1, :15])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a[:1], c, rtol=0, atol=1e-5)


def test_text_longer_than_text_len_is_truncated(lvit):
    n = lvit.config.text_len
    image, text = _inputs(lvit, batch=1, length=n + 7, seed=5)
    changed = text.clone()
    changed[:, n:] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(lvit(image, text), lvit(image, changed))
        assert lvit(image, text[:, :n]).shape == (1, 1, lvit.img_size, lvit.img_size)


def test_no_text_runs_and_equals_all_padding(lvit):
    image, text = _inputs(lvit, batch=2, length=10, seed=6)
    with torch.no_grad():
        a = lvit(image)
        b = lvit(image, text, torch.zeros(2, 10, dtype=torch.bool))
    assert a.shape == (2, 1, lvit.img_size, lvit.img_size) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


def test_bad_text_shapes_raise(lvit):
    image, text = _inputs(lvit, batch=1, length=5)
    with pytest.raises(ValueError, match=str(lvit.text_dim)):
        lvit(image, text[..., :-1])
    with pytest.raises(ValueError, match="text_mask"):
        lvit(image, text, torch.ones(1, 4, dtype=torch.bool))


def test_unet_ignores_text():
    torch.manual_seed(0)
    m = create_model("unet_tiny").eval()
    image, text = _inputs(m, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(m(image), m(image, text, torch.ones(1, 40, dtype=torch.bool)))


@pytest.mark.parametrize(
    "kwargs",
    [dict(img_size=72), dict(base_width=8, vit_heads=3), dict(vit_dropout=1.0)],
)
def test_invalid_lvit_config_raises(kwargs):
    with pytest.raises(ValueError):
        LViTConfig(**{"base_width": 8, "vit_heads": 2, **kwargs})


def test_vit_depth_and_unet_transpose_variants():
    torch.manual_seed(0)
    for m in (
        create_model("lvit_tiny", vit_depth=2),
        create_model("unet_tiny", up_mode="transpose"),
    ):
        image, text = _inputs(m, batch=2)
        m(image, text).mean().backward()
        assert all(p.grad is not None for p in m.parameters())


def test_profile_helpers():
    m = create_model("lvit_tiny")
    assert isinstance(m, LViT)
    assert count_parameters(m) == sum(p.numel() for p in m.parameters())
    macs = count_macs(m)
    assert isinstance(macs, int) and macs > 0
    assert m.training  # count_macs restores the mode
    image, text = dummy_inputs(create_model("unet_tiny"))
    assert text is None and image.shape == (1, 3, 64, 64)


def test_lvit_fast_paths_equal_the_reference_formulation():
    """Reconstruct on the grid, unfold-matmul patch embedding and PLAM's matmul MLP compute
    exactly what the official formulation (upsample -> conv, strided conv, Linear) computes."""
    import torch.nn.functional as F

    from src_models.models.blocks import PLAM
    from src_models.models.lvit import DownViT, Reconstruct

    torch.manual_seed(0)
    cfg = LViTConfig(img_size=64, base_width=8, vit_heads=2, vit_dropout=0.0)
    # Reconstruct, in training mode (batch statistics).
    rec = Reconstruct(16).train()
    tokens, skip = torch.randn(2, 16, 16), torch.randn(2, 16, 32, 32)
    grid = F.interpolate(tokens.transpose(1, 2).reshape(2, 16, 4, 4), scale_factor=8)
    bn = torch.nn.BatchNorm2d(16).train()
    ref = F.relu(bn(rec.conv(grid))) + skip
    torch.testing.assert_close(rec(tokens, skip), ref)
    # Patch embedding.
    down = DownViT(cfg, 16, 8, reduce=False).eval()
    x = torch.randn(2, 16, 32, 32)
    emb = down.patch_embed(x).flatten(2).transpose(1, 2) + down.pos_embed
    with torch.no_grad():
        torch.testing.assert_close(down(x), down.blocks(emb))
    # PLAM.
    plam = PLAM(8)
    x = torch.randn(2, 8, 16, 16)
    b = F.relu(plam.branches(x))
    avg, mx = b[:, :8].mean(1, keepdim=True), b[:, 8:].max(1, keepdim=True).values
    stack = torch.cat([avg, mx, avg + mx], 1).permute(0, 2, 3, 1)
    att = plam.fc2(F.relu(plam.fc1(stack))).permute(0, 3, 1, 2)
    torch.testing.assert_close(plam(x), x * att)

"""The multi-scale text couplings: paper models unchanged, old checkpoints as before, and a
coupling whose words move the mask."""

import dataclasses

import numpy as np
import pytest
import torch

from src_models.engine.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from src_models.models import create_model
from src_models.models.lvit import LViTConfig
from src_models.models.text_coupling import TEXT_COUPLINGS, position_code


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Repeatable float results, and no spinning second thread beside other jobs."""


def _leave_the_zero_start(model) -> None:
    """Random weights in the coupling's matrices (it starts as the identity), so words count."""
    for p in model.coupling.parameters():
        if p.ndim > 1:
            torch.nn.init.normal_(p, std=0.3)


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_paper_coupling_is_the_default_and_builds_the_published_model():
    assert LViTConfig().text_coupling == "paper"
    paper = create_model("lvit_t")
    assert paper.coupling is None and paper.model_config["text_coupling"] == "paper"
    assert _n_params(paper) == 29_925_673  # README: 29.93M
    explicit = create_model("lvit_t", text_coupling="paper")
    assert explicit.state_dict().keys() == paper.state_dict().keys()


def test_a_new_coupling_is_chosen_through_create_model_and_checked():
    for name in TEXT_COUPLINGS[1:]:
        model = create_model("lvit_tiny", text_coupling=name)
        assert model.coupling is not None and model.coupling.kind == name
        assert model.model_config["text_coupling"] == name
    with pytest.raises(ValueError, match="text_coupling must be one of"):
        create_model("lvit_tiny", text_coupling="cross")


@pytest.mark.parametrize("coupling", TEXT_COUPLINGS[1:])
def test_padding_is_ignored_and_no_text_is_finite(coupling):
    torch.manual_seed(0)
    model = create_model("lvit_tiny", text_coupling=coupling).eval()
    _leave_the_zero_start(model)
    image = torch.rand(2, 3, 64, 64)
    text = torch.randn(2, 7, 384)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    garbage = text.clone()
    garbage[1, 4:] = 1e3
    with torch.no_grad():
        out = model(image, text, mask)
        assert torch.allclose(out, model(image, garbage, mask), atol=1e-5)
        other = text.clone()
        other[0] = torch.randn(7, 384)  # other real words: the output moves
        assert (out[0] - model(image, other, mask)[0]).abs().max() > 1e-3
        assert torch.isfinite(model(image)).all()


def test_position_code_tells_every_cell_apart():
    code = position_code(6, 6, 3, torch.zeros(1))[0].flatten(1).T  # [36, 12]
    assert code.shape == (36, 12)
    assert torch.cdist(code, code).add(torch.eye(36)).min() > 0.1


def _old_style_checkpoint(model, path):
    """What a checkpoint written before the coupling existed holds: no ``text_coupling``."""
    model.model_config = {
        k: v for k, v in dataclasses.asdict(model.config).items() if k != "text_coupling"
    }
    return save_checkpoint(path, model, {"text_encoder": "all-MiniLM-L6-v2"})


def test_an_old_checkpoint_loads_as_the_paper_model_and_predicts_the_same(tmp_path):
    torch.manual_seed(1)
    old = create_model("lvit_tiny").eval()
    path = _old_style_checkpoint(old, tmp_path / "old.safetensors")
    assert "text_coupling" not in read_checkpoint_meta(path)["model_config"]
    loaded, _ = load_checkpoint(path)
    loaded.eval()
    assert loaded.coupling is None and loaded.config.text_coupling == "paper"
    image, text = torch.rand(2, 3, 64, 64), torch.randn(2, 9, 384)
    with torch.no_grad():
        assert torch.equal(loaded(image, text), old(image, text))


def test_the_shipped_default_loads_as_a_paper_model():
    from src_models.inference import DEFAULT_CHECKPOINT

    meta = read_checkpoint_meta(DEFAULT_CHECKPOINT)
    assert meta["model_config"].get("text_coupling", "paper") == "paper"
    model, _ = load_checkpoint(DEFAULT_CHECKPOINT)
    assert model.coupling is None and model.config.text_coupling == "paper"
    assert _n_params(model) == _n_params(create_model(meta["model_name"], **meta["model_config"]))


def test_a_new_coupling_survives_its_checkpoint(tmp_path):
    torch.manual_seed(2)
    model = create_model("lvit_tiny", text_coupling="word_attention").eval()
    _leave_the_zero_start(model)
    path = save_checkpoint(tmp_path / "new.safetensors", model)
    assert read_checkpoint_meta(path)["model_config"]["text_coupling"] == "word_attention"
    loaded, _ = load_checkpoint(path)
    image, text = torch.rand(1, 3, 64, 64), torch.randn(1, 5, 384)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(image, text), model(image, text))


def test_reclmis_takes_the_coupling_and_gives_up_feature_reuse_only_then():
    paper = create_model("reclmis_tiny")
    assert paper.coupling is None and paper.supports_feature_reuse
    coupled = create_model("reclmis_tiny", text_coupling="word_attention").eval()
    assert not coupled.supports_feature_reuse
    _leave_the_zero_start(coupled)
    image, text = torch.rand(1, 3, 64, 64), torch.randn(1, 6, 384)
    with torch.no_grad():
        out = coupled(image, text)
        assert out.shape == (1, 1, 64, 64) and torch.isfinite(coupled(image)).all()
        assert (out - coupled(image, torch.randn(1, 6, 384))).abs().max() > 1e-3
    with pytest.raises(RuntimeError, match="no text-independent part"):
        coupled.encode_image(image)


# --------------------------------------------------------------------------- steering

_PAIR = ("disk", "cross")


def _scenes(seed: int, n: int, size: int = 64):
    """Images with one disk and one cross in two random cells; the text names one of them."""
    from src_models.data.referring import render_scene

    rng = np.random.default_rng(seed)
    images, masks, names, objects = [], [], [], []
    for _ in range(n):
        cells = rng.choice(9, size=2, replace=False)
        specs = [(s, "big", int(c) // 3, int(c) % 3) for s, c in zip(_PAIR, cells, strict=True)]
        image, objs = render_scene(rng, size, specs)
        k = int(rng.integers(0, 2))
        images.append(image)
        masks.append(objs[k].mask)
        names.append(_PAIR[k])
        objects.append(objs)
    x = torch.from_numpy(np.stack(images)).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    y = torch.from_numpy(np.stack(masks)).float().unsqueeze(1)
    return x.contiguous(), y, names, objects


def train_to_steer(text_encoder, coupling: str, steps: int, seed: int = 0):
    """A tiny model trained for ``steps`` Adam steps (batch 8) on :func:`_scenes`."""
    from src_models.losses.dice_bce import DiceBCELoss

    torch.manual_seed(seed)
    model = create_model("lvit_tiny", text_coupling=coupling)
    feats = {s: text_encoder.encode([f"the {s}"]) for s in _PAIR}
    x, y, names, _ = _scenes(seed, 64)
    loss_fn = DiceBCELoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        idx = rng.choice(len(names), size=8, replace=False)
        tokens = torch.cat([feats[names[i]].tokens for i in idx])
        keep = torch.cat([feats[names[i]].mask for i in idx])
        loss = loss_fn(model(x[idx], tokens, keep), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), feats


def steering_scores(model, feats, seed: int = 99, n: int = 8):
    """For held-out scenes: per text, the share of each object covered by the predicted mask."""
    x, _, _, objects = _scenes(seed, n)
    out = {}
    with torch.no_grad():
        for s in _PAIR:
            f = feats[s]
            pred = model(x, f.tokens.expand(n, -1, -1), f.mask.expand(n, -1)) > 0
            cover = [
                [float(pred[i, 0][torch.from_numpy(o.mask)].float().mean()) for o in objects[i]]
                for i in range(n)
            ]
            out[s] = np.array(cover)  # [n, 2]: disk, cross
    return out


def test_swapping_the_named_object_moves_the_mask(text_encoder):
    model, feats = train_to_steer(text_encoder, "word_attention", steps=60)
    scores = steering_scores(model, feats)
    disk_text, cross_text = scores["disk"].mean(0), scores["cross"].mean(0)
    # "the disk" covers the disk more than the cross, "the cross" the other way round
    assert disk_text[0] > disk_text[1] + 0.3, scores
    assert cross_text[1] > cross_text[0] + 0.3, scores


def test_the_word_attention_variant_has_its_own_name():
    model = create_model("lvit_s_wordattn", img_size=128)
    assert model.coupling.kind == "word_attention" and model.model_name == "lvit_s_wordattn"
    paper = create_model("lvit_s", img_size=128)
    assert paper.coupling is None
    extra = _n_params(model) - _n_params(paper)
    assert extra == _n_params(model.coupling) and 0 < extra < 0.15 * _n_params(paper)

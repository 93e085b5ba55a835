"""Prompt inputs (clicks, box, previous mask): the zero start changes nothing, checkpoints with
and without them load, the maps say what the clicks say."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from src_models.engine.checkpoint import (
    load_checkpoint,
    load_weights_into,
    read_checkpoint_meta,
    save_checkpoint,
)
from src_models.inference import DEFAULT_CHECKPOINT, Predictor
from src_models.models import create_model, list_models
from src_models.models.prompts import (
    add_prompt_inputs,
    click_radius,
    encode_prompts,
    entry_conv,
    prompting,
    reads_prompts,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = [n for n in list_models() if n.endswith("_tiny")]


def _maps(size: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    clicks = [[(*rng.integers(0, size, 2), 1), (*rng.integers(0, size, 2), -1)]]
    prev = torch.from_numpy(rng.random((1, 1, size, size)).astype(np.float32))
    return encode_prompts(size, clicks, [(3, 4, size // 2, size // 3)], prev)


@pytest.mark.parametrize("name", TINY)
def test_every_family_gets_prompt_inputs_that_start_at_zero(name):
    torch.manual_seed(0)
    plain = create_model(name, text_dim=384).eval()
    prompted = create_model(name, prompts=True, text_dim=384).eval()
    assert reads_prompts(prompted) and not reads_prompts(plain)
    assert prompted.model_config["prompts"] is True
    prompted.load_state_dict(plain.state_dict(), strict=False)
    size = plain.img_size
    image = torch.rand(1, 3, size, size)
    text = torch.randn(1, 5, 384) if plain.uses_text else None
    with torch.no_grad():
        before = plain(image, text)
        with prompting(prompted, _maps(size)):
            after = prompted(image, text)
    assert torch.equal(before, after)
    # once the adapter is not zero, the clicks change the logits
    with torch.no_grad():
        prompted.prompt_adapter.project.weight.normal_()
        with prompting(prompted, _maps(size)):
            changed = prompted(image, text)
        unprompted = prompted(image, text)
    assert not torch.allclose(changed, before)
    assert torch.equal(unprompted, before)  # no maps: the text-only model exactly


def test_all_zero_maps_add_exactly_nothing_even_after_training():
    torch.manual_seed(0)
    model = create_model("unet_tiny", prompts=True).eval()
    with torch.no_grad():
        model.prompt_adapter.project.weight.normal_()
        image = torch.rand(2, 3, 64, 64)
        with prompting(model, torch.zeros(2, 4, 64, 64)):
            zero = model(image)
        assert torch.equal(zero, model(image))


def test_prompting_refuses_a_model_without_prompt_inputs_and_bad_maps():
    plain = create_model("unet_tiny")
    with (
        pytest.raises(ValueError, match="reads no clicks"),
        prompting(plain, torch.zeros(1, 4, 8, 8)),
    ):
        pass
    with prompting(plain, None):  # no prompts: always fine
        pass
    prompted = create_model("unet_tiny", prompts=True)
    with (
        pytest.raises(ValueError, match=r"\[B, 4, S, S\]"),
        prompting(prompted, torch.zeros(1, 3, 8, 8)),
    ):
        pass


def test_the_prompts_enter_the_segmentation_network_of_sks():
    model = create_model("sks_unet_tiny", prompts=True)
    assert entry_conv(model)[0] == "seg.encoder.inc.0"


def test_a_deep_copy_feeds_its_own_adapter():
    torch.manual_seed(0)
    model = create_model("unet_tiny", prompts=True).eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.prompt_adapter.project.weight.normal_()
        image, maps = torch.rand(1, 3, 64, 64), _maps(64)
        with prompting(twin, maps):
            moved = twin(image)
        with prompting(model, maps):
            still = model(image)
        assert not torch.allclose(moved, still)
        assert torch.equal(still, model(image))


def test_click_maps_are_disks_the_box_is_filled_and_many_clicks_cost_the_same():
    size = 64
    r = click_radius(size)
    maps = encode_prompts(size, [[(10, 20, 1), (40, 50, -1)]], [(30, 5, 20, 15)])
    pos, neg, box = maps[0, 0], maps[0, 1], maps[0, 2]
    assert pos[10, 20] == 1 and pos[10, 20 + r] == 1 and pos[10, 20 + r + 1] == 0
    assert neg[40, 50] == 1 and pos[40, 50] == 0 and neg[10, 20] == 0
    assert int(pos.sum()) == int(neg.sum())  # the same disk
    assert box[20:31, 5:16].all() and box.sum() == 11 * 11  # corners in any order, inclusive
    many = [[(y, x, 1 if (y + x) % 2 else -1) for y in range(100) for x in range(100)]]
    dense = encode_prompts(size, many)  # 10,000 clicks, clamped into the map
    assert dense[0, 0].all() and dense[0, 1].all()


def test_a_checkpoint_from_before_prompts_loads_and_predicts_the_same_mask(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet_tiny")  # today's code path: no prompts
    path = save_checkpoint(tmp_path / "old.safetensors", model)
    assert read_checkpoint_meta(path)["reads_prompts"] is False
    image = np.random.default_rng(0).random((80, 90)).astype(np.float32)
    expected = Predictor(model, device="cpu").predict(image).prob
    loaded, meta = load_checkpoint(path)
    assert not reads_prompts(loaded) and "prompts" not in meta["model_config"]
    assert np.array_equal(Predictor(loaded, device="cpu").predict(image).prob, expected)
    # its weights also load into a prompted model, which then predicts the same with clicks
    prompted = create_model("unet_tiny", prompts=True)
    with torch.no_grad():
        prompted.prompt_adapter.project.weight.normal_()  # a trained adapter goes back to zero
    load_weights_into(prompted, path)
    clicked = Predictor(prompted, device="cpu").predict(image, clicks=[(40, 45, 1)]).prob
    assert np.array_equal(clicked, expected)


def test_a_prompted_checkpoint_rebuilds_its_adapter(tmp_path):
    torch.manual_seed(0)
    model = create_model("lvit_tiny", prompts=True, text_dim=384)
    with torch.no_grad():
        model.prompt_adapter.project.weight.normal_()
    path = save_checkpoint(tmp_path / "clicks.safetensors", model)
    loaded, meta = load_checkpoint(path)
    assert meta["reads_prompts"] is True and reads_prompts(loaded)
    assert torch.equal(loaded.prompt_adapter.project.weight, model.prompt_adapter.project.weight)


def test_the_shipped_default_reads_clicks_and_its_text_weights_alone_predict_the_same(
    tmp_path, text_encoder
):
    """The default as a checkpoint of before prompts (its adapter left out) predicts the same
    text-only mask, and a zero adapter added to that one ignores clicks; the shipped one's
    trained adapter does not."""
    from src_models.data.synthetic import sample_chest_xray

    image, _mask, text = sample_chest_xray(seed=3, size=256)
    shipped = Predictor("default", device="cpu", text_encoder=text_encoder)
    assert shipped.reads_prompts
    expected = shipped.predict(image, text).mask
    model, meta = load_checkpoint(DEFAULT_CHECKPOINT)
    config = {k: v for k, v in meta["model_config"].items() if k != "prompts"}
    plain = create_model(meta["model_name"], **config)
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("prompt_adapter.")}
    )
    before, _ = load_checkpoint(save_checkpoint(tmp_path / "before.safetensors", plain))
    assert not reads_prompts(before)
    assert np.array_equal(
        Predictor(before, device="cpu", text_encoder=text_encoder).predict(image, text).mask,
        expected,
    )
    add_prompt_inputs(before)
    zero = Predictor(before, device="cpu", text_encoder=text_encoder)
    prompts = {"clicks": [(128, 100, 1)], "box": (20, 20, 200, 220)}
    assert np.array_equal(zero.predict(image, text, **prompts).mask, expected)
    assert not np.array_equal(shipped.predict(image, text, **prompts).mask, expected)


def _random_adapter_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("unet_tiny", img_size=32, prompts=True).eval()
    with torch.no_grad():
        model.prompt_adapter.project.weight.normal_()
    return model


def test_tiled_clicks_are_the_whole_image_clicks_when_one_tile_covers_the_image():
    model = _random_adapter_model()
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    prompts = {
        "clicks": [(20, 9, 1), (4, 27, -1)],
        "box": (3, 5, 25, 30),
        "previous": np.random.default_rng(1).random((32, 32)),
    }
    whole = Predictor(model, device="cpu").predict_prob(image, **prompts)
    tiled = Predictor(model, device="cpu", tile=True, tile_min_side=16)
    assert tiled.uses_tiles(image.shape)
    assert np.allclose(tiled.predict_prob(image, **prompts), whole, atol=1e-5)
    assert not np.allclose(tiled.predict_prob(image), whole, atol=1e-3)  # the prompts count


def test_a_tiled_click_changes_only_the_tiles_it_falls_into():
    model = _random_adapter_model()
    image = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    tiled = Predictor(model, device="cpu", tile=True, tile_min_side=32)
    plain = tiled.predict_prob(image)
    # 32 px tiles at a 16 px stride: only the tile at (0, 0) holds a click at (5, 5) ...
    corner = tiled.predict_prob(image, clicks=[(5, 5, 1)])
    changed = ~np.isclose(corner, plain, atol=1e-6)
    assert changed[:32, :32].any() and not changed[32:].any() and not changed[:, 32:].any()
    # ... and a click at the far corner changes only the last tile's
    far = tiled.predict_prob(image, clicks=[(90, 92, -1)])
    changed = ~np.isclose(far, plain, atol=1e-6)
    assert changed[64:, 64:].any() and not changed[:64].any() and not changed[:, :64].any()


def test_a_later_tiled_click_reruns_only_the_tiles_it_changes():
    model = _random_adapter_model()
    image = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    tiled = Predictor(model, device="cpu", tile=True, tile_min_side=32)
    first = tiled.predict_prob(image, clicks=[(5, 5, 1)])
    assert tiled._tile_outputs.info()["misses"] == 25  # 5 x 5 tiles, all new
    again = tiled.predict_prob(image, clicks=[(5, 5, 1)])
    assert np.array_equal(again, first) and tiled._tile_outputs.info()["misses"] == 25
    more = tiled.predict_prob(image, clicks=[(5, 5, 1), (90, 92, -1)])
    assert tiled._tile_outputs.info()["misses"] == 26  # only the last tile holds the new click
    fresh = Predictor(model, device="cpu", tile=True, tile_min_side=32)
    assert np.allclose(more, fresh.predict_prob(image, clicks=[(5, 5, 1), (90, 92, -1)]))
    # new weights: nothing is reused
    with torch.no_grad():
        model.prompt_adapter.project.weight.mul_(2)
    tiled.predict_prob(image, clicks=[(5, 5, 1)])
    assert tiled._tile_outputs.info()["misses"] == 51

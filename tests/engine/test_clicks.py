"""The click simulation on hand-made masks: where the RITM protocol puts each click."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src_models.engine.clicks import (
    ClickTraining,
    farthest_point,
    first_click,
    largest_component,
    next_click,
    perfect_click,
    wrong_proposal,
)
from src_models.engine.events import BatchEnd
from src_models.engine.trainer import TrainConfig, Trainer
from src_models.models import create_model


def _square(shape, top, left, side) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[top : top + side, left : left + side] = True
    return out


def test_the_farthest_point_is_the_middle_and_the_border_is_a_boundary():
    assert farthest_point(_square((40, 40), 10, 20, 11)) == (15, 25)
    # a region touching the image edge: its middle, not the edge pixel
    assert farthest_point(_square((40, 40), 0, 0, 9)) == (4, 4)
    assert farthest_point(np.zeros((5, 5), bool)) is None


def test_the_first_click_goes_into_the_largest_component():
    target = _square((64, 64), 2, 2, 5) | _square((64, 64), 30, 30, 15)
    assert largest_component(target).sum() == 15 * 15
    assert first_click(target) == (37, 37, 1)
    assert first_click(np.zeros((8, 8), bool)) is None


def test_a_missed_region_larger_than_the_false_one_gets_a_positive_click():
    shape = (64, 64)
    kept, missed = _square(shape, 5, 5, 10), _square(shape, 40, 40, 12)
    false = _square(shape, 5, 45, 6)
    target, prediction = kept | missed, kept | false
    y, x, sign = next_click(prediction, target)
    assert sign == 1 and missed[y, x] and (y, x) == (45, 45)


def test_a_false_region_larger_than_each_missed_one_gets_a_negative_click():
    shape = (64, 64)
    kept = _square(shape, 5, 5, 10)
    # three missed pieces of 25 px add up to more than the false region of 49 px, but the
    # largest single error region is the false one
    missed = _square(shape, 40, 2, 5) | _square(shape, 40, 20, 5) | _square(shape, 55, 40, 5)
    false = _square(shape, 30, 50, 7)
    y, x, sign = next_click(kept | false, kept | missed)
    assert sign == -1 and false[y, x] and (y, x) == (33, 53)


def test_no_click_when_the_prediction_is_right():
    target = _square((32, 32), 4, 4, 8)
    assert next_click(target, target) is None


def test_a_perfect_click_fixes_exactly_the_region_it_points_at():
    shape = (64, 64)
    kept, missed = _square(shape, 5, 5, 10), _square(shape, 40, 40, 12)
    small_missed, false = _square(shape, 50, 5, 3), _square(shape, 5, 45, 6)
    target, prediction = kept | missed | small_missed, kept | false
    before = prediction.copy()
    # the largest error is the missed square: it is filled, the false one stays
    first = perfect_click(prediction, target)
    assert np.array_equal(first, kept | false | missed)
    assert np.array_equal(prediction, before)  # the input is left alone
    # then the false square (36 px) before the small missed one (9 px)
    second = perfect_click(first, target)
    assert np.array_equal(second, kept | missed)
    third = perfect_click(second, target)
    assert np.array_equal(third, target)
    assert np.array_equal(perfect_click(third, target), target)  # nothing left to fix
    # from nothing, one perfect click is the largest object
    assert np.array_equal(perfect_click(np.zeros(shape, bool), target), missed)


def test_a_wrong_proposal_is_the_object_moved_off_itself():
    rng = np.random.default_rng(0)
    target = _square((48, 48), 5, 30, 12)
    for _ in range(20):
        wrong = wrong_proposal(target, rng)
        assert wrong.sum() == target.sum() and not (wrong & target).any()
    # an object spanning one axis still misses itself along the other; one filling the image
    # cannot
    band = np.zeros((16, 16), bool)
    band[:, 2:5] = True
    assert not (wrong_proposal(band, rng) & band).any()
    assert wrong_proposal(np.ones((8, 8), bool), rng).all()


def test_an_item_that_starts_from_a_wrong_proposal_gets_the_click_on_its_object():
    targets = np.zeros((2, 48, 48), bool)
    targets[0] = _square((48, 48), 10, 10, 10)  # the second has no object: a plain start
    prompts = ClickTraining(wrong_start=1.0).start(targets, np.random.default_rng(0))
    wrong = prompts.previous[0, 0].numpy() > 0.5
    assert wrong.sum() == targets[0].sum() and not (wrong & targets[0]).any()
    ((y, x, sign),) = prompts.clicks[0]
    assert sign == 1 and targets[0][y, x]
    # the click asked for the whole missed object
    assert np.array_equal(prompts.corrected[0], targets[0])
    assert prompts.clicks[1] == [] and prompts.boxes == [None, None]
    assert not prompts.previous[1].any() and not prompts.corrected[1].any()


def test_click_training_gives_logits_with_gradient_and_leaves_the_mode_alone():
    torch.manual_seed(0)
    model = create_model("unet_tiny", prompts=True).train()
    masks = torch.zeros(3, 1, 64, 64)
    masks[0, 0, 10:30, 10:30] = 1
    masks[1, 0, 40:60, 5:20] = 1  # the third has no object: no first click, only corrections
    batch = {"image": torch.rand(3, 3, 64, 64), "mask": masks}
    sim = ClickTraining(iterations=3, corrected_weight=1.0)
    logits, corrected = sim.forward(model, batch, np.random.default_rng(0))
    assert logits.shape == corrected.shape == (3, 1, 64, 64)
    assert logits.requires_grad and model.training
    # the corrected regions are errors of some pass: inside the object or outside it wholly
    assert corrected.any()
    term = sim.corrected_loss(logits, masks, corrected)
    (logits.mean() + term).backward()
    assert model.prompt_adapter.project.weight.grad.abs().sum() > 0


def test_the_corrected_loss_is_the_cross_entropy_on_the_clicked_regions_only():
    sim = ClickTraining(corrected_weight=2.0)
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2] = 1
    logits = torch.full((2, 1, 4, 4), -3.0)  # confident background: wrong on the object
    corrected = torch.zeros(2, 1, 4, 4)
    corrected[0, 0, 0, :2] = 1  # two missed pixels were clicked; item 1 had no correction
    wrong = torch.nn.functional.softplus(torch.tensor(3.0))  # -log(sigmoid(-3))
    assert torch.isclose(sim.corrected_loss(logits, target, corrected), 2 * wrong)
    # what is outside the clicked regions does not count
    logits[0, 0, 1] = 50.0
    logits[1] = 50.0
    assert torch.isclose(sim.corrected_loss(logits, target, corrected), 2 * wrong)
    # no clicked region: zero, still a term of the graph
    zero = sim.corrected_loss(logits.requires_grad_(), target, torch.zeros_like(corrected))
    assert zero == 0 and zero.requires_grad


def test_click_training_refuses_a_model_without_prompt_inputs():
    batch = {"image": torch.rand(1, 3, 64, 64), "mask": torch.zeros(1, 1, 64, 64)}
    with pytest.raises(ValueError, match="prompt inputs"):
        ClickTraining().forward(create_model("unet_tiny"), batch, np.random.default_rng(0))


def test_the_trainer_gives_the_adapter_its_own_rate_and_a_loss_on_the_clicked_regions():
    torch.manual_seed(0)
    masks = torch.zeros(4, 1, 64, 64)
    for i in range(4):
        masks[i, 0, 8 * i : 8 * i + 20, 10:30] = 1
    items = [
        {"image": torch.rand(3, 64, 64), "mask": m, "text": "", "name": f"m{i}", "index": i}
        for i, m in enumerate(masks)
    ]
    model = create_model("unet_tiny", prompts=True)
    config = TrainConfig(epochs=2, batch_size=2, lr=1e-3, clicks=3, use_text=False, device="cpu")
    trainer = Trainer(model, items, config=config)
    steps = [e for e in trainer.fit() if isinstance(e, BatchEnd)]
    rates = [g["initial_lr"] for g in trainer.optimizer.param_groups]  # before the schedule
    adapter = {id(p) for p in model.prompt_adapter.parameters()}
    assert [id(p) for p in trainer.optimizer.param_groups[1]["params"]] == [
        id(p) for p in model.prompt_adapter.parameters()
    ]
    assert not adapter & {id(p) for p in trainer.optimizer.param_groups[0]["params"]}
    assert rates[1] == pytest.approx(rates[0] * config.prompt_lr_scale)
    # some steps placed correction clicks, and their regions were a loss term of their own
    assert all("clicked" in e.losses for e in steps)
    assert any(e.losses["clicked"] > 0 for e in steps)


def test_bad_click_training_settings_say_which():
    with pytest.raises(ValueError, match="corrected_weight must be >= 0"):
        ClickTraining(corrected_weight=-1.0)
    with pytest.raises(ValueError, match="wrong_start must be in"):
        ClickTraining(wrong_start=1.5)
    with pytest.raises(ValueError, match="prompt_lr_scale must be > 0, got 0"):
        TrainConfig(prompt_lr_scale=0)

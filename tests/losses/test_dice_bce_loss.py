import pytest
import torch
import torch.nn.functional as F

from src_models.losses import DiceBCELoss, balanced_bce_with_logits, soft_dice_loss


def _target(b=2, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(b, 1, s, s, generator=g) > 0.7).float()
    t[:, :, 0, 0] = 1.0  # at least one foreground pixel per image
    return t


def test_dice_loss_zero_for_perfect_large_logits():
    t = _target()
    logits = (t * 2 - 1) * 30.0
    assert soft_dice_loss(torch.sigmoid(logits), t).item() == pytest.approx(0.0, abs=1e-6)
    assert DiceBCELoss()(logits, t).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_loss_empty_vs_empty_is_zero_and_disjoint_is_one():
    z = torch.zeros(1, 1, 8, 8)
    assert soft_dice_loss(z, z).item() == pytest.approx(0.0)
    a = torch.zeros(1, 1, 8, 8)
    a[..., :4, :] = 1
    assert soft_dice_loss(a, 1 - a).item() == pytest.approx(1.0, abs=1e-6)


def test_dice_loss_per_image_reduction():
    t = _target(b=3)
    p = torch.rand(3, 1, 16, 16)
    per = soft_dice_loss(p, t, reduction="none")
    assert per.shape == (3,)
    assert soft_dice_loss(p, t).item() == pytest.approx(per.mean().item())


def test_balanced_bce_weights_each_class_by_its_mean():
    t = torch.zeros(1, 1, 4, 4)
    t[..., 0, :2] = 1.0  # 2 positives, 14 negatives
    logits = torch.randn(1, 1, 4, 4)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    pos = t > 0.5
    expected = 0.5 * bce[pos].mean() + 0.5 * bce[~pos].mean()
    got = balanced_bce_with_logits(logits, t)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # the 2 foreground pixels weigh as much as the 14 background ones: not plain BCE
    plain = F.binary_cross_entropy_with_logits(logits, t).item()
    assert got.item() != pytest.approx(plain)


def test_balanced_bce_without_foreground_uses_background_only():
    t = torch.zeros(2, 1, 4, 4)
    logits = torch.randn(2, 1, 4, 4)
    expected = 0.5 * F.binary_cross_entropy_with_logits(logits, t)
    assert balanced_bce_with_logits(logits, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_terms_sum_to_loss_and_gradients_are_finite_for_extreme_logits():
    t = _target()
    logits = torch.randn(2, 1, 16, 16) * 100.0
    logits[0, 0, 0, 0] = 1e4
    logits[1, 0, 1, 1] = -1e4
    logits.requires_grad_(True)
    crit = DiceBCELoss()
    terms = crit.terms(logits, t)
    assert set(terms) == {"dice", "bce"}
    loss = crit(logits, t)
    assert loss.item() == pytest.approx((terms["dice"] + terms["bce"]).item())
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_half_precision_logits_give_float32_loss():
    t = _target()
    logits = torch.randn(2, 1, 16, 16).to(torch.bfloat16)
    assert DiceBCELoss()(logits, t).dtype == torch.float32


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same shape"):
        DiceBCELoss()(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8))

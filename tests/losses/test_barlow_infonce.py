"""Barlow Twins and the symmetric image-text InfoNCE."""

import math

import pytest
import torch

from src_models.losses import BarlowTwinsLoss, barlow_twins_loss, image_text_info_nce
from src_models.losses.infonce import ImageTextInfoNCE, text_groups


def _whitened(b: int, d: int) -> torch.Tensor:
    z = torch.randn(b, d, dtype=torch.float64)
    z = z - z.mean(0)
    cov = z.T @ z / b
    evals, evecs = torch.linalg.eigh(cov)
    return (z @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T).float()


def test_barlow_twins_near_zero_for_identical_whitened_views():
    torch.manual_seed(0)
    z = _whitened(256, 16)
    assert float(barlow_twins_loss(z, z)) < 1e-3
    # independent views are far from the identity
    assert float(barlow_twins_loss(z, _whitened(256, 16))) > 10.0


def test_barlow_twins_scale_invariant_and_weighted():
    torch.manual_seed(1)
    a, b = torch.randn(32, 8), torch.randn(32, 8)
    base = barlow_twins_loss(a, b)
    assert float(barlow_twins_loss(3 * a + 1, b)) == pytest.approx(float(base), rel=1e-4)
    assert float(BarlowTwinsLoss(weight=0.01)(a, b)) == pytest.approx(0.01 * float(base), 1e-5)
    with pytest.raises(ValueError):
        barlow_twins_loss(a[:1], b[:1])


def test_info_nce_symmetric_and_log_b_for_random():
    torch.manual_seed(0)
    b, d = 16, 512
    img, txt = torch.randn(b, d), torch.randn(b, d)
    loss = image_text_info_nce(img, txt, temperature=1.0)
    assert float(loss) == pytest.approx(math.log(b), abs=0.1)
    swapped = image_text_info_nce(txt, img, temperature=1.0)
    assert float(loss) == pytest.approx(float(swapped), abs=1e-6)
    # aligned embeddings: far below log(B)
    assert float(image_text_info_nce(img, img, temperature=0.07)) < 0.01


def test_info_nce_rows_without_text_add_nothing():
    torch.manual_seed(0)
    img, txt = torch.randn(6, 32), torch.randn(6, 32)
    groups = text_groups(["a", "b", None, "c", "", "d"])
    assert groups.tolist() == [0, 1, -1, 2, -1, 3]
    keep = groups >= 0
    full = image_text_info_nce(img, txt, groups)
    only = image_text_info_nce(img[keep], txt[keep])
    assert float(full) == pytest.approx(float(only), abs=1e-6)
    # changing a text-less row changes nothing, and it gets no gradient
    img2 = img.clone()
    img2[2] = 100.0
    img2.requires_grad_(True)
    out = image_text_info_nce(img2, txt, groups)
    out.backward()
    assert float(out.detach()) == pytest.approx(float(full), abs=1e-6)
    assert float(img2.grad[2].abs().sum()) == 0.0
    none = image_text_info_nce(img, txt, torch.full((6,), -1))
    assert float(none) == 0.0


def test_info_nce_identical_texts_are_positives():
    torch.manual_seed(0)
    txt_a = torch.randn(1, 8)
    img = torch.cat([txt_a, txt_a, torch.randn(1, 8)])
    txt = torch.cat([txt_a, txt_a, torch.randn(1, 8)])
    same = text_groups(["x", "x", "y"])
    distinct = torch.tensor([0, 1, 2])
    # with distinct ids, rows 0 and 1 would be each other's hard negatives
    assert float(image_text_info_nce(img, txt, same)) < float(
        image_text_info_nce(img, txt, distinct)
    )
    assert float(ImageTextInfoNCE(weight=0.5)(img, txt, same)) == pytest.approx(
        0.5 * float(image_text_info_nce(img, txt, same)), rel=1e-6
    )

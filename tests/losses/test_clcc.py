"""CLCC losses: grid round trip, consistency of a pointwise network, contrast on aligned data."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src_models.losses import (
    CrossLevelContrastLoss,
    PatchConsistencyLoss,
    cross_level_contrast,
    patch_consistency,
    patchify,
    unpatchify,
)
from src_models.losses.clcc import cell_features


@pytest.mark.parametrize("n", [1, 2, 4])
def test_patchify_round_trip_and_order(n):
    x = torch.randn(3, 2, 16, 16)
    p = patchify(x, n)
    assert p.shape == (3 * n * n, 2, 16 // n, 16 // n)
    assert torch.equal(unpatchify(p, n), x)
    s = 16 // n
    # patch b * n^2 + r * n + c is row r, column c of image b
    if n > 1:
        assert torch.equal(p[1 * n * n + 1 * n + 0], x[1, :, s : 2 * s, 0:s])


def test_patchify_rejects_bad_sizes():
    with pytest.raises(ValueError):
        patchify(torch.zeros(1, 1, 10, 10), 3)
    with pytest.raises(ValueError):
        unpatchify(torch.zeros(3, 1, 4, 4), 2)


@torch.no_grad()
def test_consistency_zero_for_pointwise_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 1, 1))
    n = 2
    x = torch.rand(2, 3, 32, 32)
    full = net(x)
    # patches zoomed back to the model size (nearest), as the engine runs them
    patches = F.interpolate(patchify(x, n), scale_factor=n, mode="nearest")
    loss = patch_consistency(full, net(patches), n)
    assert float(loss) < 1e-12
    # a 3x3 network sees across cell borders: not consistent
    net3 = nn.Conv2d(3, 1, 3, padding=1)
    loss3 = patch_consistency(net3(x), net3(patches), n)
    assert float(loss3) > 0
    weighted = PatchConsistencyLoss(n, weight=2.0)(net3(x), net3(patches))
    assert float(weighted) == pytest.approx(2 * float(loss3), rel=1e-5)


def test_consistency_gradient_only_on_patch_side():
    full = torch.randn(1, 1, 8, 8, requires_grad=True)
    patch = torch.randn(4, 1, 4, 4, requires_grad=True)
    patch_consistency(full, patch, 2).backward()
    assert full.grad is None
    assert patch.grad is not None and patch.grad.abs().sum() > 0


def test_contrast_lower_for_aligned_than_shuffled():
    torch.manual_seed(0)
    n = 3
    full = torch.randn(4, 16, 12, 12)
    aligned = patchify(full, n)  # each patch has exactly its cell's features
    perm = torch.tensor([1, 2, 0, 4, 5, 3, 7, 8, 6])
    shuffled = aligned.view(4, 9, 16, 4, 4)[:, perm].reshape_as(aligned)
    good = cross_level_contrast(full, aligned, n)
    bad = cross_level_contrast(full, shuffled, n)
    assert float(good) < float(bad)
    assert float(good) < torch.log(torch.tensor(9.0))  # better than chance


def test_contrast_stop_gradient_on_patches_and_temperature():
    full = torch.randn(2, 8, 8, 8, requires_grad=True)
    patches = torch.randn(8, 8, 4, 4, requires_grad=True)
    loss = CrossLevelContrastLoss(2, temperature=0.07)(full, patches)
    loss.backward()
    assert full.grad is not None and patches.grad is None
    assert cell_features(full, 2).shape == (2, 4, 8)
    with pytest.raises(ValueError):
        cross_level_contrast(full, patches, 1)

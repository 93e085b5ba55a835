"""Barlow Twins (Zbontar et al. 2021), the negative-free term of GTGM-style pretraining.

Each embedding dimension is standardised over the batch (mean 0, biased std 1), the
cross-correlation matrix of the two views is computed, and pushed to the identity:
``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2`` with ``lambda = 0.0051``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BarlowTwinsLoss", "barlow_twins_loss"]


def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, off_diagonal_weight: float = 0.0051, eps: float = 1e-5
) -> torch.Tensor:
    """Barlow Twins loss of two views' embeddings ``[B, D]`` (``B >= 2``); a scalar.

    Computed in float32. ``eps`` guards the std of a constant dimension.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"expected two [B, D] embeddings, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    if z1.shape[0] < 2:
        raise ValueError("Barlow Twins needs a batch of at least 2 (batch statistics)")
    a, b = z1.float(), z2.float()
    a = (a - a.mean(0)) / (a.std(0, unbiased=False) + eps)
    b = (b - b.mean(0)) / (b.std(0, unbiased=False) + eps)
    c = a.T @ b / a.shape[0]  # [D, D]
    diag = torch.diagonal(c)
    on = (1.0 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + float(off_diagonal_weight) * off


class BarlowTwinsLoss(nn.Module):
    """``weight * barlow_twins_loss(z1, z2)``; call with two ``[B, D]`` embeddings."""

    def __init__(self, off_diagonal_weight: float = 0.0051, weight: float = 1.0) -> None:
        super().__init__()
        self.off_diagonal_weight = float(off_diagonal_weight)
        self.weight = float(weight)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return self.weight * barlow_twins_loss(z1, z2, self.off_diagonal_weight)

    def extra_repr(self) -> str:
        return f"off_diagonal_weight={self.off_diagonal_weight}, weight={self.weight}"

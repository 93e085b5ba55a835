"""CLCC (Zhao et al., ISBI 2022): cross-level contrastive learning and patch consistency.

An image is cut into an ``n x n`` grid of cells; the network runs on the whole image and on
every cell (each cell zoomed back to the model size). Two unsupervised terms:

- **cross-level contrast**: the full image's feature pooled over cell ``i`` should match the
  feature of patch ``i`` (patch side stop-gradient) against the other cells of the same image
  (InfoNCE, temperature 0.07);
- **consistency**: MSE between each patch's sigmoid prediction and the detached full-image
  prediction cropped to that cell.

Cell order everywhere is row-major per image, images outermost: patch ``b * n * n + r * n + c``
is row ``r``, column ``c`` of image ``b``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CrossLevelContrastLoss",
    "PatchConsistencyLoss",
    "cell_features",
    "cross_level_contrast",
    "patch_consistency",
    "patchify",
    "unpatchify",
]


def _check_grid(x: torch.Tensor, n: int) -> None:
    if n < 1:
        raise ValueError(f"the grid must be >= 1, got {n}")
    if x.ndim != 4 or x.shape[-2] % n or x.shape[-1] % n:
        raise ValueError(f"expected [B, C, H, W] with H and W divisible by {n}, got {x.shape}")


def patchify(x: torch.Tensor, n: int) -> torch.Tensor:
    """Cut ``[B, C, H, W]`` into the ``n x n`` grid: ``[B * n * n, C, H / n, W / n]``."""
    _check_grid(x, n)
    b, c, h, w = x.shape
    p = x.reshape(b, c, n, h // n, n, w // n).permute(0, 2, 4, 1, 3, 5)
    return p.reshape(b * n * n, c, h // n, w // n)


def unpatchify(p: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B * n * n, C, h, w]`` -> ``[B, C, n h, n w]``."""
    if n < 1 or p.ndim != 4 or p.shape[0] % (n * n):
        raise ValueError(f"expected [B * {n}^2, C, h, w], got {tuple(p.shape)}")
    bn, c, h, w = p.shape
    b = bn // (n * n)
    x = p.reshape(b, n, n, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, n * h, n * w)


def cell_features(features: torch.Tensor, n: int) -> torch.Tensor:
    """Mean feature of every grid cell: ``[B, C, H, W]`` -> ``[B, n * n, C]`` (row-major)."""
    _check_grid(features, n)
    pooled = F.adaptive_avg_pool2d(features.float(), n)  # [B, C, n, n]
    return pooled.flatten(2).transpose(1, 2)


def cross_level_contrast(
    full_features: torch.Tensor,
    patch_features: torch.Tensor,
    n: int,
    temperature: float = 0.07,
) -> torch.Tensor:
    """InfoNCE between full-image cell features and patch features (patch side detached).

    Args:
        full_features: feature map of the whole images ``[B, C, H, W]``.
        patch_features: feature maps of the patches ``[B * n * n, C, h, w]`` (any ``h, w``;
            globally averaged) or already pooled ``[B * n * n, C]``.
        n: grid side (``n >= 2``: a single cell has no negatives).
        temperature: softmax temperature of the cosine similarities.
    Returns:
        scalar: mean over the ``B * n * n`` cells of ``-log softmax`` of the matching patch
        among the ``n * n`` patches of the same image.
    """
    if n < 2:
        raise ValueError("the cross-level contrast needs a grid of at least 2 x 2 (negatives)")
    q = F.normalize(cell_features(full_features, n), dim=-1)  # [B, N, C]
    k = patch_features.detach().float()
    if k.ndim == 4:
        k = k.mean(dim=(2, 3))
    b, cells, c = q.shape
    if tuple(k.shape) != (b * cells, c):
        raise ValueError(
            f"patch features must be [{b * cells}, {c}, ...] for {b} images and a {n}x{n} grid, "
            f"got {tuple(patch_features.shape)}"
        )
    k = F.normalize(k.view(b, cells, c), dim=-1)
    logits = torch.bmm(q, k.transpose(1, 2)) / float(temperature)  # [B, N, N]
    target = torch.arange(cells, device=q.device).expand(b, cells)
    return F.cross_entropy(logits.reshape(b * cells, cells), target.reshape(-1))


def patch_consistency(
    full_logits: torch.Tensor, patch_logits: torch.Tensor, n: int
) -> torch.Tensor:
    """MSE between patch predictions and the detached full-image prediction of that cell.

    Args:
        full_logits: ``[B, 1, H, W]`` logits on the whole images (detached here).
        patch_logits: ``[B * n * n, 1, h, w]`` logits on the patches; when ``h != H / n`` (the
            patches ran zoomed to the model size) they are average-pooled down to the cell size.
    Returns:
        scalar mean squared difference of the sigmoid probabilities.
    """
    target = patchify(torch.sigmoid(full_logits.detach().float()), n)
    pred = torch.sigmoid(patch_logits.float())
    if pred.shape[-2:] != target.shape[-2:]:
        pred = F.adaptive_avg_pool2d(pred, target.shape[-2:])
    if pred.shape != target.shape:
        raise ValueError(
            f"patch logits {tuple(patch_logits.shape)} do not fit full logits "
            f"{tuple(full_logits.shape)} with a {n}x{n} grid"
        )
    return F.mse_loss(pred, target)


class CrossLevelContrastLoss(nn.Module):
    """Module form of :func:`cross_level_contrast` (``weight`` times it)."""

    def __init__(self, n: int = 2, temperature: float = 0.07, weight: float = 1.0) -> None:
        super().__init__()
        self.n, self.temperature, self.weight = int(n), float(temperature), float(weight)

    def forward(self, full_features: torch.Tensor, patch_features: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` and ``[B n^2, C, h, w]`` -> scalar."""
        return self.weight * cross_level_contrast(
            full_features, patch_features, self.n, self.temperature
        )

    def extra_repr(self) -> str:
        return f"n={self.n}, temperature={self.temperature}, weight={self.weight}"


class PatchConsistencyLoss(nn.Module):
    """Module form of :func:`patch_consistency` (``weight`` times it)."""

    def __init__(self, n: int = 2, weight: float = 1.0) -> None:
        super().__init__()
        self.n, self.weight = int(n), float(weight)

    def forward(self, full_logits: torch.Tensor, patch_logits: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` and ``[B n^2, 1, h, w]`` -> scalar."""
        return self.weight * patch_consistency(full_logits, patch_logits, self.n)

    def extra_repr(self) -> str:
        return f"n={self.n}, weight={self.weight}"

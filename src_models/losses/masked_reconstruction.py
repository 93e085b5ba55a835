"""Masked token reconstruction: mean squared error over the masked tokens only (RecLMIS)."""

from __future__ import annotations

from torch import Tensor, nn


def masked_mse(pred: Tensor, target: Tensor, masked: Tensor) -> Tensor:
    """Mean squared error over the tokens where ``masked`` is True.

    Args:
        pred: reconstructed tokens ``[B, N, D]``.
        target: tokens to reconstruct ``[B, N, D]`` (detach it first if it must not be trained).
        masked: bool ``[B, N]``, True for the tokens that were hidden from the decoder.

    Returns a scalar: the squared error averaged over masked tokens and features, 0 when no
    token is masked (so that a batch without text cannot produce NaN).
    """
    if pred.shape != target.shape or masked.shape != pred.shape[:2]:
        raise ValueError(
            f"masked_mse: pred {list(pred.shape)}, target {list(target.shape)} and masked "
            f"{list(masked.shape)} must be [B, N, D], [B, N, D] and [B, N]"
        )
    weight = masked.to(pred.dtype).unsqueeze(-1)
    err = (pred.float() - target.float()).square() * weight
    count = weight.sum() * pred.shape[-1]
    return err.sum() / count.clamp_min(1.0)


class MaskedReconstructionLoss(nn.Module):
    """``weight * masked_mse(pred, target, masked)``; see :func:`masked_mse` for the shapes."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    def forward(self, pred: Tensor, target: Tensor, masked: Tensor) -> Tensor:
        return self.weight * masked_mse(pred, target, masked)


__all__ = ["MaskedReconstructionLoss", "masked_mse"]

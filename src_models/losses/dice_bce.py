"""LViT's segmentation loss: ``0.5 * Dice + 0.5 * class-balanced BCE`` (on logits)."""

from __future__ import annotations

import torch
from torch import nn

from src_models.losses._functional import balanced_bce_with_logits, soft_dice_loss


class DiceBCELoss(nn.Module):
    """``dice_weight * soft Dice + bce_weight * class-balanced BCE``, the LViT training loss.

    The official code applies these to sigmoid outputs; here the module takes logits and
    applies the sigmoid itself (the BCE part uses the numerically stable logits form).

    Call: ``loss = criterion(logits, target)`` with ``logits`` ``[B, 1, H, W]`` (raw model
    output) and ``target`` ``[B, 1, H, W]`` in [0, 1]; returns a scalar.
    :meth:`terms` returns the weighted parts by name (``{"dice": ..., "bce": ...}``), whose sum
    is the loss; trainers log them separately.
    """

    def __init__(
        self,
        dice_weight: float = 0.5,
        bce_weight: float = 0.5,
        smooth: float = 1e-5,
        pos_weight: float = 0.5,
        neg_weight: float = 0.5,
    ) -> None:
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)
        self.smooth = float(smooth)
        self.pos_weight = float(pos_weight)
        self.neg_weight = float(neg_weight)

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss terms ``{"dice": [], "bce": []}`` (scalars) for ``[B, 1, H, W]`` inputs."""
        dice = soft_dice_loss(torch.sigmoid(logits.float()), target, smooth=self.smooth)
        bce = balanced_bce_with_logits(
            logits, target, pos_weight=self.pos_weight, neg_weight=self.neg_weight
        )
        return {"dice": self.dice_weight * dice, "bce": self.bce_weight * bce}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss for logits ``[B, 1, H, W]`` and target ``[B, 1, H, W]`` in [0, 1]."""
        terms = self.terms(logits, target)
        return terms["dice"] + terms["bce"]

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}, bce_weight={self.bce_weight}"

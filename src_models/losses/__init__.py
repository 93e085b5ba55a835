"""Segmentation losses. Models and losses never see devices or distributed training."""

from src_models.losses._functional import balanced_bce_with_logits, soft_dice_loss
from src_models.losses.dice_bce import DiceBCELoss

__all__ = ["DiceBCELoss", "balanced_bce_with_logits", "soft_dice_loss"]

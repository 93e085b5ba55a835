"""Segmentation losses. Models and losses never see devices or distributed training."""

from src_models.losses._functional import balanced_bce_with_logits, soft_dice_loss
from src_models.losses.dice_bce import DiceBCELoss

__all__ = ["DiceBCELoss", "balanced_bce_with_logits", "soft_dice_loss"]

# CLCC, Barlow Twins and image-text InfoNCE (fewer labels: issue 7)
from src_models.losses.barlow_twins import BarlowTwinsLoss, barlow_twins_loss  # noqa: E402
from src_models.losses.clcc import (  # noqa: E402
    CrossLevelContrastLoss,
    PatchConsistencyLoss,
    cross_level_contrast,
    patch_consistency,
    patchify,
    unpatchify,
)
from src_models.losses.infonce import ImageTextInfoNCE, image_text_info_nce  # noqa: E402

__all__ += [
    "BarlowTwinsLoss",
    "CrossLevelContrastLoss",
    "ImageTextInfoNCE",
    "PatchConsistencyLoss",
    "barlow_twins_loss",
    "cross_level_contrast",
    "image_text_info_nce",
    "patch_consistency",
    "patchify",
    "unpatchify",
]

# RecLMIS's training-only terms (issue 6)
from src_models.losses.conditioned_contrastive import (  # noqa: E402
    ConditionedContrastiveLoss,
    conditioned_contrastive_loss,
)
from src_models.losses.masked_reconstruction import MaskedReconstructionLoss, masked_mse  # noqa: E402

__all__ += [
    "ConditionedContrastiveLoss",
    "MaskedReconstructionLoss",
    "conditioned_contrastive_loss",
    "masked_mse",
]

"""Segmentation metrics (stateless, per image)."""

from src_models.metrics.segmentation import dice_per_image, dice_score, iou_per_image, iou_score

__all__ = ["dice_per_image", "dice_score", "iou_per_image", "iou_score"]

"""Shared loss maths on plain tensors (no modules, no state).

Shapes: ``logits``/``probs``/``target`` are ``[B, 1, H, W]`` (any ``[B, ...]`` works: everything
after the batch axis is flattened). Targets are in [0, 1]; soft targets (e.g. EPI pseudo labels)
are allowed, and a pixel counts as foreground for class balancing when ``target > 0.5``.
Losses are computed in float32 even under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_REDUCTIONS = ("mean", "sum", "none")


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.ndim < 2:
        raise ValueError(f"{names[0]} needs a batch axis, got shape {tuple(a.shape)}")


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def soft_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    smooth: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    """Soft Dice loss per image, ``1 - (2 sum(p t) + s) / (sum(p^2) + sum(t^2) + s)``.

    The squared denominator is the one LViT's ``WeightedDiceLoss`` uses (with its default equal
    class weights the weighting cancels out). An empty target with an empty prediction gives 0.

    Args:
        probs: probabilities ``[B, ...]`` in [0, 1].
        target: targets ``[B, ...]`` in [0, 1], same shape.
        smooth: additive smoothing in numerator and denominator.
        reduction: ``"mean"`` over images (scalar), ``"sum"`` or ``"none"`` (``[B]``).
    """
    _check_pair(probs, target, ("probs", "target"))
    p = probs.float().flatten(1)
    t = target.float().flatten(1)
    intersection = (p * t).sum(1)
    denominator = (p * p).sum(1) + (t * t).sum(1)
    loss = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    return _reduce(loss, reduction)


def balanced_bce_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    pos_weight: float = 0.5,
    neg_weight: float = 0.5,
) -> torch.Tensor:
    """Class-balanced binary cross-entropy on logits, over the whole batch (LViT's WeightedBCE).

    ``pos_weight * mean(BCE over foreground pixels) + neg_weight * mean(BCE over background
    pixels)``, foreground being ``target > 0.5`` anywhere in the batch. A class absent from the
    batch contributes 0 (as in the official code). Computed from logits with the stable
    log-sum-exp form, so large logits never give ``inf``/``nan``.

    Args:
        logits: raw scores ``[B, ...]``.
        target: targets ``[B, ...]`` in [0, 1], same shape.
    Returns:
        scalar tensor.
    """
    _check_pair(logits, target, ("logits", "target"))
    x = logits.float()
    t = target.float()
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    pos = (t > 0.5).float()
    neg = 1.0 - pos
    n_pos = pos.sum().clamp_min(1.0)
    n_neg = neg.sum().clamp_min(1.0)
    return pos_weight * (bce * pos).sum() / n_pos + neg_weight * (bce * neg).sum() / n_neg

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


# --------------------------------------------------------------------------- semi-supervised


def masked_soft_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    smooth: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    """:func:`soft_dice_loss` restricted to the pixels where ``weight`` > 0 (weighted sums).

    ``weight`` (same shape, in [0, 1]; ``None`` = all ones) masks out pixels whose target is not
    trusted, e.g. low-confidence pseudo labels. An image with no weighted pixel gives 0.
    """
    _check_pair(probs, target, ("probs", "target"))
    p = probs.float().flatten(1)
    t = target.float().flatten(1)
    if weight is None:
        w = torch.ones_like(p)
    else:
        _check_pair(probs, weight, ("probs", "weight"))
        w = weight.float().flatten(1)
    intersection = (w * p * t).sum(1)
    denominator = (w * p * p).sum(1) + (w * t * t).sum(1)
    loss = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    loss = torch.where(w.sum(1) > 0, loss, torch.zeros_like(loss))
    return _reduce(loss, reduction)


def masked_balanced_bce_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    pos_weight: float = 0.5,
    neg_weight: float = 0.5,
) -> torch.Tensor:
    """:func:`balanced_bce_with_logits` over the pixels where ``weight`` > 0 (weighted means).

    Foreground is ``target > 0.5``; each class's BCE is averaged over its weighted pixels in the
    batch; a class without weighted pixels contributes 0. Returns a scalar.
    """
    _check_pair(logits, target, ("logits", "target"))
    x = logits.float()
    t = target.float()
    w = torch.ones_like(x) if weight is None else weight.float()
    if weight is not None:
        _check_pair(logits, weight, ("logits", "weight"))
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    pos = (t > 0.5).float() * w
    neg = (t <= 0.5).float() * w
    n_pos = pos.sum().clamp_min(1e-6)
    n_neg = neg.sum().clamp_min(1e-6)
    return pos_weight * (bce * pos).sum() / n_pos + neg_weight * (bce * neg).sum() / n_neg


def cosine_shape_loss(
    probs: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8, reduction: str = "mean"
) -> torch.Tensor:
    """``1 - cos(flatten(probs), flatten(reference))`` per image (the LV loss of LViT).

    0 when the prediction is a positive multiple of the reference (identical masks), 1 when they
    do not overlap at all. ``reduction`` as in :func:`soft_dice_loss`.
    """
    _check_pair(probs, reference, ("probs", "reference"))
    p = probs.float().flatten(1)
    r = reference.float().flatten(1)
    cos = (p * r).sum(1) / (p.norm(dim=1) * r.norm(dim=1)).clamp_min(eps)
    return _reduce(1.0 - cos, reduction)

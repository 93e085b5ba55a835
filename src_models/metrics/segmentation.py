"""Stateless per-image overlap metrics (the LViT protocol averages them over images).

Inputs are binary masks ``[B, 1, H, W]`` or ``[B, H, W]`` (any ``[B, ...]``), as torch tensors or
numpy arrays. Bool and integer inputs count non-zero as foreground; float inputs count
``> 0.5`` as foreground (so pass probabilities only after thresholding them yourself if you
want another cut). An image whose prediction and target are both empty scores 1.
Torch in, torch out (float64 ``[B]`` on the input's device); numpy in, numpy out.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

ArrayLike = TypeVar("ArrayLike", torch.Tensor, np.ndarray)


def _as_bool(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.bool:
        return x
    if x.is_floating_point():
        return x > 0.5
    return x != 0


def _counts(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    if pred.ndim < 3:
        raise ValueError(f"expected [B, H, W] or [B, 1, H, W] masks, got shape {tuple(pred.shape)}")
    p = _as_bool(pred).flatten(1)
    t = _as_bool(target).flatten(1)
    inter = (p & t).sum(1, dtype=torch.float64)
    n_pred = p.sum(1, dtype=torch.float64)
    n_target = t.sum(1, dtype=torch.float64)
    return inter, n_pred, n_target


def _dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inter, n_pred, n_target = _counts(pred, target)
    denom = n_pred + n_target
    return torch.where(denom > 0, 2.0 * inter / denom.clamp_min(1.0), torch.ones_like(denom))


def _iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inter, n_pred, n_target = _counts(pred, target)
    union = n_pred + n_target - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


def _dispatch(fn, pred, target):
    if isinstance(pred, np.ndarray) or isinstance(target, np.ndarray):
        out = fn(torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(target)))
        return out.numpy()
    return fn(pred, target)


def dice_per_image(pred: ArrayLike, target: ArrayLike) -> ArrayLike:
    """Dice ``2|P & T| / (|P| + |T|)`` per image -> ``[B]``; empty vs empty = 1."""
    return _dispatch(_dice, pred, target)


def iou_per_image(pred: ArrayLike, target: ArrayLike) -> ArrayLike:
    """IoU (Jaccard) ``|P & T| / |P | T|`` per image -> ``[B]``; empty vs empty = 1."""
    return _dispatch(_iou, pred, target)


def dice_score(pred: ArrayLike, target: ArrayLike) -> float:
    """Dice of a single mask ``[H, W]`` (or ``[1, H, W]``) as a Python float."""
    return float(dice_per_image(pred[None], target[None])[0])


def iou_score(pred: ArrayLike, target: ArrayLike) -> float:
    """IoU of a single mask ``[H, W]`` (or ``[1, H, W]``) as a Python float."""
    return float(iou_per_image(pred[None], target[None])[0])

"""Symmetric image-text InfoNCE (CLIP / GTGM style) with text groups.

Rows whose texts are identical are positives of each other, never negatives (a batch of QaTa
images often shares one sentence). Rows without a text take no part at all: they are neither
anchors nor candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ImageTextInfoNCE", "image_text_info_nce", "text_groups"]


def text_groups(texts: Sequence[str | None]) -> torch.Tensor:
    """Group ids ``[B]`` long: equal (whitespace-normalised) texts share an id; -1 = no text."""
    ids: dict[str, int] = {}
    out = []
    for t in texts:
        key = " ".join(t.split()) if t else ""
        out.append(ids.setdefault(key, len(ids)) if key else -1)
    return torch.tensor(out, dtype=torch.long)


def image_text_info_nce(
    image: torch.Tensor,
    text: torch.Tensor,
    groups: torch.Tensor | None = None,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Symmetric InfoNCE between image and text embeddings ``[B, D]`` (cosine similarities).

    Args:
        image, text: embeddings ``[B, D]`` (normalised here).
        groups: ``[B]`` long text ids (:func:`text_groups`): same id = positives; ``-1`` = the
            row has no text and is left out. ``None``: every row has its own distinct text.
        temperature: softmax temperature.
    Returns:
        scalar ``(L_image->text + L_text->image) / 2``, each the mean over anchors of
        ``-log(sum_pos exp(s) / sum_all exp(s))``. 0 (with a graph) if no row has a text.
    """
    if image.ndim != 2 or image.shape != text.shape:
        raise ValueError(f"expected two [B, D] embeddings, got {tuple(image.shape)}, {text.shape}")
    b = image.shape[0]
    if groups is None:
        groups = torch.arange(b, device=image.device)
    groups = groups.to(image.device).reshape(-1)
    if groups.numel() != b:
        raise ValueError(f"groups must have {b} entries, got {groups.numel()}")
    keep = groups >= 0
    if not bool(keep.any()):
        return (image.float().sum() + text.float().sum()) * 0.0
    im = F.normalize(image.float()[keep], dim=-1)
    tx = F.normalize(text.float()[keep], dim=-1)
    g = groups[keep]
    pos = g[:, None] == g[None, :]  # [K, K]
    logits = im @ tx.T / float(temperature)
    neg_inf = torch.finfo(logits.dtype).min

    def one_way(s: torch.Tensor) -> torch.Tensor:
        positive = torch.logsumexp(s.masked_fill(~pos, neg_inf), dim=1)
        return (torch.logsumexp(s, dim=1) - positive).mean()

    return 0.5 * (one_way(logits) + one_way(logits.T))


class ImageTextInfoNCE(nn.Module):
    """``weight * image_text_info_nce(...)``; ``forward(image, text, groups=None)``."""

    def __init__(self, temperature: float = 0.07, weight: float = 1.0) -> None:
        super().__init__()
        self.temperature, self.weight = float(temperature), float(weight)

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, groups: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.weight * image_text_info_nce(image, text, groups, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, weight={self.weight}"

"""Conditioned contrastive loss (RecLMIS): InfoNCE between weight-pooled image and text tokens.

Each image is summarised by its tokens pooled with its patch-of-interest weights, each text by
its word features pooled with its word-of-interest weights. Because those weights come from the
cross-modal (conditioned) tokens, the pooled embeddings stress what the other modality points
at. Matching image/text pairs of a batch are positives, the other pairs negatives (symmetric
InfoNCE). A batch of one has no negatives: the loss is then 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def weighted_pool(tokens: Tensor, weights: Tensor) -> Tensor:
    """``tokens [B, N, D]`` pooled by ``weights [B, N]`` (rows summing to 1, or 0) -> ``[B, D]``."""
    return torch.bmm(weights.unsqueeze(1).to(tokens.dtype), tokens).squeeze(1)


def conditioned_contrastive_loss(
    image_tokens: Tensor,
    image_weights: Tensor,
    text_tokens: Tensor,
    text_weights: Tensor,
    temperature: float = 0.07,
) -> Tensor:
    """Symmetric InfoNCE between pooled image and text embeddings.

    Args:
        image_tokens: ``[B, N, D]``; image_weights: ``[B, N]`` patch-of-interest weights.
        text_tokens: ``[B, L, D]``; text_weights: ``[B, L]`` word-of-interest weights (0 on
            padding).
        temperature: softmax temperature of the cosine similarities.

    Returns a scalar (0 for a batch of one).
    """
    if (
        image_tokens.shape[0] != text_tokens.shape[0]
        or image_tokens.shape[-1] != (text_tokens.shape[-1])
    ):
        raise ValueError(
            f"image tokens {list(image_tokens.shape)} and text tokens {list(text_tokens.shape)} "
            "need the same batch size and feature size"
        )
    img = F.normalize(weighted_pool(image_tokens, image_weights).float(), dim=-1)
    txt = F.normalize(weighted_pool(text_tokens, text_weights).float(), dim=-1)
    logits = img @ txt.t() / temperature  # [B, B]
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


class ConditionedContrastiveLoss(nn.Module):
    """``weight * conditioned_contrastive_loss(...)``; see that function for the shapes."""

    def __init__(self, weight: float = 1.0, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.weight = float(weight)
        self.temperature = float(temperature)

    def forward(
        self, image_tokens: Tensor, image_weights: Tensor, text_tokens: Tensor, text_weights: Tensor
    ) -> Tensor:
        return self.weight * conditioned_contrastive_loss(
            image_tokens, image_weights, text_tokens, text_weights, self.temperature
        )


__all__ = ["ConditionedContrastiveLoss", "conditioned_contrastive_loss", "weighted_pool"]

"""Language-vision couplings that condition a U-Net's feature maps on the words.

The paper couplings (LViT: word features mapped onto the patch positions and added once, at the
first ViT level; RecLMIS: cross-attention at the bottleneck only) meet the image at one place,
and learned which object a text names only from thousands of examples of one phrasing. The
couplings here act on every encoder scale the decoder reads (its skips and the bottleneck), so
the decoder only ever sees features that already know what the text asked for:

- ``"word_attention"`` (:class:`WordAttentionFusion`): every pixel attends over the real words
  (padding masked); its query is the pixel's feature plus a code of its position (sine/cosine of
  the row and column), so "top left" and "triangle" can both select it. The attended language
  vector multiplies the query (a match test: large where pixel and words agree) and a 1x1 conv
  adds the result to the feature map.
- ``"film"`` (:class:`FiLMFusion`): the masked mean of the word features gives a per-channel
  scale and shift at every scale (``x * (1 + gamma) + beta``). Cheap, but one vector per
  sentence and no notion of position.

Both start close to the identity (the last layer of each fusion is zero-initialised), so a model
starts as its paper coupling and learns how much to listen. With no text (``keep`` all False)
they add a constant, as the paper's text path does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "TEXT_COUPLINGS",
    "FiLMFusion",
    "MultiScaleTextCoupling",
    "WordAttentionFusion",
    "check_text_coupling",
    "position_code",
]

#: ``"paper"``: the family's own coupling only; the others add a :class:`MultiScaleTextCoupling`.
TEXT_COUPLINGS: tuple[str, ...] = ("paper", "word_attention", "film")


def check_text_coupling(value: str) -> None:
    if value not in TEXT_COUPLINGS:
        raise ValueError(f"text_coupling must be one of {TEXT_COUPLINGS}, got {value!r}")


def position_code(height: int, width: int, frequencies: int, ref: Tensor) -> Tensor:
    """Sine/cosine codes of the pixel centres' row and column in [0, 1]:
    ``[1, 4 * frequencies, height, width]`` (frequencies pi * 2**k, k = 0..frequencies-1)."""
    ys = (torch.arange(height, device=ref.device, dtype=ref.dtype) + 0.5) / height
    xs = (torch.arange(width, device=ref.device, dtype=ref.dtype) + 0.5) / width
    freq = math.pi * 2.0 ** torch.arange(frequencies, device=ref.device, dtype=ref.dtype)
    wy, wx = ys[:, None] * freq, xs[:, None] * freq  # [H, F], [W, F]
    rows = torch.cat([wy.sin(), wy.cos()], dim=1).T[:, :, None].expand(-1, height, width)
    cols = torch.cat([wx.sin(), wx.cos()], dim=1).T[:, None, :].expand(-1, height, width)
    return torch.cat([rows, cols], dim=0)[None]


def masked_mean(text: Tensor, keep: Tensor) -> Tensor:
    """Mean of the real tokens: ``text [B, L, D]``, ``keep [B, L]`` bool -> ``[B, D]`` (zeros
    where a row has no real token)."""
    w = keep.to(text.dtype)[..., None]
    return (text * w).sum(1) / w.sum(1).clamp_min(1.0)


class WordAttentionFusion(nn.Module):
    """Pixel-to-word attention on one feature map ``[B, C, H, W]`` (single head, width ``dim``)."""

    def __init__(self, channels: int, text_dim: int, dim: int, frequencies: int = 4) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.scale = dim**-0.5
        self.query = nn.Conv2d(channels, dim, 1)
        self.query_position = nn.Conv2d(4 * frequencies, dim, 1, bias=False)
        self.key = nn.Linear(text_dim, dim)
        self.value = nn.Linear(text_dim, dim)
        self.out = nn.Conv2d(dim, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, text: Tensor, keep: Tensor) -> Tensor:
        """``x [B, C, H, W]``, ``text [B, L, text_dim]`` (normalised), ``keep [B, L]`` bool ->
        ``[B, C, H, W]``."""
        b, _, h, w = x.shape
        pos = position_code(h, w, self.frequencies, x)
        q = self.query(x) + self.query_position(pos)  # [B, d, H, W]
        qf = q.flatten(2).transpose(1, 2)  # [B, HW, d]
        k, v = self.key(text), self.value(text)  # [B, L, d]
        logits = torch.bmm(qf, k.transpose(1, 2)) * self.scale  # [B, HW, L]
        logits = logits.masked_fill(~keep[:, None, :], float("-inf"))
        attn = torch.softmax(logits, dim=-1)
        # A sentence without real tokens (no text) attends to nothing: no NaN, zero message.
        attn = torch.where(keep.any(1)[:, None, None], attn, torch.zeros_like(attn))
        lang = torch.bmm(attn, v).transpose(1, 2).reshape(b, -1, h, w)
        return x + self.out(q * lang)


class FiLMFusion(nn.Module):
    """Per-channel scale and shift of one feature map from the pooled sentence."""

    def __init__(self, channels: int, text_dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU())
        self.to_scale_shift = nn.Linear(hidden, 2 * channels)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: Tensor, text: Tensor, keep: Tensor) -> Tensor:
        """``x [B, C, H, W]``, ``text [B, L, text_dim]``, ``keep [B, L]`` -> ``[B, C, H, W]``."""
        gamma, beta = self.to_scale_shift(self.mlp(masked_mean(text, keep))).chunk(2, dim=1)
        return x * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]


class MultiScaleTextCoupling(nn.Module):
    """One fusion per chosen feature map of a U-Net encoder's list.

    ``channels``: the channels of every map in the list; ``scales``: the indices conditioned
    (the others pass through). The word features are layer-normalised once for all fusions.
    """

    def __init__(
        self,
        kind: str,
        channels: list[int],
        text_dim: int,
        scales: tuple[int, ...],
        max_dim: int = 64,
    ) -> None:
        super().__init__()
        check_text_coupling(kind)
        if kind == "paper":
            raise ValueError("the paper coupling is the family's own; build no extra coupling")
        self.kind = kind
        self.scales = tuple(scales)
        self.text_norm = nn.LayerNorm(text_dim)
        fusions = {}
        for i in self.scales:
            c = channels[i]
            if kind == "word_attention":
                fusions[str(i)] = WordAttentionFusion(c, text_dim, min(c, max_dim))
            else:
                fusions[str(i)] = FiLMFusion(c, text_dim, min(4 * c, 4 * max_dim))
        self.fusions = nn.ModuleDict(fusions)

    def forward(self, feats: list[Tensor], text: Tensor, keep: Tensor | None) -> list[Tensor]:
        """``feats``: the encoder's maps ``[B, C_i, H_i, W_i]``; ``text [B, L, text_dim]``;
        ``keep [B, L]`` (bool or float, 1 = real token) or None (all real). Returns a new list
        with the chosen maps conditioned."""
        if keep is None:
            keep = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        keep = keep.reshape(text.shape[0], text.shape[1]).bool()
        text = self.text_norm(text)
        out = list(feats)
        for i in self.scales:
            out[i] = self.fusions[str(i)](out[i], text, keep)
        return out

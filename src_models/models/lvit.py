"""LViT: Language meets Vision Transformer (Li et al., IEEE TMI 2023), only the modules that run.

Two branches share the four scales of a U-Net:

- CNN: :class:`~src_models.models.blocks.UNetEncoder` and a decoder with PLAM on every skip.
- ViT: at each scale ``k = 1..4`` a conv patch embedding (patch ``16 / 2**(k-1)``, channels
  ``C_k = W * 2**(k-1)`` in and out) gives ``(S/16)**2`` tokens, plus a learned positional
  embedding, then ``vit_depth`` transformer blocks. Levels 2-4 reduce their own tokens to
  ``C_k / 2`` (Conv1d-BN-ReLU over the token axis) and concatenate the previous level's tokens.
  The "up" path runs one more block stack per level (top first) and adds the level above mapped
  by Conv1d-BN-ReLU ``2 C_k -> C_k``. Each level's tokens are then "reconstructed" (1x1
  conv-BN-ReLU, nearest upsampling to the CNN scale) and added to the CNN skip features.
- Text: token features ``[B, text_len, text_dim]`` run through a Conv1d chain
  ``text_dim -> 8W -> 4W -> 2W -> W`` (kernel 3), are mapped by Conv1d-BN-ReLU over the token
  axis ``text_len -> n_patches`` and added to the first ViT level's tokens.

Differences from the official code, none of which changes what the computation means:
- Modules that never run are not built (``norm``/``head``/embeddings of the up ViTs, unused
  ``CTBN`` layers, PLAM's ``conv_sig``, the four stand-alone ``pix_module``): 29.7M parameters
  for LViT-T instead of ~40M.
- Text keeps ``text_len`` tokens (default 40 instead of the first 10 words) and honours a padding
  mask: padded tokens are zeroed before and after every text conv, so they cannot influence the
  output.
- The 1x1 conv-BN-ReLU of "Reconstruct" runs on the token grid before the nearest upsampling
  (the two commute exactly, also for BatchNorm's batch statistics), and the upsampled map is
  added to the skip by broadcasting instead of being materialised. Same function, fewer MACs
  (26.3 instead of 27.0 GMAC for LViT-T). The one trace of it: BatchNorm's running variance gets
  its n/(n-1) correction from the grid count, a 0.25% difference at batch 2.
- The patch embeddings run as unfold + matmul (the same conv weights), the CNN runs on
  channels-last activations: same results, faster on the CPU.
- The model returns logits (no sigmoid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src_models.models.blocks import UNetDecoder, UNetEncoder, check_image
from src_models.models.registry import build_config, register_model
from src_models.models.text_coupling import MultiScaleTextCoupling, check_text_coupling

__all__ = ["LViT", "LViTConfig", "lvit_s", "lvit_s_wordattn", "lvit_t", "lvit_tiny"]


@dataclass
class LViTConfig:
    """Configuration of :class:`LViT` (all fields JSON-serialisable)."""

    img_size: int = 224
    in_chans: int = 3
    base_width: int = 64
    text_dim: int = 768
    text_len: int = 40
    vit_heads: int = 8
    vit_mlp_ratio: float = 4.0
    vit_depth: int = 1
    vit_dropout: float = 0.1
    qkv_bias: bool = True
    #: "paper": the text only through :class:`TextPath`, as published. "word_attention" or
    #: "film" add a :class:`~src_models.models.text_coupling.MultiScaleTextCoupling` on the
    #: encoder maps the ViT and the decoder read. The default stays "paper", so a stored config
    #: without this field (every checkpoint made before it existed) rebuilds the same model.
    text_coupling: str = "paper"

    def __post_init__(self) -> None:
        check_text_coupling(self.text_coupling)
        if self.img_size <= 0 or self.img_size % 16:
            raise ValueError(f"img_size must be a positive multiple of 16, got {self.img_size}")
        if self.base_width < 2 or self.base_width % 2:
            raise ValueError(f"base_width must be an even number >= 2, got {self.base_width}")
        if self.vit_heads < 1 or self.base_width % self.vit_heads:
            raise ValueError(
                f"vit_heads={self.vit_heads} must divide base_width={self.base_width} "
                "(the narrowest ViT level has base_width channels)"
            )
        for name in ("in_chans", "text_dim", "text_len", "vit_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vit_mlp_ratio <= 0:
            raise ValueError(f"vit_mlp_ratio must be > 0, got {self.vit_mlp_ratio}")
        if not 0.0 <= self.vit_dropout < 1.0:
            raise ValueError(f"vit_dropout must be in [0, 1), got {self.vit_dropout}")

    @property
    def coupling_scales(self) -> tuple[int, ...]:
        """Encoder maps conditioned by a multi-scale coupling: all but the full-resolution one
        (its features see edges, not objects, and it is the costliest map to attend from)."""
        return (1, 2, 3, 4)

    @property
    def grid(self) -> int:
        return self.img_size // 16

    @property
    def n_patches(self) -> int:
        return self.grid**2


# --------------------------------------------------------------------------- transformer parts


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv projection and scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, head_dim]
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> GELU -> dropout (the official MLP has both GELUs)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(F.gelu(self.fc1(x)))
        return self.dropout(F.gelu(self.fc2(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, dropout: float, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenConv(nn.Module):
    """Conv1d (kernel 3) -> BatchNorm1d -> ReLU on a channels-first sequence ``[B, C, L]``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, 3, padding=1)
        self.norm = nn.BatchNorm1d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)), inplace=True)


def _blocks(cfg: LViTConfig, dim: int) -> nn.Sequential:
    return nn.Sequential(
        *(
            Block(dim, cfg.vit_heads, cfg.vit_mlp_ratio, cfg.vit_dropout, cfg.qkv_bias)
            for _ in range(cfg.vit_depth)
        )
    )


class DownViT(nn.Module):
    """One level of the ViT down path.

    Patch embedding (conv ``dim -> dim``, kernel = stride = ``patch``) + learned positional
    embedding + dropout, optional text tokens added, transformer blocks. With ``reduce`` (levels
    2-4) the tokens are reduced to ``dim // 2`` and the previous level's tokens
    (``dim // 2`` channels) are concatenated: the output keeps ``dim`` channels.
    """

    def __init__(self, cfg: LViTConfig, dim: int, patch: int, reduce: bool) -> None:
        super().__init__()
        self.patch = patch
        self.patch_embed = nn.Conv2d(dim, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches, dim))
        self.dropout = nn.Dropout(cfg.vit_dropout)
        self.blocks = _blocks(cfg, dim)
        self.reduce = TokenConv(dim, dim // 2) if reduce else None

    def forward(self, x: Tensor, prev: Tensor | None = None, text: Tensor | None = None) -> Tensor:
        # The strided conv as unfold + matmul: same result, about 2x faster on the CPU in
        # training (oneDNN is slow for these large-kernel convs).
        b, c, h, w = x.shape
        p = self.patch
        # [B, H, W, C] view (free for channels-last x) -> [B, gh, gw, C, p, p] patches.
        t = x.permute(0, 2, 3, 1).reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 5, 2, 4)
        t = t.reshape(b, -1, c * p * p)
        t = F.linear(t, self.patch_embed.weight.reshape(c, -1), self.patch_embed.bias)
        t = self.dropout(t + self.pos_embed)
        if text is not None:
            t = t + text
        t = self.blocks(t)
        if self.reduce is None:
            return t
        t = self.reduce(t.transpose(1, 2)).transpose(1, 2)
        return torch.cat([t, prev], dim=2)


class UpViT(nn.Module):
    """One level of the ViT up path: transformer blocks, plus the level above (``2 dim``
    channels) mapped to ``dim`` by Conv1d-BN-ReLU over the token axis (not on the top level)."""

    def __init__(self, cfg: LViTConfig, dim: int, top: bool) -> None:
        super().__init__()
        self.blocks = _blocks(cfg, dim)
        self.from_above = None if top else TokenConv(2 * dim, dim)

    def forward(self, x: Tensor, above: Tensor | None = None) -> Tensor:
        x = self.blocks(x)
        if self.from_above is None:
            return x
        return x + self.from_above(above.transpose(1, 2)).transpose(1, 2)


class Reconstruct(nn.Module):
    """Tokens ``[B, N, C]`` -> grid -> 1x1 conv-BN-ReLU -> nearest upsampling, added to ``skip``.

    The pointwise conv/BN/ReLU commute with nearest upsampling (BatchNorm's batch statistics
    too, since every grid value is repeated equally often), so they run on the grid; the
    upsampling is a broadcast inside the addition. (Only BatchNorm's running variance differs
    by its n/(n-1) factor: n counts grid cells, not upsampled pixels.)
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 1)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, tokens: Tensor, skip: Tensor) -> Tensor:
        b, n, c = tokens.shape
        _, _, h, w = skip.shape
        g = int(round(n**0.5))
        s = h // g
        # Work in [B, H, W, C] (channels-last) views: no layout copies.
        r = tokens.reshape(b, g, g, c).permute(0, 3, 1, 2)  # [B, C, g, g], channels-last view
        r = F.relu(self.norm(self.conv(r)), inplace=True).permute(0, 2, 3, 1)  # [B, g, g, C]
        out = skip.permute(0, 2, 3, 1).reshape(b, g, s, g, s, c) + r.reshape(b, g, 1, g, 1, c)
        return out.view(b, h, w, c).permute(0, 3, 1, 2)


class TextPath(nn.Module):
    """Conv1d chain over the token axis ``text_dim -> 8W -> 4W -> 2W -> W`` (kernel 3), then
    Conv1d-BN-ReLU with the tokens as channels ``text_len -> n_patches`` (kernel 3 over the
    feature axis). Padded tokens are zeroed before and after every conv of the chain."""

    def __init__(self, cfg: LViTConfig) -> None:
        super().__init__()
        w = cfg.base_width
        dims = [cfg.text_dim, 8 * w, 4 * w, 2 * w, w]
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, 3, padding=1) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.to_patches = TokenConv(cfg.text_len, cfg.n_patches)

    def forward(self, text: Tensor, keep: Tensor | None) -> Tensor:
        """``text [B, text_len, text_dim]``, ``keep [B, 1, text_len]`` float (1 = real token) or
        None (all real). Returns ``[B, n_patches, W]``."""
        t = text.transpose(1, 2)  # [B, text_dim, text_len]
        if keep is not None:
            t = t * keep
        for conv in self.convs:
            t = conv(t)
            if keep is not None:
                t = t * keep
        return self.to_patches(t.transpose(1, 2))  # channels = tokens, length = features


# --------------------------------------------------------------------------- the model


class LViT(nn.Module):
    """LViT with a text padding mask. ``logits = model(image, text=None, text_mask=None)``."""

    uses_text = True

    def __init__(self, config: LViTConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else LViTConfig()
        self.config = cfg
        self.img_size = cfg.img_size
        self.in_chans = cfg.in_chans
        self.text_dim = cfg.text_dim
        self.text_len = cfg.text_len
        w = cfg.base_width
        dims = [w, 2 * w, 4 * w, 8 * w]
        patches = [16, 8, 4, 2]

        self.encoder = UNetEncoder(cfg.in_chans, w)
        self.text = TextPath(cfg)
        # Only built when chosen: a paper model keeps exactly its published parameters.
        self.coupling = (
            MultiScaleTextCoupling(
                cfg.text_coupling, [*dims, 8 * w], cfg.text_dim, cfg.coupling_scales
            )
            if cfg.text_coupling != "paper"
            else None
        )
        self.down_vit = nn.ModuleList(
            DownViT(cfg, d, p, reduce=i > 0)
            for i, (d, p) in enumerate(zip(dims, patches, strict=True))
        )
        self.up_vit = nn.ModuleList(UpViT(cfg, d, top=i == 3) for i, d in enumerate(dims))
        self.reconstruct = nn.ModuleList(Reconstruct(d) for d in dims)
        self.decoder = UNetDecoder(w, attention=True, up_mode="nearest")

    def prepare_text(
        self, text: Tensor | None, text_mask: Tensor | None, batch: int, ref: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Pad/truncate to ``text_len`` tokens; return features and a float keep-mask
        ``[B, 1, text_len]`` (None if every token is real)."""
        n, d = self.text_len, self.text_dim
        if text is None:
            # No text: no real tokens. The text path then contributes a constant.
            feats = ref.new_zeros(batch, n, d)
            return feats, ref.new_zeros(batch, 1, n)
        if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != d:
            raise ValueError(
                f"expected text features of shape [B={batch}, L<={n}, {d}], got {list(text.shape)}"
            )
        length = text.shape[1]
        if text_mask is not None and tuple(text_mask.shape) != (batch, length):
            raise ValueError(
                f"text_mask must have shape {[batch, length]} (like text's first two dims), "
                f"got {list(text_mask.shape)}"
            )
        text = text.to(ref.dtype)
        if length > n:
            text = text[:, :n]
            text_mask = text_mask[:, :n] if text_mask is not None else None
        elif length < n:
            text = F.pad(text, (0, 0, 0, n - length))
            if text_mask is None:
                text_mask = torch.ones(batch, length, dtype=torch.bool, device=text.device)
            text_mask = F.pad(text_mask.bool(), (0, n - length), value=False)
        if text_mask is None:
            return text, None
        return text, text_mask.to(ref.dtype).unsqueeze(1)

    def forward(
        self, image: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None
    ) -> Tensor:
        return self.decoder(self._skips(image, text, text_mask))

    def forward_features(
        self, image: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(logits [B, 1, S, S], features [B, W, S, S])``: the features are the decoder's last
        map, the one the 1x1 head reads (for CLCC-style losses); logits equal ``forward``'s."""
        x = self.decoder.forward_features(self._skips(image, text, text_mask))
        return self.decoder.head(x), x

    def _skips(self, image: Tensor, text: Tensor | None, text_mask: Tensor | None) -> list[Tensor]:
        """The five skip maps of the decoder: CNN features plus the reconstructed ViT tokens."""
        check_image(image, self.in_chans, self.img_size)
        feats = self.encoder(image)
        txt, keep = self.prepare_text(text, text_mask, image.shape[0], image)
        text_tokens = self.text(txt, keep)
        if self.coupling is not None:
            feats = self.coupling(feats, txt, keep)

        # ViT down path (level 1 gets the text), then up path from the top level.
        ys: list[Tensor] = []
        prev: Tensor | None = None
        for i, vit in enumerate(self.down_vit):
            prev = vit(feats[i], prev, text_tokens if i == 0 else None)
            ys.append(prev)
        above: Tensor | None = None
        for i in (3, 2, 1, 0):
            above = self.up_vit[i](ys[i], above)
            feats[i] = self.reconstruct[i](above, feats[i])
        return feats


def _build(defaults: dict, overrides: dict) -> LViT:
    return LViT(build_config(LViTConfig, defaults, overrides, "LViT"))


@register_model
def lvit_t(**overrides) -> LViT:
    """The paper's LViT-T: width 64, 224x224, BERT-base text (768-d). 29.7M params, 27 GMAC."""
    return _build(
        dict(img_size=224, base_width=64, text_dim=768, text_len=40, vit_heads=8), overrides
    )


@register_model
def lvit_s(**overrides) -> LViT:
    """CPU-friendly default: width 16, 224x224, all-MiniLM-L6-v2 text (384-d).

    2 heads keep LViT-T's head size at the first ViT level (8 channels per head)."""
    return _build(
        dict(img_size=224, base_width=16, text_dim=384, text_len=40, vit_heads=2), overrides
    )


@register_model
def lvit_s_wordattn(**overrides) -> LViT:
    """``lvit_s`` with pixel-to-word attention at four encoder scales (``text_coupling=
    "word_attention"``): learns which object a free-phrased text names from hundreds of
    examples (``benchmarks/bench_text.py``). A name of its own, so that the checkpoints of
    ``lvit_s`` (whose stored configs predate the field) keep rebuilding the paper model."""
    return _build(
        dict(
            img_size=224,
            base_width=16,
            text_dim=384,
            text_len=40,
            vit_heads=2,
            text_coupling="word_attention",
        ),
        overrides,
    )


@register_model
def lvit_tiny(**overrides) -> LViT:
    """For tests: width 8, 64x64, 384-d text."""
    return _build(
        dict(img_size=64, base_width=8, text_dim=384, text_len=40, vit_heads=2), overrides
    )

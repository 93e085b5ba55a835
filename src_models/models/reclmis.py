"""RecLMIS: cross-modal conditioned reconstruction for language-guided segmentation (Huang et al.
2024), with the inference path split so that a new text reuses the image's features.

- CNN: :class:`~src_models.models.blocks.UNetEncoder` and
  :class:`~src_models.models.blocks.UNetDecoder` with PLAM on every skip (no ViT branch).
- Bottleneck interaction (the only place text meets the image): the ``8W x S/16 x S/16``
  bottleneck becomes ``(S/16)**2`` tokens (1x1 conv to ``embed_dim`` + learned positional
  embedding); the projected text tokens cross-attend to the image tokens, then the image tokens
  cross-attend to the updated text (padding masked); the updated image tokens go back through a
  1x1 conv to ``8W`` channels and into the decoder.
- Training only (skipped in eval mode): patch-of-interest / word-of-interest MLPs
  (``embed_dim -> embed_dim -> 1``, softmax over tokens) score the conditioned tokens; image and
  text tokens are masked by sampling without replacement in proportion to those scores (text
  ``text_mask_ratio``, image a ratio drawn in ``[image_mask_min, image_mask_max]``); one small
  transformer decoder rebuilds the masked image tokens from the text, another the masked word
  features from the image (MSE on masked tokens); a conditioned contrastive loss aligns the
  score-pooled image and text embeddings across the batch. The weighted terms are left in
  :meth:`RecLMIS.auxiliary_losses` for the trainer.

Feature reuse (``supports_feature_reuse``): :meth:`RecLMIS.encode_image` runs everything that
does not depend on the text: the encoder, the token projection, PLAM on the skips and the skip
half of each decoder block's first convolution (conv of a concatenation = sum of the convs of
its parts). :meth:`RecLMIS.decode` then runs the interaction and the text-dependent rest of the
decoder. In eval mode the BatchNorms are folded into the convs and each "x2 nearest upsampling
-> 3x3 conv" runs as one stride-2 transposed conv on the coarse map (the same linear map, 4
instead of 9 taps per output pixel): ``decode(encode_image(x), t, m)`` equals
``forward(x, t, m)`` up to float rounding, at a fraction of the decoder's cost.

Choices where the paper's description leaves room: the reconstruction targets are detached
(the projected image tokens; the frozen word features), so the objective cannot collapse; the
contrastive loss pools each modality's own input tokens with interest weights computed from the
cross-attended tokens (the "condition"); masked image tokens are a learned token plus their
positional embedding, masked words a learned token plus a learned word-position embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src_models.losses.conditioned_contrastive import conditioned_contrastive_loss
from src_models.losses.masked_reconstruction import masked_mse
from src_models.models.blocks import UNetDecoder, UNetEncoder, check_image
from src_models.models.registry import build_config, register_model
from src_models.models.text_coupling import MultiScaleTextCoupling, check_text_coupling

__all__ = ["ImageFeatures", "RecLMIS", "RecLMISConfig", "reclmis", "reclmis_s", "reclmis_tiny"]


@dataclass
class RecLMISConfig:
    """Configuration of :class:`RecLMIS` (all fields JSON-serialisable).

    ``text_len`` is the number of text tokens used (longer texts are truncated).
    ``contrastive_weight`` and ``reconstruction_weight`` scale the training-only terms.
    ``text_coupling``: ``"paper"`` (text meets the image at the bottleneck only, as published;
    the default, so a stored config without the field rebuilds the same model) or a multi-scale
    coupling of :mod:`~src_models.models.text_coupling` on the encoder's skips and bottleneck
    as well. The skips then depend on the text, so a new prompt no longer reuses them.
    """

    img_size: int = 224
    in_chans: int = 3
    base_width: int = 64
    text_dim: int = 768
    text_len: int = 40
    embed_dim: int = 512
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    recon_depth: int = 1
    text_mask_ratio: float = 0.3
    image_mask_min: float = 0.3
    image_mask_max: float = 0.5
    temperature: float = 0.07
    contrastive_weight: float = 0.2
    reconstruction_weight: float = 1.0
    text_coupling: str = "paper"

    def __post_init__(self) -> None:
        check_text_coupling(self.text_coupling)
        if self.img_size <= 0 or self.img_size % 16:
            raise ValueError(f"img_size must be a positive multiple of 16, got {self.img_size}")
        for name in ("in_chans", "base_width", "text_dim", "text_len", "heads", "recon_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim < 1 or self.embed_dim % self.heads:
            raise ValueError(f"heads={self.heads} must divide embed_dim={self.embed_dim}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.text_mask_ratio < 1.0:
            raise ValueError(f"text_mask_ratio must be in (0, 1), got {self.text_mask_ratio}")
        if not 0.0 < self.image_mask_min <= self.image_mask_max < 1.0:
            raise ValueError(
                "need 0 < image_mask_min <= image_mask_max < 1, got "
                f"{self.image_mask_min}, {self.image_mask_max}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def grid(self) -> int:
        return self.img_size // 16

    @property
    def n_patches(self) -> int:
        return self.grid**2


@dataclass
class ImageFeatures:
    """The text-independent part of a forward pass, from :meth:`RecLMIS.encode_image`.

    tokens: image tokens ``[B, N, embed_dim]`` (with positional embedding);
    skips: per decoder block (deepest first) the skip half of its first convolution plus bias,
    ``[B, C_k, S_k, S_k]`` (``4W@S/8, 2W@S/4, W@S/2, W@S``); folded: whether the eval-mode
    BatchNorm after that convolution is folded in (features made in eval mode); weights: then
    also the folded decoder weights per block (transposed up-conv, second conv and its bias),
    derived once per image instead of once per prompt. Features belong to the weights that
    made them.
    """

    tokens: Tensor
    skips: tuple[Tensor, ...]
    folded: bool = False
    weights: tuple[tuple[Tensor, Tensor, Tensor], ...] = ()

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    def nbytes(self) -> int:
        """Memory the features hold (for cache accounting)."""
        tensors = (self.tokens, *self.skips, *(t for w in self.weights for t in w))
        return sum(t.numel() * t.element_size() for t in tensors)


# --------------------------------------------------------------------------- attention parts


def _attention(q: Tensor, k: Tensor, v: Tensor, key_keep: Tensor | None) -> Tensor:
    """Scaled dot-product attention over heads ``[B, h, N, d]`` with a key padding mask.

    ``key_keep``: bool ``[B, Lk]`` (True = real key) or None. A query row whose keys are all
    padding gets a zero output (not NaN): it attends to nothing.
    """
    if key_keep is None:
        return F.scaled_dot_product_attention(q, k, v)
    has = key_keep.any(dim=1)  # [B]
    # Rows without any real key attend everywhere (finite), then are zeroed.
    keep = key_keep | ~has[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
    return out * has.to(out.dtype)[:, None, None, None]


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x [B, N, D]`` over a context ``[B, L, D]``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, context_keep: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, c // h).transpose(1, 2)
        k, v = self.kv(context).view(b, -1, 2, h, c // h).permute(2, 0, 3, 1, 4)
        out = _attention(q, k, v, context_keep)  # [B, h, N, c/h]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, ratio: float, dropout: float) -> None:
        hidden = max(1, int(dim * ratio))
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )


class CrossBlock(nn.Module):
    """Pre-norm cross-attention block: ``x += attn(norm(x), norm(ctx)); x += ffn(norm(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_ratio, dropout)

    def forward(self, x: Tensor, context: Tensor, context_keep: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_ctx(context), context_keep)
        return x + self.ffn(self.norm2(x))


class DecoderBlock(nn.Module):
    """Transformer decoder block: self-attention, cross-attention to the context, FFN."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = CrossAttention(dim, heads)
        self.cross = CrossBlock(dim, heads, mlp_ratio, dropout)

    def forward(
        self, x: Tensor, keep: Tensor | None, context: Tensor, context_keep: Tensor | None
    ) -> Tensor:
        y = self.norm_self(x)
        x = x + self.self_attn(y, y, keep)
        return self.cross(x, context, context_keep)


class ReconstructionDecoder(nn.Module):
    """Small transformer decoder that rebuilds masked tokens of one modality from the other.

    ``forward(x [B, N, D], keep, context [B, L, D], context_keep) -> [B, N, out_dim]``.
    """

    def __init__(self, dim: int, heads: int, depth: int, mlp_ratio: float, out_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(DecoderBlock(dim, heads, mlp_ratio, 0.0) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)

    def forward(
        self, x: Tensor, keep: Tensor | None, context: Tensor, context_keep: Tensor | None
    ) -> Tensor:
        for block in self.blocks:
            x = block(x, keep, context, context_keep)
        return self.head(self.norm(x))


class InterestScore(nn.Module):
    """Patch/word-of-interest MLP ``D -> D -> 1`` and a softmax over the (real) tokens.

    ``forward(tokens [B, N, D], keep [B, N] bool or None) -> weights [B, N]``, rows summing to 1
    (0 for a row without real tokens).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, tokens: Tensor, keep: Tensor | None = None) -> Tensor:
        score = self.mlp(tokens).squeeze(-1).float()
        if keep is None:
            return score.softmax(dim=-1)
        score = score.masked_fill(~keep, float("-inf"))
        has = keep.any(dim=1, keepdim=True)
        return torch.where(has, score, torch.zeros_like(score)).softmax(dim=-1) * keep


def sample_by_weight(weights: Tensor, count: Tensor) -> Tensor:
    """Bool mask ``[B, N]`` with ``count[b]`` True entries per row, drawn without replacement in
    proportion to ``weights [B, N]`` (Gumbel top-k; zero-weight entries are never drawn)."""
    gumbel = -torch.log(-torch.log(torch.rand_like(weights).clamp(1e-9, 1 - 1e-9)))
    keys = torch.log(weights.detach().clamp_min(0)) + gumbel  # -inf where weight is 0
    rank = keys.argsort(dim=1, descending=True).argsort(dim=1)
    return (rank < count[:, None]) & (weights > 0)


# --------------------------------------------------------------------------- the model


class RecLMIS(nn.Module):
    """RecLMIS with a text padding mask. ``logits = model(image, text=None, text_mask=None)``.

    In training mode the forward pass also computes the auxiliary losses (reconstruction and
    conditioned contrastive) and keeps them for :meth:`auxiliary_losses`.
    """

    uses_text = True
    supports_feature_reuse = True

    def __init__(self, config: RecLMISConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else RecLMISConfig()
        self.config = cfg
        self.img_size = cfg.img_size
        self.in_chans = cfg.in_chans
        self.text_dim = cfg.text_dim
        self.text_len = cfg.text_len
        w, d = cfg.base_width, cfg.embed_dim

        self.encoder = UNetEncoder(cfg.in_chans, w)
        self.decoder = UNetDecoder(w, attention=True, up_mode="nearest")
        # Bottleneck interaction.
        self.to_tokens = nn.Conv2d(8 * w, d, 1)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches, d))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.text_to_image = CrossBlock(d, cfg.heads, cfg.mlp_ratio, cfg.dropout)
        self.image_to_text = CrossBlock(d, cfg.heads, cfg.mlp_ratio, cfg.dropout)
        self.from_tokens = nn.Conv2d(d, 8 * w, 1)
        # Training only: interest scores, masked mutual reconstruction.
        self.patch_interest = InterestScore(d)
        self.word_interest = InterestScore(d)
        self.image_mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.text_mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.text_pos_embed = nn.Parameter(torch.zeros(1, cfg.text_len, d))
        for p in (self.image_mask_token, self.text_mask_token, self.text_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        self.image_reconstructor = ReconstructionDecoder(
            d, cfg.heads, cfg.recon_depth, cfg.mlp_ratio, d
        )
        self.text_reconstructor = ReconstructionDecoder(
            d, cfg.heads, cfg.recon_depth, cfg.mlp_ratio, cfg.text_dim
        )
        self._auxiliary: dict[str, Tensor] = {}
        # Built only when chosen: a paper model keeps exactly its published parameters.
        self.coupling = None
        if cfg.text_coupling != "paper":
            self.coupling = MultiScaleTextCoupling(
                cfg.text_coupling, [w, 2 * w, 4 * w, 8 * w, 8 * w], cfg.text_dim, (1, 2, 3, 4)
            )
            self.supports_feature_reuse = False  # the skips now depend on the text

    # ----------------------------------------------------------------------------- text

    def prepare_text(
        self, text: Tensor | None, text_mask: Tensor | None, batch: int, ref: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Check and truncate to ``text_len`` tokens; zero the padding.

        Returns features ``[B, L, text_dim]`` and a bool keep-mask ``[B, L]`` (None when every
        token is real). No text is one padding token (the image attends to nothing).
        """
        n, d = self.text_len, self.text_dim
        if text is None:
            return ref.new_zeros(batch, 1, d), torch.zeros(
                batch, 1, dtype=torch.bool, device=ref.device
            )
        if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != d:
            raise ValueError(
                f"expected text features of shape [B={batch}, L, {d}], got {list(text.shape)}"
            )
        length = text.shape[1]
        if text_mask is not None and tuple(text_mask.shape) != (batch, length):
            raise ValueError(
                f"text_mask must have shape {[batch, length]} (like text's first two dims), "
                f"got {list(text_mask.shape)}"
            )
        text = text[:, :n].to(ref.dtype)
        if text_mask is None:
            return text, None
        keep = text_mask[:, :n].to(device=text.device, dtype=torch.bool)
        # where, not multiply: padding may hold anything, even inf/NaN.
        return torch.where(keep[..., None], text, torch.zeros_like(text)), keep

    # ----------------------------------------------------------------------------- parts

    def image_tokens(self, bottleneck: Tensor) -> Tensor:
        """Bottleneck ``[B, 8W, g, g]`` -> tokens ``[B, g*g, embed_dim]`` (1x1 conv + pos)."""
        t = self.to_tokens(bottleneck).flatten(2).transpose(1, 2)
        return t + self.pos_embed.to(t.dtype)

    def interact(
        self, tokens: Tensor, text: Tensor | None, text_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """Text attends to the image, then the image to the updated text.

        Returns ``(image_out [B, N, D], text_in [B, L, text_dim], text_tokens [B, L, D],
        text_out [B, L, D], keep [B, L] bool or None)``.
        """
        txt, keep = self.prepare_text(text, text_mask, tokens.shape[0], tokens)
        t0 = self.text_proj(txt)
        t1 = self.text_to_image(t0, tokens)
        v1 = self.image_to_text(tokens, t1, keep)
        return v1, txt, t0, t1, keep

    def tokens_to_map(self, tokens: Tensor) -> Tensor:
        """Tokens ``[B, g*g, D]`` -> bottleneck map ``[B, 8W, g, g]`` (channels-last)."""
        b, n, c = tokens.shape
        g = self.config.grid
        grid = tokens.reshape(b, g, g, c).permute(0, 3, 1, 2)  # channels-last view
        return self.from_tokens(grid)

    # ----------------------------------------------------------------------------- forward

    def forward(
        self, image: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None
    ) -> Tensor:
        """``image [B, C, S, S]``, ``text [B, L, text_dim]``, ``text_mask [B, L]`` -> logits
        ``[B, 1, S, S]``. In training mode (with text) also computes the auxiliary losses."""
        check_image(image, self.in_chans, self.img_size)
        feats = self.encoder(image)
        if self.coupling is not None:
            txt, keep = self.prepare_text(text, text_mask, image.shape[0], image)
            feats = self.coupling(feats, txt, keep)
        v0 = self.image_tokens(feats[4])
        v1, txt, t0, t1, keep = self.interact(v0, text, text_mask)
        feats[4] = self.tokens_to_map(v1)
        self._auxiliary = {}
        if self.training and text is not None:
            self._auxiliary = self._training_losses(v0, v1, txt, t0, t1, keep)
        return self.decoder(feats)

    def auxiliary_losses(self) -> dict[str, Tensor]:
        """The weighted training-only loss terms of the last forward pass (scalars), once.

        ``{"contrast": ..., "rec_image": ..., "rec_text": ...}`` after a training-mode forward
        with text, else ``{}``. Returned terms are cleared, so a stale graph is never reused.
        """
        out, self._auxiliary = self._auxiliary, {}
        return out

    def _training_losses(
        self, v0: Tensor, v1: Tensor, txt: Tensor, t0: Tensor, t1: Tensor, keep: Tensor | None
    ) -> dict[str, Tensor]:
        cfg = self.config
        b, n, _ = v0.shape
        length = t0.shape[1]
        if keep is None:
            keep = torch.ones(b, length, dtype=torch.bool, device=v0.device)
        # Interest weights from the conditioned (cross-attended) tokens.
        w_img = self.patch_interest(v1)  # [B, N]
        w_txt = self.word_interest(t1, keep)  # [B, L]
        contrast = conditioned_contrastive_loss(v0, w_img, t0, w_txt, cfg.temperature)

        # Mask tokens in proportion to their interest, rebuild them from the other modality.
        ratio = cfg.image_mask_min + (cfg.image_mask_max - cfg.image_mask_min) * float(
            torch.rand(())
        )
        n_img = torch.full((b,), max(1, round(ratio * n)), device=v0.device)
        img_masked = sample_by_weight(w_img, n_img)
        n_real = keep.sum(dim=1)
        n_txt = (n_real.float() * cfg.text_mask_ratio).round().clamp_min(1).long()
        n_txt = torch.minimum(n_txt, n_real)
        txt_masked = sample_by_weight(w_txt, n_txt) & keep

        pos = self.pos_embed.to(v0.dtype)
        v_in = torch.where(img_masked[..., None], self.image_mask_token + pos, v0)
        v_rec = self.image_reconstructor(v_in, None, t0, keep)
        rec_image = masked_mse(v_rec, v0.detach(), img_masked)

        t_in = torch.where(txt_masked[..., None], self.text_mask_token, t0)
        t_in = t_in + self.text_pos_embed[:, :length].to(t0.dtype)
        t_rec = self.text_reconstructor(t_in, keep, v0, None)
        rec_text = masked_mse(t_rec, txt.detach(), txt_masked)
        return {
            "contrast": cfg.contrastive_weight * contrast,
            "rec_image": cfg.reconstruction_weight * rec_image,
            "rec_text": cfg.reconstruction_weight * rec_text,
        }

    # ----------------------------------------------------------------------------- reuse

    def _up_blocks(self) -> tuple[nn.Module, ...]:
        dec = self.decoder
        return (dec.up4, dec.up3, dec.up2, dec.up1)

    def encode_image(self, image: Tensor) -> ImageFeatures:
        """The text-independent part of the forward pass for ``image [B, C, S, S]``.

        Runs the encoder, the token projection, PLAM on each skip and the skip half of each
        decoder block's first conv (with its bias): ``conv(cat[skip, up]) = conv_skip(skip) +
        conv_up(up)``, so a new text only pays for ``conv_up``. In eval mode the BatchNorm that
        follows is folded in as well (``folded=True``).
        """
        if self.coupling is not None:
            raise RuntimeError(
                f"text_coupling={self.config.text_coupling!r} conditions the skips on the text: "
                "there is no text-independent part to reuse; call the model instead"
            )
        check_image(image, self.in_chans, self.img_size)
        feats = self.encoder(image)
        folded = not self.training
        skips, weights = [], []
        for block, skip in zip(self._up_blocks(), feats[3::-1], strict=True):
            (conv, norm, _), (conv2, norm2, _) = block.convs
            half = conv.in_channels // 2
            if block.plam is not None:
                skip = block.plam(skip)
            weight, bias = conv.weight[:, :half], conv.bias
            if folded:
                weight, bias = _fold_norm(weight, bias, norm)
                up = _fold_norm(conv.weight[:, half:], None, norm)[0]
                if block.up is None:
                    up = nearest_up_conv_weight(up)
                weights.append((up, *_fold_norm(conv2.weight, conv2.bias, norm2)))
            skips.append(F.conv2d(skip, weight, bias, padding=conv.padding))
        return ImageFeatures(self.image_tokens(feats[4]), tuple(skips), folded, tuple(weights))

    def decode(
        self, features: ImageFeatures, text: Tensor | None = None, text_mask: Tensor | None = None
    ) -> Tensor:
        """The text-dependent rest: interaction and decoder -> logits ``[B, 1, S, S]``.

        ``features`` from :meth:`encode_image` (batch B), text as in :meth:`forward`. No
        auxiliary losses: this is the inference path. With eval-mode (folded) features, each
        block's "x2 nearest upsampling -> 3x3 conv" runs as one stride-2 transposed 4x4 conv on
        the coarse map (the same linear map, 4 instead of 9 taps per output pixel) and the
        BatchNorms are folded into the convs.
        """
        if features.folded and self.training:
            raise ValueError("features from encode_image in eval mode need decode in eval mode")
        v1 = self.interact(features.tokens, text, text_mask)[0]
        x = self.tokens_to_map(v1)
        for i, (block, part) in enumerate(zip(self._up_blocks(), features.skips, strict=True)):
            first, second = block.convs
            conv, norm, act = first
            if not features.folded:  # batch statistics: the modules themselves
                weight = conv.weight[:, conv.in_channels // 2 :]
                x = block.up(x) if block.up is not None else F.interpolate(x, scale_factor=2.0)
                x = F.conv2d(x, weight, None, padding=conv.padding) + part
                x = second(act(norm(x)))
                continue
            up, weight2, bias2 = features.weights[i]
            if block.up is None:
                x = F.conv_transpose2d(x, up, stride=2, padding=1)
            else:
                x = F.conv2d(block.up(x), up, None, padding=conv.padding)
            x = F.relu(x.add_(part), inplace=True)
            x = F.relu(F.conv2d(x, weight2, bias2, padding=1), inplace=True)
        return self.decoder.head(x)


def _fold_norm(weight: Tensor, bias: Tensor | None, norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Conv weight ``[O, I, k, k]`` and bias ``[O]`` (or None) with an eval-mode BatchNorm that
    follows folded in: ``norm(conv(x)) == conv'(x)``."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    shift = norm.bias - norm.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    return weight * scale.view(-1, 1, 1, 1), shift


# How the 3 taps of a conv over a x2 nearest-upsampled axis act on the coarse axis: output
# phase 0 reads coarse rows (i-1, i, i) and phase 1 rows (i, i, i+1); as a stride-2 transposed
# conv with padding 1 the 4 taps are [w2, w1 + w2, w0 + w1, w0].
_NEAREST_UP_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def nearest_up_conv_weight(weight: Tensor) -> Tensor:
    """``conv2d(nearest_x2(x), weight, padding=1) == conv_transpose2d(x, w', stride=2,
    padding=1)``: ``weight [O, I, 3, 3]`` -> ``w' [I, O, 4, 4]``."""
    taps = weight.new_tensor(_NEAREST_UP_TAPS)
    return torch.einsum("ai,ocij,bj->coab", taps, weight, taps).contiguous()


def _build(defaults: dict, overrides: dict) -> RecLMIS:
    return RecLMIS(build_config(RecLMISConfig, defaults, overrides, "RecLMIS"))


@register_model
def reclmis(**overrides) -> RecLMIS:
    """The paper's size: width 64 (512-channel bottleneck), 224x224, 512-d interaction with
    4 heads, BERT-base text (768-d)."""
    return _build(
        dict(img_size=224, base_width=64, text_dim=768, embed_dim=512, heads=4), overrides
    )


@register_model
def reclmis_s(**overrides) -> RecLMIS:
    """CPU-friendly default: width 16, 224x224, 128-d interaction (the bottleneck's width),
    all-MiniLM-L6-v2 text (384-d)."""
    return _build(
        dict(img_size=224, base_width=16, text_dim=384, embed_dim=128, heads=4), overrides
    )


@register_model
def reclmis_tiny(**overrides) -> RecLMIS:
    """For tests: width 8, 64x64, 64-d interaction, 384-d text."""
    return _build(dict(img_size=64, base_width=8, text_dim=384, embed_dim=64, heads=4), overrides)

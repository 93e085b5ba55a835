"""U-Net without text: the baseline of the LViT paper, with LViT's CNN (plain concat skips).

Accepts ``text`` and ``text_mask`` for interface compatibility and ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from src_models.models.blocks import UNetDecoder, UNetEncoder, check_image
from src_models.models.registry import build_config, register_model

__all__ = ["UNet", "UNetConfig", "unet", "unet_s", "unet_tiny"]


@dataclass
class UNetConfig:
    """Configuration of :class:`UNet` (all fields JSON-serialisable).

    ``up_mode``: ``"nearest"`` (x2 nearest upsampling, as in LViT's decoder) or ``"transpose"``
    (2x2 stride-2 transposed conv, as in the LViT repository's U-Net baseline).
    ``text_dim``/``text_len`` are unused; they only describe what text the caller may pass.
    """

    img_size: int = 224
    in_chans: int = 3
    base_width: int = 64
    up_mode: str = "nearest"
    text_dim: int = 384
    text_len: int = 40

    def __post_init__(self) -> None:
        if self.img_size <= 0 or self.img_size % 16:
            raise ValueError(f"img_size must be a positive multiple of 16, got {self.img_size}")
        if self.base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {self.base_width}")
        if self.up_mode not in ("nearest", "transpose"):
            raise ValueError(f"up_mode must be 'nearest' or 'transpose', got {self.up_mode!r}")


class UNet(nn.Module):
    """``logits = model(image, text=None, text_mask=None)``; text is ignored."""

    uses_text = False

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else UNetConfig()
        self.config = cfg
        self.img_size = cfg.img_size
        self.in_chans = cfg.in_chans
        self.text_dim = cfg.text_dim
        self.text_len = cfg.text_len
        self.encoder = UNetEncoder(cfg.in_chans, cfg.base_width)
        self.decoder = UNetDecoder(cfg.base_width, attention=False, up_mode=cfg.up_mode)

    def forward(
        self, image: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None
    ) -> Tensor:
        check_image(image, self.in_chans, self.img_size)
        return self.decoder(self.encoder(image))

    def forward_features(
        self, image: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(logits [B, 1, S, S], features [B, W, S, S])`` (the map the head reads)."""
        check_image(image, self.in_chans, self.img_size)
        x = self.decoder.forward_features(self.encoder(image))
        return self.decoder.head(x), x


def _build(defaults: dict, overrides: dict) -> UNet:
    return UNet(build_config(UNetConfig, defaults, overrides, "U-Net"))


@register_model
def unet(**overrides) -> UNet:
    """The paper's U-Net baseline: width 64, 224x224."""
    return _build(dict(img_size=224, base_width=64), overrides)


@register_model
def unet_s(**overrides) -> UNet:
    """Same width as ``lvit_s`` (16), 224x224."""
    return _build(dict(img_size=224, base_width=16), overrides)


@register_model
def unet_tiny(**overrides) -> UNet:
    """For tests: width 8, 64x64."""
    return _build(dict(img_size=64, base_width=8), overrides)

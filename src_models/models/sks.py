"""SKS ("Skip and Skip", Chen et al. 2024): image-level labels prompt segmentation.

A small classification network (lesion / no lesion) is trained first on image-level labels
(stage 1, :func:`src_models.engine.sks.train_classifier`); its pyramid features then enter the
segmentation network's encoder levels (stage 2, ordinary segmentation training). At each of the
five encoder levels the fusion is the feature-share skip of the paper (concatenation and a 1x1
conv) plus a resolution-compensation skip: the classifier's next, coarser level, upsampled x2,
which brings its deeper (more image-level) evidence to the finer level. Written as a residual,
``f_i + conv_i([f_i, g_i, up(g_(i+1))])`` (the deepest level has no coarser one), with
``conv_i`` initialised to zero. So at initialisation the model computes exactly what its base
model computes, and a pretrained base checkpoint loses nothing by being wrapped.

The base is any registry model whose image encoder is a
:class:`~src_models.models.blocks.UNetEncoder` at ``base.encoder`` (LViT, U-Net): the fusion is
a forward hook on that encoder, so the base model's code and state-dict keys (under ``seg.``)
stay as they are.

By default the classifier is frozen in stage 2 (no gradients, BatchNorm in eval mode): it stays
the model of the image-level labels; :meth:`SKS.classifier_training` unfreezes it for stage 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from src_models.models.blocks import UNetEncoder, cat_channels_last
from src_models.models.features import logits_and_features
from src_models.models.registry import create_model, register_model

__all__ = ["SKS", "SKSClassifier", "SKSConfig", "sks_lvit_s", "sks_lvit_tiny", "sks_unet_tiny"]


@dataclass
class SKSConfig:
    """``base``: registry name of the segmentation model; ``base_config``: its full config;
    ``cls_width``: width of the classifier's U-Net-style encoder (levels W, 2W, 4W, 8W, 8W)."""

    base: str = "lvit_s"
    cls_width: int = 8
    base_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.cls_width) < 1:
            raise ValueError(f"cls_width must be >= 1, got {self.cls_width}")

    # The fields every model config has, read from the base model's config.
    @property
    def img_size(self) -> int:
        return int(self.base_config["img_size"])

    @property
    def in_chans(self) -> int:
        return int(self.base_config.get("in_chans", 3))

    @property
    def text_dim(self) -> int | None:
        return self.base_config.get("text_dim")

    @property
    def text_len(self) -> int | None:
        return self.base_config.get("text_len")


class SKSClassifier(nn.Module):
    """Lesion / no-lesion classifier: a :class:`UNetEncoder` and a linear head on the pooled
    deepest map. ``features(image)`` gives the five pyramid maps, ``forward`` the logits ``[B]``."""

    def __init__(self, in_chans: int, width: int) -> None:
        super().__init__()
        self.encoder = UNetEncoder(in_chans, width)
        self.head = nn.Linear(8 * width, 1)
        self.widths = [width, 2 * width, 4 * width, 8 * width, 8 * width]

    def features(self, image: Tensor) -> list[Tensor]:
        """``[B, W_k, S / 2^k, S / 2^k]`` for ``k = 0..4``."""
        return self.encoder(image)

    def forward(self, image: Tensor) -> Tensor:
        """Image-level logits ``[B]`` (lesion present) for images ``[B, C, S, S]``."""
        return self.head(self.features(image)[-1].mean(dim=(2, 3))).squeeze(1)


class SKS(nn.Module):
    """A segmentation model fed by an image-level classifier; same call as its base model:
    ``logits = model(image, text=None, text_mask=None)`` -> ``[B, 1, S, S]``."""

    def __init__(self, seg: nn.Module, config: SKSConfig) -> None:
        super().__init__()
        encoder = getattr(seg, "encoder", None)
        if not isinstance(encoder, UNetEncoder):
            raise TypeError(
                f"SKS needs a base model with a UNetEncoder at .encoder, {type(seg).__name__} "
                "has none"
            )
        self.config = config
        self.seg = seg
        self.uses_text = bool(getattr(seg, "uses_text", False))
        self.img_size = int(seg.img_size)
        self.in_chans = int(seg.in_chans)
        self.text_dim = getattr(seg, "text_dim", None)
        self.text_len = getattr(seg, "text_len", None)
        self.classifier = SKSClassifier(self.in_chans, int(config.cls_width))
        w = encoder.inc[0].out_channels
        seg_widths = [w, 2 * w, 4 * w, 8 * w, 8 * w]
        cls = self.classifier.widths
        coarser = [*cls[1:], 0]  # the resolution-compensation input of each level
        self.fuse = nn.ModuleList(
            nn.Conv2d(a + b + c, a, 1) for a, b, c in zip(seg_widths, cls, coarser, strict=True)
        )
        for conv in self.fuse:  # zero: the model starts as its base model, exactly
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.freeze_classifier = True
        self._set_classifier_grad(False)
        self._hook = encoder.register_forward_hook(self._fuse_hook)

    # ----------------------------------------------------------------- fusion
    def _fuse_hook(self, _module: nn.Module, args: tuple, feats: list[Tensor]) -> list[Tensor]:
        image = args[0]
        side = [g.to(feats[0].dtype) for g in self.classifier.features(image)]
        out = []
        for i, (f, conv) in enumerate(zip(feats, self.fuse, strict=True)):
            maps = [f, side[i]]
            if i + 1 < len(side):
                maps.append(F.interpolate(side[i + 1], size=f.shape[-2:], mode="nearest"))
            out.append(f + conv(cat_channels_last(maps)))
        return out

    def forward(
        self, image: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None
    ) -> Tensor:
        return self.seg(image, text=text, text_mask=text_mask)

    def forward_features(
        self, image: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(logits, last decoder features)`` of the base model (see ``models.features``)."""
        return logits_and_features(self.seg, image, text, text_mask)

    def classify(self, image: Tensor) -> Tensor:
        """Image-level lesion logits ``[B]``."""
        return self.classifier(image)

    # ----------------------------------------------------------------- stages
    def _set_classifier_grad(self, on: bool) -> None:
        for p in self.classifier.parameters():
            p.requires_grad_(on)

    def train(self, mode: bool = True) -> SKS:
        super().train(mode)
        if self.freeze_classifier:
            self.classifier.eval()  # frozen: its BatchNorm statistics stay those of stage 1
        return self

    @contextlib.contextmanager
    def classifier_training(self) -> Iterator[SKSClassifier]:
        """Stage 1: within the block only the classifier trains (gradients, train mode)."""
        frozen = self.freeze_classifier
        self.freeze_classifier = False
        self._set_classifier_grad(True)
        self.classifier.train()
        try:
            yield self.classifier
        finally:
            self.freeze_classifier = frozen
            self._set_classifier_grad(not frozen)
            self.train(self.training)


def _build(base: str, overrides: dict[str, Any]) -> SKS:
    overrides = dict(overrides)
    given = overrides.pop("base", base)
    if given != base:
        raise TypeError(f"this SKS variant wraps {base!r}, not {given!r}")
    cls_width = int(overrides.pop("cls_width", 8))
    base_config = dict(overrides.pop("base_config", None) or {})
    base_config.update(overrides)  # flat overrides (img_size, text_dim, ...) go to the base
    seg = create_model(base, **base_config)
    return SKS(seg, SKSConfig(base=base, cls_width=cls_width, base_config=seg.model_config))


@register_model
def sks_lvit_s(**overrides: Any) -> SKS:
    """SKS over ``lvit_s`` with a width-8 classifier."""
    return _build("lvit_s", overrides)


@register_model
def sks_lvit_tiny(**overrides: Any) -> SKS:
    """For tests: SKS over ``lvit_tiny`` with a width-4 classifier."""
    return _build("lvit_tiny", {"cls_width": 4, **overrides})


@register_model
def sks_unet_tiny(**overrides: Any) -> SKS:
    """For tests: SKS over ``unet_tiny`` with a width-4 classifier."""
    return _build("unet_tiny", {"cls_width": 4, **overrides})

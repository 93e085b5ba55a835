"""One way to get a model's last decoder feature map beside its logits, for any registry model.

Models that define ``forward_features(image, text, text_mask) -> (logits, features)`` (LViT,
U-Net, SKS) are called through it. Any other model (or a DDP wrapper, whose gradient hooks only
run through its own ``forward``) is called normally while a forward hook records the input of
its ``decoder.head`` (the U-shaped models here all end in such a 1x1 head).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["feature_module", "logits_and_features"]


def _unwrap(model: nn.Module) -> nn.Module:
    return (
        model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    )


def feature_module(model: nn.Module) -> nn.Module:
    """The module whose input is the feature map (``decoder.head``); raises if there is none."""
    raw = _unwrap(model)
    head = getattr(getattr(raw, "decoder", None), "head", None)
    if isinstance(head, nn.Module):
        return head
    finder = getattr(raw, "feature_module", None)
    if callable(finder):
        return finder()
    raise TypeError(
        f"{type(raw).__name__} has neither forward_features() nor a decoder.head: CLCC needs "
        "its last feature map"
    )


def logits_and_features(
    model: nn.Module, image: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(logits [B, 1, S, S], features [B, C, S, S])``; the logits equal ``model(...)``'s."""
    raw = _unwrap(model)
    fn = getattr(model, "forward_features", None)
    if raw is model and callable(fn):
        return fn(image, text=text, text_mask=text_mask)
    seen: list[Tensor] = []
    handle = feature_module(model).register_forward_hook(
        lambda _m, args, _out: seen.append(args[0])
    )
    try:
        logits = model(image, text=text, text_mask=text_mask)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise RuntimeError(f"the feature module ran {len(seen)} times in one forward pass")
    return logits, seen[0]

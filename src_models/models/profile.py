"""Model size and cost: parameter count and multiply-accumulates of one forward pass."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def dummy_inputs(
    model: nn.Module, batch: int = 1, img_size: int | None = None, text_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A random image batch (and text features if the model uses text) on the model's device."""
    param = next(model.parameters())
    size = img_size if img_size is not None else model.img_size
    image = torch.rand(batch, model.in_chans, size, size, device=param.device, dtype=param.dtype)
    text = None
    if getattr(model, "uses_text", False):
        n = text_len if text_len is not None else model.config.text_len
        text = torch.randn(batch, n, model.text_dim, device=param.device, dtype=param.dtype)
    return image, text


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int | None = None, text_len: int | None = None) -> int:
    """Multiply-accumulates of one forward pass on a batch of one (eval mode).

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions,
    attention) as FLOPs / 2; element-wise operations and normalisation are not counted.
    ``img_size``/``text_len`` default to the model's own.
    """
    image, text = dummy_inputs(model, 1, img_size, text_len)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(image, text)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2

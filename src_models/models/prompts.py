"""Prompt inputs for any registry model: clicks, a box and the previous mask as extra input maps.

A model that reads prompts is the same model with one small module added,
``model.prompt_adapter`` (:class:`PromptAdapter`), whose output is added to the output of the
model's first image convolution (the "Conv1S" fusion of interactive segmentation: prompt
features summed with the first image features). Nothing in the model family changes, so every
family gets it the same way (``create_model(name, prompts=True)`` or
:func:`add_prompt_inputs`), and its state-dict keys stay those of the plain model plus
``prompt_adapter.*``.

The adapter has no biases and its last convolution starts at zero: at first, and whenever the
prompt maps are all zero, it adds exactly nothing. So a checkpoint without prompt inputs loads
into a prompted model and predicts the same masks, and a prompted model called without prompts
is its text-only self.

Prompt maps (:data:`PROMPT_CHANNELS`), float ``[B, 4, S, S]`` at the model's input size:
positive-click disks, negative-click disks, the box as a filled rectangle, the previous mask
(probabilities in [0, 1]). Click disks have radius :func:`click_radius` (model pixels).

The maps reach the adapter through :func:`prompting` (a context manager around the model call),
because every family's ``forward(image, text, text_mask)`` stays as it is::

    with prompting(model, maps):
        logits = model(image, text, text_mask)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ADAPTER_NAME",
    "PROMPT_CHANNELS",
    "Click",
    "PromptAdapter",
    "add_prompt_inputs",
    "click_radius",
    "encode_prompts",
    "entry_conv",
    "prompting",
    "reads_prompts",
]

#: The attribute (and state-dict prefix) of the adapter on a prompted model.
ADAPTER_NAME = "prompt_adapter"
PROMPT_CHANNELS: tuple[str, ...] = ("positive clicks", "negative clicks", "box", "previous mask")
#: ``(y, x, sign)``: a click at row ``y``, column ``x`` (pixel centres at integers), ``sign``
#: +1 adds to the mask, -1 removes from it.
Click = tuple[float, float, int]

# The maps waiting for the next forward pass, per thread (the widget predicts from a worker
# thread while a test or the main thread may use another model) and per adapter (by id).
_pending = threading.local()


def click_radius(size: int) -> int:
    """Radius in model pixels of a click disk for a model of input side ``size``: 1/40 of the
    side, at least 2 (3 px at 128, 6 px at 224; interactive-segmentation work uses 5 px disks
    at 300-500 px inputs)."""
    return max(2, round(int(size) / 40))


class PromptAdapter(nn.Module):
    """Prompt maps ``[B, P, S, S]`` -> features ``[B, out_channels, S, S]`` to add to the first
    image features. Two bias-free convolutions (3x3 -> ReLU -> 1x1); the last starts at zero,
    so the adapter adds zero until trained, and adds zero for all-zero maps at any time."""

    def __init__(
        self, out_channels: int, in_channels: int = len(PROMPT_CHANNELS), hidden: int = 16
    ):
        super().__init__()
        self.in_channels = int(in_channels)
        self.embed = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        nn.init.zeros_(self.project.weight)

    def forward(self, maps: Tensor) -> Tensor:
        return self.project(F.relu(self.embed(maps)))

    def add_to(self, features: Tensor) -> Tensor:
        """``features`` plus what the pending maps of this thread add (nothing without maps)."""
        maps = getattr(_pending, "maps", {}).get(id(self))
        if maps is None:
            return features
        maps = maps.to(device=features.device, dtype=features.dtype)
        if maps.shape[-2:] != features.shape[-2:]:
            maps = F.interpolate(maps, size=features.shape[-2:], mode="bilinear")
        return features + self.forward(maps)

    def hook(self, _module: nn.Module, _args: tuple, output: Tensor) -> Tensor:
        """Forward hook of the model's entry convolution: its output plus the prompts'."""
        return self.add_to(output)


def _raw(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def reads_prompts(model: nn.Module) -> bool:
    """Does ``model`` (or the model a DDP wrapper holds) have prompt inputs?"""
    return isinstance(getattr(_raw(model), ADAPTER_NAME, None), PromptAdapter)


def entry_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """``(name, module)`` of the first convolution that reads the image (``in_chans``
    channels): ``encoder.inc.0`` in LViT, U-Net, RecLMIS; ``seg.encoder.inc.0`` in SKS (its
    segmentation network, registered before the classifier)."""
    in_chans = int(getattr(model, "in_chans", 3))
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == in_chans:
            return name, module
    raise TypeError(f"{type(model).__name__} has no Conv2d reading {in_chans} image channels")


def add_prompt_inputs(model: nn.Module) -> nn.Module:
    """Give ``model`` prompt inputs, in place (a no-op if it has them); returns it.

    Adds ``model.prompt_adapter`` (on the model's device and dtype) and a forward hook on the
    model's :func:`entry_conv`; records ``"prompts": True`` in ``model.model_config`` so that
    a checkpoint rebuilds it with ``create_model(name, **model_config)``.
    """
    if reads_prompts(model):
        return model
    _name, conv = entry_conv(model)
    adapter = PromptAdapter(conv.out_channels).to(
        device=conv.weight.device, dtype=conv.weight.dtype
    )
    model.add_module(ADAPTER_NAME, adapter)
    # A bound method of the adapter, not a closure: copy.deepcopy copies a bound method with
    # its object (through the memo), so a copy of the model feeds its own adapter.
    conv.register_forward_hook(adapter.hook)
    config = getattr(model, "model_config", None)
    if isinstance(config, dict):
        config["prompts"] = True
    return model


@contextmanager
def prompting(model: nn.Module, maps: Tensor | None) -> Iterator[None]:
    """Feed ``maps`` (``[B, 4, S, S]``, or ``None``: no prompts) to the model's adapter during
    the forward passes inside the block (this thread only). A model without prompt inputs
    refuses maps; ``None`` is always fine."""
    if maps is None:
        yield
        return
    if not reads_prompts(model):
        raise ValueError(
            f"{type(_raw(model)).__name__} reads no clicks or boxes: build it with "
            "create_model(name, prompts=True) or train it with `napari-lvit train --clicks`"
        )
    adapter = getattr(_raw(model), ADAPTER_NAME)
    if maps.ndim != 4 or maps.shape[1] != adapter.in_channels:
        raise ValueError(
            f"prompt maps must be [B, {adapter.in_channels}, S, S], got {tuple(maps.shape)}"
        )
    table = getattr(_pending, "maps", None)
    if table is None:
        table = _pending.maps = {}
    before = table.get(id(adapter))
    table[id(adapter)] = maps
    try:
        yield
    finally:
        if before is None:
            table.pop(id(adapter), None)
        else:
            table[id(adapter)] = before


def _disk_kernel(radius: int, device: torch.device) -> Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2 + 0.5).float()[None, None]


def encode_prompts(
    size: int | tuple[int, int],
    clicks: Sequence[Sequence[Click]],
    boxes: Sequence[tuple[float, float, float, float] | None] | None = None,
    previous: Tensor | None = None,
    radius: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Prompt maps float32 ``[B, 4, size, size]`` for a batch, in model pixel coordinates.

    Args:
        size: the model's input side S, or ``(H, W)`` for maps of another shape (a whole image
            at the working resolution, to be cut into tiles).
        clicks: per item, ``(y, x, sign)`` clicks (rounded to the nearest pixel and clamped
            into the map); any number, the cost does not grow with it (one convolution of a
            point grid with a disk).
        boxes: per item ``(y0, x0, y1, x1)`` (inclusive corners, any order) or ``None``.
        previous: the previous prediction ``[B, 1, S, S]`` or ``[B, S, S]`` in [0, 1].
        radius: disk radius in pixels (default :func:`click_radius`).
    """
    n = len(clicks)
    height, width = (int(size), int(size)) if isinstance(size, int) else map(int, size)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    maps = torch.zeros(n, len(PROMPT_CHANNELS), height, width, device=dev)
    points = torch.zeros(n, 2, height, width, device=dev)
    for i, item in enumerate(clicks):
        for y, x, sign in item:
            row = min(max(int(round(float(y))), 0), height - 1)
            col = min(max(int(round(float(x))), 0), width - 1)
            points[i, 0 if sign > 0 else 1, row, col] = 1.0
    if points.any():
        r = click_radius(max(height, width)) if radius is None else int(radius)
        spread = F.conv2d(points.view(n * 2, 1, height, width), _disk_kernel(r, dev), padding=r)
        maps[:, :2] = (spread.view(n, 2, height, width) > 0.5).float()
    for i, box in enumerate(boxes or ()):
        if box is None:
            continue
        y0, x0, y1, x1 = (float(v) for v in box)
        r0, r1 = sorted((y0, y1))
        c0, c1 = sorted((x0, x1))
        r0, c0 = max(int(round(r0)), 0), max(int(round(c0)), 0)
        r1, c1 = min(int(round(r1)), height - 1), min(int(round(c1)), width - 1)
        if r1 >= r0 and c1 >= c0:
            maps[i, 2, r0 : r1 + 1, c0 : c1 + 1] = 1.0
    if previous is not None:
        prev = previous.to(dev, torch.float32)
        if prev.ndim == 3:
            prev = prev[:, None]
        if prev.shape != (n, 1, height, width):
            raise ValueError(
                f"previous must be [{n}, 1, {height}, {width}], got {tuple(prev.shape)}"
            )
        maps[:, 3:4] = prev.clamp(0.0, 1.0)
    return maps

"""Sliding-window prediction over large 2D images at a :class:`WorkingResolution`.

::

    res = WorkingResolution("patches", patch=128, scale=2.0)
    prob = predict_tiled(image, model_predictor(model, encoder, text), res)   # [H, W] float32

The image is rescaled by ``1 / res.scale``, zero-padded up to one patch where it is smaller,
cut into ``patch x patch`` tiles that overlap by ``overlap`` (a fraction of the patch; the last
tile of each row and column is aligned to the edge), and the tiles go through ``fn`` in batches.
The outputs are blended with a smooth window (a raised cosine that never reaches zero, so
pixels seen by one tile only keep their value), divided by the summed weights, cropped and
resized back to the image's size. The blend is a normalised weighted mean: a ``fn`` that returns
its input gives the input back (exactly at ``scale`` 1). In ``"whole"`` mode the image is resized
to ``patch x patch``, run once, and the output resized back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from src_models.data import transforms as T
from src_models.data.patches import rescale_image
from src_models.data.resolution import WorkingResolution

__all__ = [
    "blend_window",
    "model_predictor",
    "predict_tiled",
    "tile_grid",
    "tile_starts",
]

TileFn = Callable[[torch.Tensor], Any]


def tile_starts(length: int, patch: int, overlap: float = 0.25) -> list[int]:
    """Start offsets of tiles of size ``patch`` covering ``[0, length)``.

    Consecutive tiles overlap by at least ``overlap * patch`` pixels (``0 <= overlap < 1``); the
    last tile ends at ``length``. ``length <= patch`` gives ``[0]``.
    """
    length, patch = int(length), int(patch)
    if patch < 1:
        raise ValueError(f"patch must be positive, got {patch}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= patch:
        return [0]
    stride = max(1, int(patch * (1.0 - overlap)))
    n = -(-(length - patch) // stride) + 1  # tiles needed with this stride
    # Spread the n tiles evenly (same or smaller stride), first at 0, last at length - patch.
    return [round(i * (length - patch) / (n - 1)) for i in range(n)]


def tile_grid(shape: tuple[int, int], patch: int, overlap: float = 0.25) -> list[tuple[int, int]]:
    """All ``(y, x)`` tile corners for an image of ``shape`` (``(h, w)``)."""
    ys = tile_starts(shape[0], patch, overlap)
    xs = tile_starts(shape[1], patch, overlap)
    return [(y, x) for y in ys for x in xs]


def blend_window(patch: int, kind: str = "cosine", floor: float = 1e-3) -> np.ndarray:
    """Blending weights ``[patch, patch]`` float64, positive everywhere.

    ``"cosine"``: a separable raised cosine (Hann) peaking at the centre, clipped below at
    ``floor``, so tile borders, where a CNN sees zero padding, count little wherever another tile
    covers them. ``"uniform"``: all ones (a plain mean).
    """
    if kind == "uniform":
        return np.ones((patch, patch))
    if kind != "cosine":
        raise ValueError(f"unknown window {kind!r}; use 'cosine' or 'uniform'")
    t = (np.arange(patch) + 0.5) / patch
    w1 = np.sin(np.pi * t) ** 2
    return np.maximum(np.outer(w1, w1), floor)


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _as_numpy(out: Any) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        return out.detach().to("cpu", torch.float32).numpy()
    return np.asarray(out, dtype=np.float32)


def _run(fn: TileFn, tiles: np.ndarray) -> np.ndarray:
    """``fn`` on ``[B, p, p, C]`` tiles -> ``[B, K, p, p]`` float32."""
    x = torch.from_numpy(np.ascontiguousarray(tiles.transpose(0, 3, 1, 2), dtype=np.float32))
    out = _as_numpy(fn(x))
    if out.ndim == 3:
        out = out[:, None]
    if out.ndim != 4 or out.shape[0] != tiles.shape[0] or out.shape[2:] != tiles.shape[1:3]:
        raise ValueError(
            f"the tile function returned shape {out.shape} for tiles of shape "
            f"{(tiles.shape[0], tiles.shape[3], *tiles.shape[1:3])}: expected [B, K, p, p]"
        )
    return out


def _resize_chw(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if arr.shape[1:] == tuple(shape):
        return arr
    return np.stack([T.resize_prob(c, shape) for c in arr])


def predict_tiled(
    image: np.ndarray,
    fn: TileFn,
    resolution: WorkingResolution,
    *,
    overlap: float = 0.25,
    batch_size: int = 8,
    window: str = "cosine",
) -> np.ndarray:
    """Run ``fn`` over ``image`` tile by tile at ``resolution`` and reassemble the output.

    Args:
        image: ``[H, W]`` or ``[H, W, C]``, float in [0, 1] or uint8.
        fn: ``fn(tiles)`` with ``tiles`` float32 ``[B, C, p, p]`` (CPU tensor) returns
            ``[B, K, p, p]`` or ``[B, p, p]`` (tensor or array), e.g. probabilities.
        resolution: ``"whole"`` (one resized call) or ``"patches"`` (sliding window).
        overlap: tile overlap as a fraction of the patch.
        batch_size: tiles per call of ``fn``.
        window: ``"cosine"`` or ``"uniform"`` blending (:func:`blend_window`).

    Returns float32 ``[H, W]`` when ``fn`` gives one channel, else ``[H, W, K]``.
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"predict_tiled expects [H, W] or [H, W, C], got shape {arr.shape}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    full = arr.shape[:2]
    p = resolution.patch
    if resolution.is_whole:
        work = rescale_image(arr, resolution)
        out = _run(fn, work[None])[0]
    else:
        work = rescale_image(arr, resolution)  # [h, w, C] float32
        h, w = work.shape[:2]
        ph, pw = max(h, p), max(w, p)
        if (ph, pw) != (h, w):
            work = np.pad(work, [(0, ph - h), (0, pw - w), (0, 0)])
        weight = blend_window(p, window)
        acc: np.ndarray | None = None
        norm = np.zeros((ph, pw))
        corners = tile_grid((ph, pw), p, overlap)
        for chunk in _batches(corners, int(batch_size)):
            tiles = np.stack([work[y : y + p, x : x + p] for y, x in chunk])
            outs = _run(fn, tiles)
            if acc is None:
                acc = np.zeros((outs.shape[1], ph, pw))
            for (y, x), o in zip(chunk, outs, strict=True):
                acc[:, y : y + p, x : x + p] += o * weight
                norm[y : y + p, x : x + p] += weight
        assert acc is not None
        out = (acc / norm)[:, :h, :w].astype(np.float32)
    out = _resize_chw(out.astype(np.float32, copy=False), full)
    return out[0] if out.shape[0] == 1 else np.ascontiguousarray(np.moveaxis(out, 0, -1))


def model_predictor(
    model: torch.nn.Module,
    text_encoder: Any = None,
    text: str | None = None,
    *,
    device: str | torch.device | None = None,
    amp: bool = False,
) -> TileFn:
    """A tile function: sigmoid probabilities ``[B, 1, p, p]`` of ``model`` for one text.

    The text is encoded once (its features are repeated for every tile). ``text_encoder=None``
    or ``text=None`` runs the model without text. The model is put in eval mode; ``device``
    defaults to where its parameters are.
    """
    from src_models.device import autocast

    param = next(model.parameters(), None)
    dev = torch.device(device) if device is not None else (
        param.device if param is not None else torch.device("cpu")
    )  # fmt: skip
    model.eval()
    tokens = mask = None
    if text_encoder is not None and text is not None and getattr(model, "uses_text", False):
        feats = text_encoder.encode([text])
        tokens, mask = feats.tokens.to(dev), feats.mask.to(dev)

    @torch.no_grad()
    def fn(tiles: torch.Tensor) -> torch.Tensor:
        b = tiles.shape[0]
        x = tiles.to(dev)
        kw = {}
        if tokens is not None:
            kw = {"text": tokens.expand(b, *tokens.shape[1:]), "text_mask": mask.expand(b, -1)}
        with autocast(dev, amp and dev.type == "cuda"):
            logits = model(x, **kw)
        return torch.sigmoid(logits.float()).cpu()

    return fn

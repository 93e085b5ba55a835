"""Resizing and training augmentation for (image, mask) pairs.

Images are float ``[H, W, C]`` (or ``[H, W]``), masks bool ``[H, W]``.

Augmentation follows the LViT paper code (``RandomGenerator`` in the official
``Load_Dataset.py``): with p = 0.5 a random ``rot90`` (k in 0..3) followed by a flip on a random
axis (up-down or left-right); otherwise, with p = 0.5 of the rest (0.25 overall), a rotation by
an angle in [-20, 20) degrees, keeping the size (corners filled with 0).

Texts that name sides ("lower left lung", "the upper right is dense") become wrong when the
image is flipped or turned by 90 degrees. ``spatial_text=True`` therefore disables every
side-changing transform (rot90, left-right flip, up-down flip) and leaves only the small
rotations, with the paper's probabilities (the rot90/flip branch becomes the identity). The
individual switches ``allow_rot90``, ``allow_flip_lr`` and ``allow_flip_ud`` override that
choice one by one (e.g. ``allow_flip_ud=True`` for texts that name left/right but never
upper/lower).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["augment", "resize_image", "resize_mask", "resize_prob"]


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


def _interp(arr_chw: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 ``[C, H, W]`` array; anti-aliased when shrinking."""
    h, w = arr_chw.shape[-2:]
    if (h, w) == tuple(out_hw):
        return arr_chw.astype(np.float32, copy=True)
    t = torch.from_numpy(np.ascontiguousarray(arr_chw, dtype=np.float32))[None]
    shrink = out_hw[0] < h or out_hw[1] < w
    with torch.no_grad():
        out = F.interpolate(t, size=out_hw, mode="bilinear", align_corners=False, antialias=shrink)
    return out[0].numpy()


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float image ``[H, W, C]`` (or ``[H, W]``) to ``size``.

    Anti-aliased when shrinking (a large slide at 224 keeps its content instead of sampling
    every 4th pixel). Returns float32 with the same channel layout; ``size`` is an int (square)
    or ``(height, width)``.
    """
    out_hw = _as_size(size)
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        return _interp(arr[None], out_hw)[0]
    if arr.ndim != 3:
        raise ValueError(f"resize_image expects [H, W] or [H, W, C], got shape {arr.shape}")
    out = _interp(np.moveaxis(arr, -1, 0), out_hw)
    return np.ascontiguousarray(np.moveaxis(out, 0, -1))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int], mode: str = "nearest") -> np.ndarray:
    """Resize a binary mask to ``size``; returns bool.

    ``mode="nearest"``: each output pixel takes the input pixel under its centre.
    ``mode="any"``: the official LViT pipeline's way (``cv2.resize`` bilinear without
    anti-aliasing, then every value > 0 is foreground), which slightly grows thin structures;
    use it to reproduce the paper's ground truth at 224.
    """
    out_h, out_w = _as_size(size)
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"resize_mask expects a 2D mask [H, W], got shape {m.shape}")
    m = m != 0
    h, w = m.shape
    if (h, w) == (out_h, out_w):
        return m.copy()
    if mode == "nearest":
        rows = np.minimum(((np.arange(out_h) + 0.5) * (h / out_h)).astype(np.int64), h - 1)
        cols = np.minimum(((np.arange(out_w) + 0.5) * (w / out_w)).astype(np.int64), w - 1)
        return m[rows[:, None], cols[None, :]]
    if mode == "any":
        t = torch.from_numpy(m.astype(np.float32))[None, None]
        with torch.no_grad():
            out = F.interpolate(t, size=(out_h, out_w), mode="bilinear", align_corners=False)
        return out[0, 0].numpy() > 0
    raise ValueError(f"unknown mask resize mode {mode!r}; use 'nearest' or 'any'")


def resize_prob(prob, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a probability map ``[h, w]`` (numpy or torch) back to ``shape``.

    Used to bring a prediction made at the model size to the original image size; threshold
    afterwards. Returns float32 ``[H, W]``.
    """
    if isinstance(prob, torch.Tensor):
        prob = prob.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(prob, dtype=np.float32)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"resize_prob expects a 2D map [h, w], got shape {arr.shape}")
    out_hw = _as_size(tuple(shape[:2]))
    return _interp(arr[None], out_hw)[0]


def _rotate(arr: np.ndarray, angle: float, order: int) -> np.ndarray:
    # Rotate in the (rows, cols) plane; channels untouched; same size; outside -> 0.
    return ndimage.rotate(
        arr, angle, axes=(1, 0), reshape=False, order=order, mode="constant", cval=0.0
    )


def augment(
    image: np.ndarray,
    mask: np.ndarray | None,
    rng: np.random.Generator,
    *,
    spatial_text: bool = False,
    allow_rot90: bool | None = None,
    allow_flip_lr: bool | None = None,
    allow_flip_ud: bool | None = None,
    max_angle: float = 20.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The LViT augmentation applied jointly to an image and its mask (see module docstring).

    ``image``: ``[H, W]`` or ``[H, W, C]`` (any dtype; rotation is bilinear, so pass floats);
    ``mask``: ``[H, W]`` (bool or 0/1) or ``None``. Both keep their shape and dtype, and the mask
    stays binary (nearest-neighbour rotation). ``rng`` drives every random choice, so the same
    generator state gives the same result.

    ``spatial_text=False`` (default) is the paper's behaviour; ``True`` turns off the
    side-changing transforms (rot90 and both flips). ``allow_*`` override single switches.
    """
    rot90_ok = (not spatial_text) if allow_rot90 is None else bool(allow_rot90)
    lr_ok = (not spatial_text) if allow_flip_lr is None else bool(allow_flip_lr)
    ud_ok = (not spatial_text) if allow_flip_ud is None else bool(allow_flip_ud)
    img = np.asarray(image)
    msk = None if mask is None else np.asarray(mask)
    if msk is not None and msk.shape != img.shape[:2]:
        raise ValueError(f"mask shape {msk.shape} does not match image shape {img.shape[:2]}")
    if rot90_ok and img.shape[0] != img.shape[1]:
        rot90_ok = False  # would change the shape
    mask_dtype = None if msk is None else msk.dtype

    if rng.random() < 0.5:
        if rot90_ok:
            k = int(rng.integers(0, 4))
            img = np.rot90(img, k, axes=(0, 1))
            if msk is not None:
                msk = np.rot90(msk, k, axes=(0, 1))
        axes = [a for a, ok in ((0, ud_ok), (1, lr_ok)) if ok]
        if axes:
            axis = axes[int(rng.integers(0, len(axes)))] if len(axes) > 1 else axes[0]
            img = np.flip(img, axis=axis)
            if msk is not None:
                msk = np.flip(msk, axis=axis)
    elif rng.random() < 0.5 and max_angle > 0:
        angle = float(rng.uniform(-max_angle, max_angle))
        dtype = img.dtype
        rot = _rotate(img.astype(np.float32, copy=False), angle, order=1)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            rot = np.clip(np.rint(rot), info.min, info.max)
        img = rot.astype(dtype, copy=False)
        if msk is not None:
            rm = _rotate((msk != 0).astype(np.uint8), angle, order=0) != 0
            msk = rm if mask_dtype == np.bool_ else rm.astype(mask_dtype)
    img = np.ascontiguousarray(img)
    if msk is not None:
        msk = np.ascontiguousarray(msk)
    return img, msk

"""CT windows: which band of Hounsfield units maps to black..white, for display and model input.

A window is ``(level, width)`` in HU: values from ``level - width / 2`` (black, 0) to
``level + width / 2`` (white, 1), clipped outside. The presets are the usual radiology ones.
A model fed a window sees the tissue it is about at full contrast, with the same scale on every
slice and scan, instead of a min-max over the volume that depends on what else is in it (air,
metal, the table).

A window applies to grayscale images stored as HU (signed integers, floats, wider unsigned
integers); 8-bit and boolean images are display images already, and a window in HU means
nothing for them: :func:`input_range` gives ``None`` for them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "PRESETS",
    "Window",
    "apply_window",
    "as_window",
    "input_range",
    "preset_name",
    "window_applies",
]


class Window(NamedTuple):
    """A CT window in HU. A tuple, so ``(level, width)`` pairs and JSON lists convert as is."""

    level: float
    width: float

    @property
    def range(self) -> tuple[float, float]:
        """``(lowest, highest)`` HU of the window: black and white."""
        half = self.width / 2.0
        return (self.level - half, self.level + half)


#: The usual presets (level, width in HU); "soft tissue" is the mediastinal window.
PRESETS: dict[str, Window] = {
    "lung": Window(-600.0, 1500.0),
    "mediastinum": Window(40.0, 400.0),
    "soft tissue": Window(40.0, 400.0),
    "bone": Window(400.0, 1800.0),
    "brain": Window(40.0, 80.0),
}


def as_window(value: Any) -> Window | None:
    """A :class:`Window` from ``None``, a preset name, ``"level,width"`` or a pair of numbers.

    Raises ``ValueError`` (naming the presets) for anything else, a width that is not positive
    or values that are not finite."""
    if value is None or isinstance(value, Window):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        if key in PRESETS:
            return PRESETS[key]
        parts = key.replace(";", ",").split(",")
        if len(parts) != 2:
            raise ValueError(
                f"unknown window {value!r}: give a preset ({', '.join(PRESETS)}) or "
                "'level,width' in HU, e.g. '-600,1500'"
            )
        value = parts
    try:
        level, width = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"a window is (level, width) in HU or a preset ({', '.join(PRESETS)}), got {value!r}"
        ) from None
    if not (np.isfinite(level) and np.isfinite(width)) or width <= 0:
        raise ValueError(f"a window needs a finite level and a width > 0, got ({level}, {width})")
    return Window(level, width)


def preset_name(window: Any) -> str | None:
    """The first preset name equal to ``window`` (``None`` when it is none of them)."""
    w = as_window(window)
    if w is None:
        return None
    return next((name for name, p in PRESETS.items() if p == w), None)


def window_applies(dtype: Any, rgb: bool = False) -> bool:
    """Whether a window applies to images of ``dtype``: grayscale, neither bool nor uint8."""
    kind = np.dtype(dtype)
    return not rgb and kind.kind in "iuf" and kind != np.uint8


def input_range(image: np.ndarray, window: Any) -> tuple[float, float] | None:
    """The ``value_range`` for :func:`~src_models.data.io.to_float01`: the window's HU range
    when there is a window and it applies to ``image`` (2D ``[H, W]`` or ``[H, W, 1]``), else
    ``None`` (the image's own scaling)."""
    w = as_window(window)
    if w is None:
        return None
    dtype = getattr(image, "dtype", None)
    dtype = np.asarray(image).dtype if dtype is None else dtype
    shape = np.shape(image)
    rgb = len(shape) == 3 and shape[-1] != 1
    return w.range if window_applies(dtype, rgb) else None


def apply_window(image: np.ndarray, window: Any) -> np.ndarray:
    """``image`` (HU, any shape) through ``window``: float32 in [0, 1], same shape."""
    w = as_window(window)
    if w is None:
        raise ValueError("apply_window needs a window (a preset name or (level, width))")
    lo, _ = w.range
    out = (np.asarray(image, dtype=np.float64) - lo) / w.width
    return np.clip(out, 0.0, 1.0).astype(np.float32)

"""What :class:`~src_models.inference.Predictor` checks at the door: the image (shape, dtype,
size), the threshold, and that the model's probabilities are finite.

The checks run at the entry and exit of the public prediction methods (:func:`guarded`), so a
bad input fails with a message before anything large is allocated, and a broken model (NaN
weights) fails instead of returning an empty mask that looks like "no lesion".
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from src_models.errors import UserError

__all__ = [
    "BYTES_PER_PIXEL",
    "MAX_PIXELS",
    "PredictionError",
    "check_finite_prob",
    "check_image",
    "check_threshold",
    "guarded",
    "memory_text",
]

#: The largest image (H x W pixels) a Predictor takes by default: 10000 x 10000.
MAX_PIXELS = 10_000 * 10_000
#: About what segmenting one pixel of an RGB image holds in memory at once (the decoded pixels,
#: float copies, probabilities, mask; measured: 373 MB more for a 4000 x 4000 RGB PNG).
BYTES_PER_PIXEL = 24


class PredictionError(UserError, ValueError):
    """A model gave no usable prediction (its probabilities are NaN or infinite)."""


def memory_text(pixels: int) -> str:
    """``"about 9.6 GB"``: roughly what segmenting an image of ``pixels`` pixels needs."""
    size = pixels * BYTES_PER_PIXEL
    return f"about {size / 1e9:.1f} GB" if size >= 1e9 else f"about {size / 1e6:.0f} MB"


def check_threshold(threshold: Any, what: str = "threshold") -> float:
    """``threshold`` as a float in [0, 1]; else ``ValueError``."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{what} must be a number from 0 to 1, got {threshold!r}")
    return value


def check_image(image: Any, max_pixels: int | None = MAX_PIXELS) -> None:
    """Refuse what no prediction can use, before anything is converted or allocated: not a
    2D image ``[H, W]`` / ``[H, W, C]`` (C in 1, 3, 4), an empty one, a dtype that is not a
    number, or more than ``max_pixels`` pixels (``None``: no limit)."""
    shape = tuple(int(s) for s in np.shape(image))
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] not in (1, 3, 4)):
        raise ValueError(
            f"expected a 2D image [H, W] or [H, W, C] with C in 1, 3, 4; got shape {shape}: "
            "pick one slice of a volume first"
        )
    height, width = shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"the image is empty (shape {shape})")
    dtype = getattr(image, "dtype", None)
    if dtype is None:
        dtype = np.asarray(image).dtype
    if np.dtype(dtype).kind not in "biuf":
        raise ValueError(f"cannot segment an image of dtype {dtype}: it must hold numbers")
    if max_pixels is not None and height * width > max_pixels:
        raise ValueError(
            f"the image has {height * width} pixels ({height} x {width}), more than the "
            f"{max_pixels} a prediction takes ({memory_text(height * width)} of memory to "
            "segment it); crop or downscale it first"
        )


def check_finite_prob(prob: np.ndarray, model: str) -> None:
    """Refuse probabilities with NaN or infinite values (a broken model)."""
    finite = np.isfinite(prob)
    if not finite.all():
        n_bad = int(finite.size - np.count_nonzero(finite))
        raise PredictionError(
            f"model {model!r} gave NaN or infinite probabilities for {n_bad} of "
            f"{finite.size} pixels: its weights are broken (e.g. a training run that diverged)",
            hint="use another checkpoint, or retrain with a lower learning rate",
        )


def guarded(method: Callable) -> Callable:
    """Wrap a Predictor method ``(self, image, ..., threshold=None)``: check ``image`` against
    ``self.max_pixels`` and ``threshold`` first; check the probabilities it returns (an array,
    or an object with ``.prob``) after."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        check_image(bound.arguments["image"], getattr(self, "max_pixels", MAX_PIXELS))
        if bound.arguments.get("threshold") is not None:
            check_threshold(bound.arguments["threshold"])
        out = method(self, *args, **kwargs)
        check_finite_prob(getattr(out, "prob", out), getattr(self, "name", "model"))
        return out

    return wrapper

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from src_models.errors import UserError

__all__ = [
    "BYTES_PER_PIXEL",
    "MAX_CLICKS",
    "MAX_PIXELS",
    "PredictionError",
    "PromptInput",
    "check_finite_prob",
    "check_prompts",
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


# ---------------------------------------------------------------------------------------------
# prompts: clicks, a box, the previous mask

#: The most clicks one prediction takes (far above any real correction; their cost does not
#: grow with their number, this only stops a runaway caller).
MAX_CLICKS = 100_000


@dataclass(frozen=True)
class PromptInput:
    """Checked prompts in the image's own pixel coordinates (pixel centres at integers).

    ``clicks``: ``((y, x, +1 | -1), ...)``; ``box``: ``(y0, x0, y1, x1)`` with y0 < y1, x0 < x1,
    inside the image; ``previous``: float32 ``[H, W]`` in [0, 1] or ``None``.
    """

    clicks: tuple[tuple[float, float, int], ...]
    box: tuple[float, float, float, float] | None
    previous: np.ndarray | None
    shape: tuple[int, int]

    def scaled_to(self, size: int | tuple[int, int]) -> tuple[list, tuple | None]:
        """Clicks and box in the coordinates of the image resized to ``size`` x ``size`` (the
        whole-image path) or to ``(h, w)`` (the working resolution of the tiled path): pixel
        centres map to pixel centres."""
        height, width = self.shape
        h, w = (size, size) if isinstance(size, int) else size
        sy, sx = h / height, w / width

        def row(v: float) -> float:
            return (v + 0.5) * sy - 0.5

        def col(v: float) -> float:
            return (v + 0.5) * sx - 0.5

        clicks = [(row(y), col(x), s) for y, x, s in self.clicks]
        box = None
        if self.box is not None:
            y0, x0, y1, x1 = self.box
            box = (row(y0), col(x0), row(y1), col(x1))
        return clicks, box


def _number(value: Any, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    if not math.isfinite(out):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return out


def check_prompts(
    clicks: Any, box: Any, previous: Any, shape: tuple[int, int]
) -> PromptInput | None:
    """Clicks ``[(y, x, sign), ...]``, a box ``(y0, x0, y1, x1)`` and a previous mask for an
    image of ``shape`` ``(H, W)``, checked: ``None`` when there is no prompt at all.

    Refused with a message: a click that is not three numbers, a sign other than +1/-1, a click
    outside the image, more than :data:`MAX_CLICKS` clicks, a box of zero area or outside the
    image (a box partly outside is cut to the image), a previous mask of another shape or with
    NaN values.
    """
    height, width = int(shape[0]), int(shape[1])
    checked: list[tuple[float, float, int]] = []
    items = list(clicks) if clicks is not None else []
    if len(items) > MAX_CLICKS:
        raise ValueError(f"{len(items)} clicks: at most {MAX_CLICKS} are taken")
    for i, click in enumerate(items, 1):
        try:
            y, x, sign = click
        except (TypeError, ValueError):
            raise ValueError(f"click {i} must be (y, x, sign), got {click!r}") from None
        y, x = _number(y, f"click {i}'s y"), _number(x, f"click {i}'s x")
        if sign not in (1, -1) or isinstance(sign, bool):
            raise ValueError(f"click {i}'s sign must be +1 (add) or -1 (remove), got {sign!r}")
        if not (-0.5 <= y < height - 0.5 and -0.5 <= x < width - 0.5):
            raise ValueError(
                f"click {i} at (y={y:g}, x={x:g}) lies outside the {height} x {width} image"
            )
        checked.append((y, x, int(sign)))
    rect = None
    if box is not None:
        try:
            y0, x0, y1, x1 = (_number(v, "a box corner") for v in box)
        except TypeError:
            raise ValueError(f"the box must be (y0, x0, y1, x1), got {box!r}") from None
        except ValueError as exc:
            if "finite" in str(exc):
                raise
            raise ValueError(f"the box must be (y0, x0, y1, x1), got {box!r}") from None
        y0, y1 = sorted((y0, y1))
        x0, x1 = sorted((x0, x1))
        if y1 - y0 <= 0 or x1 - x0 <= 0:
            raise ValueError(
                f"the box ({y0:g}, {x0:g}) - ({y1:g}, {x1:g}) has no area: drag a rectangle "
                "around the object"
            )
        cut = (max(y0, 0.0), max(x0, 0.0), min(y1, height - 1.0), min(x1, width - 1.0))
        if cut[2] < cut[0] or cut[3] < cut[1]:
            raise ValueError(f"the box lies outside the {height} x {width} image")
        rect = cut
    prev = None
    if previous is not None:
        prev = np.asarray(previous)
        if prev.shape != (height, width):
            raise ValueError(
                f"the previous mask has shape {prev.shape}, the image {(height, width)}"
            )
        if prev.dtype.kind not in "biuf":
            raise ValueError(f"the previous mask must hold numbers, not {prev.dtype}")
        prev = prev.astype(np.float32)
        if not np.isfinite(prev).all():
            raise ValueError("the previous mask holds NaN or infinite values")
        prev = np.clip(prev, 0.0, 1.0)
    if not checked and rect is None and prev is None:
        return None
    return PromptInput(tuple(checked), rect, prev, (height, width))

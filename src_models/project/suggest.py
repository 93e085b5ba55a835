"""Active learning: which unlabelled image should the user correct next?

The score of an image is the mean binary entropy (in bits, 0 = certain, 1 = p = 0.5
everywhere) of the model's probability map: the image the model is least sure about comes
first (MONAI Label's "entropy" strategy, without MC dropout). Volumes are scored on a few
evenly spaced slices. The model is passed in as a function, so this module needs no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .records import ImageRecord
from .store import Project

__all__ = ["Score", "mean_binary_entropy", "model_plane", "score_images", "suggest_next"]

PredictProb = Callable[[np.ndarray, str | None], np.ndarray]


def mean_binary_entropy(prob: np.ndarray) -> float:
    """Mean of ``-p log2 p - (1-p) log2 (1-p)`` over the pixels (0 for an empty map)."""
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1.0 - 1e-7)
    if p.size == 0:
        return 0.0
    h = -(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))
    return float(h.mean())


def model_plane(volume: np.ndarray, z: int, value_range: tuple[float, float] | None) -> np.ndarray:
    """Slice ``z`` of a volume as uint8 scaled by the whole volume's range (as in training), so
    that every slice of a volume is seen with one intensity scale."""
    plane = np.asarray(volume[z])
    if plane.dtype == np.uint8 or value_range is None:
        return plane
    lo, hi = value_range
    if hi <= lo:
        return np.zeros(plane.shape, np.uint8)
    scaled = (plane.astype(np.float64) - lo) / (hi - lo)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def volume_range(data: np.ndarray, rgb: bool = False) -> tuple[float, float] | None:
    """The intensity range used for every slice of a volume (``None`` for uint8 data)."""
    if data.dtype == np.uint8:
        return None
    d = data[..., :3] if rgb else data
    return float(d.min()), float(d.max())


@dataclass(frozen=True)
class Score:
    """Uncertainty of one image; ``score`` is ``None`` when it could not be scored (``reason``)."""

    image_id: int
    name: str
    score: float | None
    reason: str | None = None


def _planes(rec: ImageRecord, max_slices: int) -> list[np.ndarray]:
    """The planes scored, on the scale the model trains on: the image's CT window where one
    applies, else a volume's whole range (a 2D image keeps its own)."""
    from src_models.data.io import load_image
    from src_models.data.windows import window_applies

    loaded = load_image(rec.path)
    windowed = rec.window is not None and window_applies(loaded.data.dtype, loaded.rgb)
    if not loaded.is_volume:
        return [model_plane(loaded.data[None], 0, rec.window.range)] if windowed else [loaded.data]
    n = loaded.num_slices
    picks = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(max_slices, n) + 2)[1:-1]})
    rng = rec.window.range if windowed else volume_range(loaded.data, loaded.rgb)
    return [model_plane(loaded.data, z, rng) for z in picks or [n // 2]]


def score_images(
    records: Sequence[ImageRecord],
    predict_prob: PredictProb,
    *,
    max_slices: int = 3,
    needs_text: bool = True,
) -> Iterator[Score]:
    """Score each record (in order), yielding one :class:`Score` per image.

    ``predict_prob(image, text) -> prob [H, W]``. Images without a text are not scored when
    the model needs one (``needs_text``); unreadable images are reported, not raised.
    """
    for rec in records:
        text = rec.text
        if needs_text and not (text and text.strip()):
            yield Score(rec.id, rec.name, None, "no description")
            continue
        try:
            scores = [mean_binary_entropy(predict_prob(p, text)) for p in _planes(rec, max_slices)]
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the ranking
            yield Score(rec.id, rec.name, None, f"{type(exc).__name__}: {exc}")
            continue
        yield Score(rec.id, rec.name, float(np.mean(scores)))


def suggest_next(
    project: Project,
    predict_prob: PredictProb,
    *,
    statuses: Sequence[str] = ("unlabeled", "proposed"),
    max_slices: int = 3,
    needs_text: bool = True,
) -> list[Score]:
    """All unlabelled images ranked by uncertainty, most uncertain first (unscored last)."""
    scores = list(
        score_images(
            project.images(list(statuses)),
            predict_prob,
            max_slices=max_slices,
            needs_text=needs_text,
        )
    )
    return sorted(scores, key=lambda s: (s.score is None, -(s.score or 0.0), s.image_id))

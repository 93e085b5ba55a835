"""Synthetic chest-X-ray-like images with lesions and QaTa-style texts (deterministic by seed).

Used by tests, benchmarks and the plugin's sample data. Every function takes a
``numpy.random.Generator`` (or a seed) and draws all randomness from it: the same seed gives the
same pixels, masks and texts.

The images: dark background, a bright body, two darker lung fields with rib shadows, clavicles,
spine and heart, smooth low-frequency intensity variation and noise. Lesions are brighter,
blurry, textured blobs (ground-glass-like) inside named zones: ``upper``, ``middle`` or
``lower`` third of the ``left`` or ``right`` lung. A lesion's mask is where its blob exceeds
half its peak, inside the lung.

Side convention: RADIOLOGICAL, as on a real chest X-ray seen from the front. The patient's
LEFT lung is on the IMAGE'S RIGHT side (larger column indices) and the patient's right lung on
the image's left. Texts always name the patient's side ("lower left lung" = lower third of the
lung on the image's right). :func:`zone_box` gives the pixel box of each zone.

Text styles:

- QaTa (:func:`make_qata_sample`): "Unilateral pulmonary infection, one infected area, lower left
  lung." / "Bilateral pulmonary infection, two infected areas, upper left lung and lower right
  lung." / "... upper middle left lung." (zones of one lung listed upper -> lower, the left lung
  first). The count is the number of lesions drawn (lesions can touch).
- short (referring data, default): "Lesion in the lower left lung." / "Lesions in the upper
  lower right lung." The location words come first so that a text encoder that keeps only the
  first few words still sees them. ``style="qata"`` gives the QaTa sentence instead.

Dataset layout written by :func:`write_dataset` (the LViT layout): ``img/<name>.png``,
``labelcol/<name>.png`` (0/255) and ``text.csv`` with columns ``Image,Description`` where
``Image`` is the mask's file name.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "LESION_ZONES",
    "SIDES",
    "ZONES",
    "Lesion",
    "describe_lesions",
    "make_qata_sample",
    "make_referring_pair",
    "make_referring_sample",
    "render_chest_xray",
    "sample_chest_xray",
    "write_dataset",
    "zone_box",
]

ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SIDES: tuple[str, ...] = ("left", "right")  # the patient's side (radiological convention)
#: Every (zone, side) a lesion can be placed in.
LESION_ZONES: tuple[tuple[str, str], ...] = tuple((z, s) for s in SIDES for z in ZONES)

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_MIN_SIZE = 64


@dataclass
class Lesion:
    """One lesion of a synthetic image: its zone, the patient's side and its mask."""

    zone: str
    side: str
    mask: np.ndarray


@dataclass
class _Anatomy:
    """Normalised geometry (fractions of the image size) of one synthetic chest."""

    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0
    lung_cy: float = 0.47
    lung_ry: float = 0.29
    lung_rx: float = 0.135
    lung_dx: float = 0.19  # lung centre distance from the midline

    def lung(self, side: str) -> tuple[float, float, float, float]:
        """(cy, cx, ry, rx) of the patient's ``side`` lung, in image fractions."""
        _check_side(side)
        # Patient's left lung -> image right (radiological convention).
        sign = 1.0 if side == "left" else -1.0
        cx = 0.5 + self.shift_x + sign * self.lung_dx * self.scale
        cy = 0.5 + self.shift_y + (self.lung_cy - 0.5) * self.scale
        return cy, cx, self.lung_ry * self.scale, self.lung_rx * self.scale

    def zone_box(self, zone: str, side: str) -> tuple[float, float, float, float]:
        """(row0, row1, col0, col1) in image fractions."""
        _check_zone(zone)
        cy, cx, ry, rx = self.lung(side)
        k = ZONES.index(zone)
        top = cy - ry
        h = 2 * ry / 3
        return top + k * h, top + (k + 1) * h, cx - rx, cx + rx


def _check_zone(zone: str) -> None:
    if zone not in ZONES:
        raise ValueError(f"unknown zone {zone!r}; use one of {ZONES}")


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; use one of {SIDES} (the patient's side)")


#: The largest synthetic image side: a 4096 x 4096 RGB sample is 50 MB while it is drawn.
MAX_SIZE = 4096


def _check_size(size: int) -> int:
    size = int(size)
    if size < _MIN_SIZE:
        raise ValueError(f"synthetic images need size >= {_MIN_SIZE}, got {size}")
    if size > MAX_SIZE:
        raise ValueError(
            f"synthetic images need size <= {MAX_SIZE}, got {size} (one {size} x {size} RGB "
            f"sample alone would need {size * size * 3 * 8 / 1e9:.0f} GB while it is drawn)"
        )
    return size


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def zone_box(zone: str, side: str, size: int = 224) -> tuple[int, int, int, int]:
    """Pixel box ``(row0, row1, col0, col1)`` (end-exclusive) of a lung zone.

    ``side`` is the PATIENT's side: ``"left"`` lies on the image's right half. The box is for the
    canonical anatomy; individual images shift and scale it by a few percent.
    """
    size = _check_size(size)
    r0, r1, c0, c1 = _Anatomy().zone_box(zone, side)
    return (
        int(np.floor(r0 * size)),
        int(np.ceil(r1 * size)),
        int(np.floor(c0 * size)),
        int(np.ceil(c1 * size)),
    )


# --------------------------------------------------------------------------- rendering


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="reflect")
    std = field.std()
    return field / std if std > 0 else field


def _ellipse_dist(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    """Normalised elliptic radius: < 1 inside the ellipse."""
    return np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)


def _soft_ellipse(yy, xx, cy, cx, ry, rx, edge) -> np.ndarray:
    """1 inside the ellipse, 0 outside, a smooth ramp of width ~edge (fractions) at the border."""
    d = _ellipse_dist(yy, xx, cy, cx, ry, rx)
    return 1.0 / (1.0 + np.exp((d - 1.0) * min(ry, rx) / max(edge, 1e-6)))


def _render_anatomy(rng: np.random.Generator, size: int, anat: _Anatomy):
    """Background chest image (float, ~0..1), the soft lung field (0..1) and its hard mask."""
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    s = anat.scale
    mx = 0.5 + anat.shift_x
    edge = 1.5 / size

    body = _soft_ellipse(yy, xx, 0.55 + anat.shift_y, mx, 0.52 * s, 0.44 * s, 4 * edge)
    lungs = np.zeros_like(yy)
    lung_hard = np.zeros(yy.shape, dtype=bool)
    for side in SIDES:
        cy, cx, ry, rx = anat.lung(side)
        lungs = np.maximum(lungs, _soft_ellipse(yy, xx, cy, cx, ry, rx, 2 * edge))
        lung_hard |= _ellipse_dist(yy, xx, cy, cx, ry, rx) < 1.0
    heart_geo = (0.66 + anat.shift_y, mx + 0.05 * s, 0.12 * s, 0.14 * s)
    heart = _soft_ellipse(yy, xx, *heart_geo, 4 * edge)
    lung_hard &= _ellipse_dist(yy, xx, *heart_geo) >= 1.0
    lung_field = lungs * (1.0 - heart)

    spine = np.exp(-(((xx - mx) / (0.028 * s)) ** 2)) * body
    ribs = np.zeros_like(yy)
    t = np.abs(xx - mx) / (0.42 * s)
    for i in range(9):
        y0 = 0.5 + anat.shift_y + (0.17 + i * 0.068 - 0.5) * s
        yr = y0 + (0.22 * t**2 - 0.06 * t) * s
        thick = (0.009 + 0.0015 * i) * s
        ribs = np.maximum(ribs, np.exp(-(((yy - yr) / thick) ** 2)))
    ribs *= np.clip((t - 0.06) / 0.08, 0.0, 1.0) * (t < 1.0) * body
    clav = np.zeros_like(yy)
    for sign in (-1.0, 1.0):
        xc = mx + sign * 0.17 * s
        yc = 0.5 + anat.shift_y + (0.16 - 0.5) * s + 0.5 * ((xx - xc) / s) ** 2 * s
        band = np.exp(-(((yy - yc) / (0.012 * s)) ** 2))
        clav = np.maximum(clav, band * (np.abs(xx - xc) < 0.15 * s))

    bg = 0.04 + 0.02 * rng.random()
    body_level = 0.58 + 0.08 * rng.random()
    lung_depth = 0.34 + 0.06 * rng.random()
    img = bg + (body_level - bg) * body
    img = img - lung_depth * lung_field
    img += 0.10 * spine * (1.0 - lungs)
    img += (0.05 + 0.03 * rng.random()) * ribs
    img += 0.08 * clav * body
    # Lung texture (vessels) and smooth intensity variation.
    img += 0.012 * _smooth_noise(rng, size, max(1.0, size / 160)) * lung_field
    img += 0.02 * _smooth_noise(rng, size, max(2.0, size / 40)) * lung_field
    img += 0.035 * _smooth_noise(rng, size, size / 6)
    img += (0.04 * rng.standard_normal()) * (yy - 0.5)
    return img, lung_field, lung_hard


def _lesion_profile(rng: np.random.Generator, size: int, anat: _Anatomy, zone: str, side: str):
    """A blob (peak ~1) in a zone of one lung, centred inside the lung field."""
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    r0, r1, c0, c1 = anat.zone_box(zone, side)
    cy_l, cx_l, ry_l, rx_l = anat.lung(side)
    radius = float(rng.uniform(0.035, 0.07)) * anat.scale
    margin_r = 0.25 * (r1 - r0)
    for _ in range(200):
        cy = rng.uniform(r0 + margin_r, r1 - margin_r)
        cx = rng.uniform(c0, c1)
        # Well inside the lung ellipse and away from the heart.
        d = ((cy - cy_l) / ry_l) ** 2 + ((cx - cx_l) / rx_l) ** 2
        heart_d = ((cy - 0.66 - anat.shift_y) / (0.13 * anat.scale)) ** 2 + (
            (cx - 0.5 - anat.shift_x - 0.05 * anat.scale) / (0.15 * anat.scale)
        ) ** 2
        if d < 0.55 and heart_d > 1.2:
            break
    sigma = radius / np.sqrt(2 * np.log(2))
    prof = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    for _ in range(int(rng.integers(1, 4))):  # satellites make the outline irregular
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.4, 0.9) * radius
        sy, sx = cy + dist * np.sin(ang), cx + dist * np.cos(ang)
        ss = sigma * rng.uniform(0.45, 0.75)
        prof = np.maximum(prof, np.exp(-((yy - sy) ** 2 + (xx - sx) ** 2) / (2 * ss**2)))
    return prof


def render_chest_xray(
    rng: np.random.Generator | int | None,
    size: int = 224,
    lesions: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
    *,
    contrast: float = 1.0,
) -> tuple[np.ndarray, list[Lesion]]:
    """Render one chest image with lesions at the given (zone, side) places.

    Returns the uint8 image ``[size, size]`` and one :class:`Lesion` (with its bool mask) per
    requested place, in order. ``side`` is the patient's side (see module docstring).
    ``contrast`` scales the lesions' brightness only (below 1: fainter, harder to see); the
    random draws, and so the layout and the masks, do not depend on it.
    """
    rng = _rng(rng)
    size = _check_size(size)
    if not 0.0 < float(contrast) <= 4.0:
        raise ValueError(f"contrast must be in (0, 4], got {contrast}")
    for zone, side in lesions:
        _check_zone(zone)
        _check_side(side)
    anat = _Anatomy(
        shift_x=float(rng.uniform(-0.02, 0.02)),
        shift_y=float(rng.uniform(-0.02, 0.02)),
        scale=float(rng.uniform(0.95, 1.05)),
    )
    img, lung_field, lung_hard = _render_anatomy(rng, size, anat)
    texture = _smooth_noise(rng, size, max(1.0, size / 100))
    out: list[Lesion] = []
    for zone, side in lesions:
        prof = _lesion_profile(rng, size, anat, zone, side)
        amp = float(rng.uniform(0.25, 0.4)) * float(contrast)
        img += amp * prof * np.maximum(lung_field, 0.5) * (0.9 + 0.15 * texture)
        out.append(Lesion(zone=zone, side=side, mask=(prof > 0.5) & lung_hard))
    img += 0.015 * rng.standard_normal(img.shape)
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return image, out


# --------------------------------------------------------------------------- texts


def _zone_words(zones) -> str:
    return " ".join(z for z in ZONES if z in set(zones))


def describe_lesions(places: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    """QaTa-style description of lesions at (zone, side) places.

    >>> describe_lesions([("lower", "left")])
    'Unilateral pulmonary infection, one infected area, lower left lung.'
    """
    places = list(places)
    if not places:
        return "No pulmonary infection."
    n = len(places)
    count = _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)
    sides = [s for s in SIDES if any(p[1] == s for p in places)]
    lateral = "Bilateral" if len(sides) == 2 else "Unilateral"
    area = "area" if n == 1 else "areas"
    parts = [f"{_zone_words([z for z, s2 in places if s2 == s])} {s} lung" for s in sides]
    return f"{lateral} pulmonary infection, {count} infected {area}, {' and '.join(parts)}."


def _short_text(places: list[tuple[str, str]]) -> str:
    sides = [s for s in SIDES if any(p[1] == s for p in places)]
    noun = "Lesion" if len(places) == 1 else "Lesions"
    parts = [f"{_zone_words([z for z, s2 in places if s2 == s])} {s} lung" for s in sides]
    return f"{noun} in the {' and '.join(parts)}."


def _text(places: list[tuple[str, str]], style: str) -> str:
    if style == "qata":
        return describe_lesions(places)
    if style == "short":
        return _short_text(places)
    raise ValueError(f"unknown text style {style!r}; use 'short' or 'qata'")


def _union(masks, size: int) -> np.ndarray:
    out = np.zeros((size, size), dtype=bool)
    for m in masks:
        out |= m
    return out


# --------------------------------------------------------------------------- samples


def make_qata_sample(
    rng: np.random.Generator | int | None, size: int = 224, *, contrast: float = 1.0
) -> tuple[np.ndarray, np.ndarray, str]:
    """A QaTa-like sample: (image uint8 [H, W], mask bool [H, W], text).

    1 to 4 lesions in distinct zones; the mask holds all of them and the text describes them all
    in the QaTa style. ``contrast``: see :func:`render_chest_xray`.
    """
    rng = _rng(rng)
    size = _check_size(size)
    n = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.3, 0.2, 0.15]))
    idx = rng.choice(len(LESION_ZONES), size=n, replace=False)
    places = [LESION_ZONES[i] for i in sorted(idx)]
    image, lesions = render_chest_xray(rng, size, places, contrast=contrast)
    return image, _union([les.mask for les in lesions], size), describe_lesions(places)


def make_referring_sample(
    rng: np.random.Generator | int | None,
    size: int = 224,
    *,
    style: str = "short",
    with_lesions: bool = False,
):
    """A sample where the text decides which lesions belong in the mask.

    The image holds 2 to 4 lesions, at least one in each lung. The text names either all the
    lesions of one lung ("Lesions in the upper lower left lung.") or the lesion of one zone
    ("Lesion in the middle right lung."); the mask holds exactly the named lesions, a strict
    subset of all. Returns (image, mask, text), plus the list of all :class:`Lesion` when
    ``with_lesions``.
    """
    rng = _rng(rng)
    size = _check_size(size)
    n = int(rng.integers(2, 5))
    left = [p for p in LESION_ZONES if p[1] == "left"]
    right = [p for p in LESION_ZONES if p[1] == "right"]
    places = [left[int(rng.integers(0, 3))], right[int(rng.integers(0, 3))]]
    rest = [p for p in LESION_ZONES if p not in places]
    for i in rng.choice(len(rest), size=n - 2, replace=False):
        places.append(rest[int(i)])
    places.sort(key=LESION_ZONES.index)
    image, lesions = render_chest_xray(rng, size, places)
    if rng.random() < 0.6:
        side = SIDES[int(rng.integers(0, 2))]
        chosen = [les for les in lesions if les.side == side]
    else:
        chosen = [lesions[int(rng.integers(0, len(lesions)))]]
    text = _text([(les.zone, les.side) for les in chosen], style)
    mask = _union([les.mask for les in chosen], size)
    if with_lesions:
        return image, mask, text, lesions
    return image, mask, text


def make_referring_pair(
    rng: np.random.Generator | int | None, size: int = 224, *, style: str = "short"
) -> tuple[np.ndarray, tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """One image, two prompts that differ only in the word "left" / "right".

    Both lungs carry lesions in the same zones (1 or 2 zones), so the zone words are shared and
    only the side word tells which lung is meant. Returns
    ``(image, (text_left, text_right), (mask_left, mask_right))``; the masks do not overlap.
    """
    rng = _rng(rng)
    size = _check_size(size)
    k = int(rng.integers(1, 3))
    zones = sorted(rng.choice(3, size=k, replace=False).tolist())
    places = [(ZONES[z], side) for side in SIDES for z in zones]
    image, lesions = render_chest_xray(rng, size, places)
    texts = []
    masks = []
    for side in SIDES:
        chosen = [les for les in lesions if les.side == side]
        texts.append(_text([(les.zone, les.side) for les in chosen], style))
        masks.append(_union([les.mask for les in chosen], size))
    return image, (texts[0], texts[1]), (masks[0], masks[1])


def sample_chest_xray(seed: int = 0, size: int = 512) -> tuple[np.ndarray, np.ndarray, str]:
    """The plugin's sample data: a QaTa-like (image uint8, mask bool, text) at ``size``."""
    return make_qata_sample(np.random.default_rng([seed, 7]), size)


# --------------------------------------------------------------------------- datasets

_KIND_IDS = {"qata": 1, "referring": 2}


def write_dataset(
    out_dir: str | os.PathLike,
    kind: str,
    n: int,
    size: int = 224,
    seed: int = 0,
    *,
    style: str = "short",
    empty_fraction: float = 0.0,
    contrast: float = 1.0,
) -> Path:
    """Write ``n`` synthetic samples in the LViT layout and return ``out_dir``.

    ``kind``: ``"qata"`` (:func:`make_qata_sample`) or ``"referring"``
    (:func:`make_referring_sample`, ``style`` applies). Files: ``img/synth_0000.png``,
    ``labelcol/synth_0000.png`` (0/255) and ``text.csv`` (``Image,Description``, ``Image`` =
    the mask's file name). Sample ``i`` depends only on ``(seed, kind, i)``, so the first
    samples of a larger set equal a smaller one's.

    ``empty_fraction`` (``qata`` only): about this fraction of the images show no lesion (empty
    mask, text "No pulmonary infection."); the table then has a third column ``Label`` (image-
    level label, 1 = lesion, 0 = none). Whether sample ``i`` is empty is drawn from its own
    stream, so the other samples stay the same as without it.

    ``contrast`` (``qata`` only) scales the lesions' brightness (:func:`render_chest_xray`):
    the same images and masks with fainter lesions, a harder task that needs more labels.
    """
    from .io import write_mask

    if kind not in _KIND_IDS:
        raise ValueError(f"unknown kind {kind!r}; use 'qata' or 'referring'")
    if not 0.0 <= float(empty_fraction) < 1.0 or (empty_fraction and kind != "qata"):
        raise ValueError("empty_fraction must be in [0, 1) and is for kind 'qata' only")
    if contrast != 1.0 and kind != "qata":
        raise ValueError("contrast is for kind 'qata' only")
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    size = _check_size(size)
    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "labelcol").mkdir(parents=True, exist_ok=True)
    from PIL import Image

    width = max(4, len(str(n - 1)))
    rows = []
    for i in range(n):
        rng = np.random.default_rng([int(seed), _KIND_IDS[kind], i])
        empty = (
            empty_fraction > 0
            and np.random.default_rng([int(seed), _KIND_IDS[kind], i, 1]).random() < empty_fraction
        )
        if kind == "qata" and empty:
            image, _ = render_chest_xray(rng, size, [])
            mask, text = np.zeros((size, size), dtype=bool), describe_lesions([])
        elif kind == "qata":
            image, mask, text = make_qata_sample(rng, size, contrast=contrast)
        else:
            image, mask, text = make_referring_sample(rng, size, style=style)
        name = f"synth_{i:0{width}d}.png"
        Image.fromarray(image).save(out / "img" / name)
        write_mask(out / "labelcol" / name, mask)
        rows.append((name, text, int(mask.any())))
    with open(out / "text.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if empty_fraction > 0:
            writer.writerow(["Image", "Description", "Label"])
            writer.writerows(rows)
        else:
            writer.writerow(["Image", "Description"])
            writer.writerows(r[:2] for r in rows)
    return out

"""Referring data in free phrasing: shapes named by kind, size and position, deterministic by seed.

An image holds 2 to 4 bright objects on a dark, noisy background, each in its own cell of a 3x3
grid (rows ``top / middle / bottom``, columns ``left / center / right``), each of a kind
(:data:`SHAPES`) and a size (:data:`SIZES`). The text names one, two or (rarely) three of them,
always fewer than the image holds, so a model that ignores the words predicts too much; the
mask holds exactly the named ones.

Each named object is a :class:`Mention`: the facts that pick it out among the objects of its
image (any non-empty choice of its shape, size, row and column that no other object shares).
:func:`describe` turns mentions into one of many sentences ("the small triangle at the top
left", "Segment the ring and the big square.", "the object on the right that is a disk", ...);
:func:`parse_mentions` reads such a sentence back into its mentions, which is what lets
:func:`~src_models.text.paraphrase.paraphrase` rephrase a training text from its facts.

Position words follow the image as it is shown (row 0 at the top, column 0 on the left); there
is no patient side here.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "COLUMNS",
    "ROWS",
    "SHAPES",
    "SIZES",
    "Mention",
    "ShapeObject",
    "describe",
    "make_shapes_sample",
    "parse_mentions",
    "render_scene",
    "write_shapes_dataset",
]

SHAPES: tuple[str, ...] = ("disk", "square", "triangle", "ring", "cross")
SIZES: tuple[str, ...] = ("small", "big")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLUMNS: tuple[str, ...] = ("left", "center", "right")

#: Object radius as a fraction of the image side, per size class (a clear gap between them).
_RADIUS = {"small": (0.055, 0.075), "big": (0.11, 0.14)}
_MIN_SIZE = 64


@dataclass(frozen=True)
class Mention:
    """The facts of one named object; ``None`` = not said."""

    shape: str | None = None
    size: str | None = None
    row: str | None = None
    column: str | None = None

    def matches(self, obj: ShapeObject) -> bool:
        return all(
            want is None or want == have
            for want, have in (
                (self.shape, obj.shape),
                (self.size, obj.size),
                (self.row, obj.row),
                (self.column, obj.column),
            )
        )


@dataclass
class ShapeObject:
    """One object of an image: its kind, size class, grid cell and mask ``[S, S]`` bool."""

    shape: str
    size: str
    row: str
    column: str
    mask: np.ndarray


# --------------------------------------------------------------------------- rendering


def _shape_mask(shape: str, yy, xx, cy, cx, r, angle) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy  # rotated coordinates
    if shape == "disk":
        return dx**2 + dy**2 < r**2
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 < r**2) & (d2 > (0.55 * r) ** 2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.82 * r
    if shape == "cross":
        arm = 0.32 * r
        return ((np.abs(u) < arm) & (np.abs(v) < r)) | ((np.abs(v) < arm) & (np.abs(u) < r))
    if shape == "triangle":
        # Equilateral, apex up (rows grow downwards), circumradius r: inside the three edges,
        # each at distance r / 2 from the centre.
        half = 0.5 * r
        return (v < half) & (0.866 * u - 0.5 * v < half) & (-0.866 * u - 0.5 * v < half)
    raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")


def render_scene(
    rng: np.random.Generator | int | None, size: int, objects: list[tuple[str, str, int, int]]
) -> tuple[np.ndarray, list[ShapeObject]]:
    """Draw ``objects`` given as ``(shape, size class, row index, column index)`` (each in its
    own grid cell): the image uint8 ``[size, size]`` and one :class:`ShapeObject` each."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    smooth = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 8)
    # A dark background with a slow shading, so that brightness alone does not find the objects.
    img = 0.08 + 0.06 * rng.random() + 0.06 * smooth / max(float(np.abs(smooth).max()), 1e-6)
    out: list[ShapeObject] = []
    for shape, size_class, r_idx, c_idx in objects:
        lo, hi = _RADIUS[size_class]
        radius = float(rng.uniform(lo, hi))
        room = 1 / 6 - radius - 0.01  # keep the object inside its cell
        cy = (r_idx + 0.5) / 3 + float(rng.uniform(-room, room))
        cx = (c_idx + 0.5) / 3 + float(rng.uniform(-room, room))
        angle = float(rng.uniform(-0.3, 0.3)) if shape in ("square", "triangle", "cross") else 0.0
        mask = _shape_mask(shape, yy, xx, cy, cx, radius, angle)
        level = float(rng.uniform(0.45, 0.85))
        img = np.where(mask, level, img)
        out.append(ShapeObject(shape, size_class, ROWS[r_idx], COLUMNS[c_idx], mask))
    img = ndimage.gaussian_filter(img, 0.6) + 0.04 * rng.standard_normal((size, size))
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), out


# --------------------------------------------------------------------------- choosing mentions

_FACTS = ("shape", "size", "row", "column")


def _speakable(m: Mention) -> bool:
    # "in the middle" alone means the centre cell, so a lone middle row or centre column
    # cannot be said without the other coordinate.
    if m.row == "middle" and m.column is None:
        return False
    return not (m.column == "center" and m.row is None)


def _mention_for(rng: np.random.Generator, target: ShapeObject, objects) -> Mention:
    """A random choice of the target's facts that no other object of the image shares."""
    full = Mention(target.shape, target.size, target.row, target.column)
    options = []
    for k in range(1, 5):
        for keys in combinations(_FACTS, k):
            m = Mention(**{key: getattr(full, key) for key in keys})
            if not _speakable(m):
                continue
            if sum(m.matches(o) for o in objects) == 1:
                # Naming the kind is how people mostly speak: favour mentions with it.
                options.append((m, 3.0 if m.shape else 1.0))
    weights = np.array([w for _, w in options])
    return options[int(rng.choice(len(options), p=weights / weights.sum()))][0]


def make_shapes_sample(
    rng: np.random.Generator | int | None, size: int = 224, *, with_objects: bool = False
):
    """(image uint8 ``[S, S]``, mask bool ``[S, S]``, text) and, with ``with_objects``, the
    list of every :class:`ShapeObject` and the :class:`Mention` list of the text."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    size = int(size)
    if size < _MIN_SIZE:
        raise ValueError(f"shape images need size >= {_MIN_SIZE}, got {size}")
    n = int(rng.integers(2, 5))
    cells = rng.choice(9, size=n, replace=False)
    specs = [
        (SHAPES[int(rng.integers(0, len(SHAPES)))], SIZES[int(rng.integers(0, 2))], c // 3, c % 3)
        for c in (int(c) for c in cells)
    ]
    image, objects = render_scene(rng, size, specs)
    # How many are named: always fewer than the image holds.
    if n == 2:
        k = 1
    elif n == 3:
        k = 1 + int(rng.random() < 0.4)
    else:
        k = int(rng.choice([1, 2, 3], p=[0.55, 0.4, 0.05]))
    targets = sorted(int(i) for i in rng.choice(n, size=k, replace=False))
    mentions = [_mention_for(rng, objects[i], objects) for i in targets]
    text = describe(mentions, rng)
    mask = np.zeros((size, size), dtype=bool)
    for i in targets:
        mask |= objects[i].mask
    if with_objects:
        return image, mask, text, objects, mentions
    return image, mask, text


# --------------------------------------------------------------------------- phrasing

_SHAPE_WORDS = {
    "disk": ("disk", "disc", "circle", "dot"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "ring": ("ring", "annulus", "hollow circle", "donut"),
    "cross": ("cross", "plus sign"),
}
_GENERIC = ("object", "shape", "thing", "figure")
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "big": ("big", "large")}
_ROW_WORDS = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}
_MIDDLE_WORDS = ("middle", "center", "centre")
_FRAMES = (
    "{}",
    "{}.",
    "Segment {}.",
    "segment {}",
    "Find {}.",
    "Outline {}.",
    "Please mark {}.",
    "Highlight {}.",
    "Show me {}.",
    "Select {}.",
    "I want {}.",
    "Only {}.",
    "{}, please.",
    "Where is {}?",
)
_JOINERS = (" and ", " and also ", ", ", " as well as ", " together with ")


def _pick(rng: np.random.Generator, words) -> str:
    return words[int(rng.integers(0, len(words)))]


def _row_word(rng, row: str) -> str:
    return _pick(rng, _MIDDLE_WORDS) if row == "middle" else _pick(rng, _ROW_WORDS[row])


def _col_word(rng, column: str) -> str:
    return _pick(rng, _MIDDLE_WORDS) if column == "center" else column


def _position_phrase(rng, row: str | None, column: str | None) -> str:
    """A phrase after the noun: "at the top left", "on the right", "in the center"."""
    if row and column:
        if row == "middle" and column == "center":
            return _pick(rng, ("in the center", "in the middle", "at the centre"))
        r, c = _row_word(rng, row), _col_word(rng, column)
        corner = row != "middle" and column != "center"
        options = [f"at the {r} {c}", f"in the {r} {c} part", f"{r} {c}"]
        if corner:
            options += [f"in the {r} {c} corner", f"in the {r}-{c} corner"]
        if column != "center":
            options.append(
                f"on the {column} at the {r}" if row != "middle" else f"on the {column} in the {r}"
            )
        return _pick(rng, options)
    if row:
        edge, side = ("top", "upper") if row == "top" else ("bottom", "lower")
        return _pick(
            rng, (f"at the {edge}", f"near the {edge}", f"in the {side} part", f"in the {edge} row")
        )
    return _pick(
        rng, (f"on the {column}", f"at the {column}", f"on the {column} side", f"to the {column}")
    )


def _position_adjective(rng, row: str | None, column: str | None) -> str:
    """A word before the noun: "top-left", "upper", "left-hand", "central"."""
    if row and column:
        if row == "middle" and column == "center":
            return _pick(rng, ("central", "center", "middle"))
        r, c = _row_word(rng, row), _col_word(rng, column)
        return _pick(rng, (f"{r}-{c}", f"{r} {c}"))
    if row:
        return _row_word(rng, row)
    return _pick(rng, (column, f"{column}-hand"))


def _noun_phrase(rng: np.random.Generator, m: Mention) -> str:
    noun = _pick(rng, _SHAPE_WORDS[m.shape]) if m.shape else _pick(rng, _GENERIC)
    size = _pick(rng, _SIZE_WORDS[m.size]) if m.size else None
    has_pos = m.row is not None or m.column is not None
    style = int(rng.integers(0, 4))
    if style == 0 or not has_pos:  # the small triangle at the top left
        words = ["the", size, noun, _position_phrase(rng, m.row, m.column) if has_pos else None]
        if not m.shape and size and not has_pos and rng.random() < 0.5:
            words = ["the", size, "one"]
    elif style == 1:  # the small top-left triangle
        words = ["the", size, _position_adjective(rng, m.row, m.column), noun]
    elif style == 2 and (m.shape or size):  # the object on the right that is a disk
        where = _position_phrase(rng, m.row, m.column)
        if m.shape:
            what = f"a {size} {noun}" if size else f"a {noun}"
            subject = _pick(rng, _GENERIC)
        else:
            what, subject = size, noun
        words = ["the", subject, where, _pick(rng, ("that is", "which is")), what]
    else:  # the triangle at the top left that is small
        words = ["the", noun, _position_phrase(rng, m.row, m.column)]
        if size:
            words += [_pick(rng, ("that is", "which is")), size]
    return " ".join(w for w in words if w)


def describe(mentions: list[Mention], rng: np.random.Generator | int | None) -> str:
    """One sentence naming every mention, in a random order, wording and frame."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if not mentions:
        raise ValueError("describe needs at least one mention")
    order = rng.permutation(len(mentions))
    phrases = [_noun_phrase(rng, mentions[int(i)]) for i in order]
    body = phrases[0]
    for p in phrases[1:]:
        body += _pick(rng, _JOINERS) + p
    text = _pick(rng, _FRAMES).format(body)
    return text[0].upper() + text[1:] if rng.random() < 0.7 else text


# --------------------------------------------------------------------------- parsing

_PHRASES = {
    "hollow circle": "ring",
    "plus sign": "cross",
    "as well as": "and",
    "together with": "and",
}
_WORD_FACTS: dict[str, tuple[str, str]] = {}
for _shape, _words in _SHAPE_WORDS.items():
    for _w in _words:
        if " " not in _w:
            _WORD_FACTS[_w] = ("shape", _shape)
for _size, _words in _SIZE_WORDS.items():
    for _w in _words:
        _WORD_FACTS[_w] = ("size", _size)
for _row, _words in _ROW_WORDS.items():
    for _w in _words:
        _WORD_FACTS[_w] = ("row", _row)
for _w in ("left", "right"):
    _WORD_FACTS[_w] = ("column", _w)
for _w in (*_MIDDLE_WORDS, "central"):
    _WORD_FACTS[_w] = ("middle", "middle")
#: Words that carry no fact (frames, articles, prepositions, generic nouns).
_FILLER = frozenset(
    [
        "the",
        "a",
        "an",
        "at",
        "in",
        "on",
        "of",
        "to",
        "near",
        "that",
        "is",
        "which",
        "are",
        "part",
        "side",
        "corner",
        "row",
        "hand",
        "one",
        "object",
        "shape",
        "thing",
        "figure",
        "please",
        "segment",
        "find",
        "outline",
        "mark",
        "highlight",
        "show",
        "me",
        "select",
        "i",
        "want",
        "only",
        "where",
        "also",
        "with",
    ]
)
_SEPARATORS = frozenset({"and", ","})


def _tokens(text: str) -> list[str]:
    t = text.lower().replace("-", " ")
    for phrase, token in _PHRASES.items():
        t = re.sub(rf"\b{phrase}\b", token, t)
    return re.findall(r"[a-z]+|,", t)


def _mention_from(words: list[str]) -> Mention | None:
    facts: dict[str, str] = {}
    middle = False
    for w in words:
        kind, value = _WORD_FACTS[w]
        if kind == "middle":
            if middle:
                return None
            middle = True
        elif facts.setdefault(kind, value) != value:
            return None  # "the big small disk": contradicting facts
    if middle:
        if "row" in facts and "column" in facts:
            return None
        facts.setdefault("row", "middle")
        facts.setdefault("column", "center")
    return Mention(**facts) if facts else None


def parse_mentions(text: str) -> list[Mention] | None:
    """The mentions of a sentence in this module's vocabulary, or None when any word is
    outside it (free text from a person: its facts are not known, so it is not rephrased)."""
    words = _tokens(text)
    groups: list[list[str]] = [[]]
    for w in words:
        if w in _SEPARATORS:
            groups.append([])
        elif w in _WORD_FACTS:
            groups[-1].append(w)
        elif w not in _FILLER:
            return None
    mentions = []
    for g in groups:
        if not g:
            continue  # "and also", a trailing comma
        m = _mention_from(g)
        if m is None:
            return None
        mentions.append(m)
    return mentions or None


# --------------------------------------------------------------------------- datasets

_KIND_ID = 3  # distinct from the chest generators' stream ids


def write_shapes_dataset(
    out_dir: str | os.PathLike, n: int, size: int = 224, seed: int = 0
) -> Path:
    """Write ``n`` samples in the LViT layout (``img/``, ``labelcol/`` 0/255, ``text.csv``) and
    return ``out_dir``. Sample ``i`` depends only on ``(seed, i)``."""
    from PIL import Image

    from .io import write_mask

    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "labelcol").mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(n - 1)))
    rows = []
    for i in range(n):
        image, mask, text = make_shapes_sample(
            np.random.default_rng([int(seed), _KIND_ID, i]), size
        )
        name = f"shapes_{i:0{width}d}.png"
        Image.fromarray(image).save(out / "img" / name)
        write_mask(out / "labelcol" / name, mask)
        rows.append((name, text))
    with open(out / "text.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Image", "Description"])
        writer.writerows(rows)
    return out

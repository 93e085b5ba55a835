"""Text augmentation for training: a new sentence with the same facts.

A text in the vocabulary of the referring shapes data (:mod:`src_models.data.referring`) is read
back into its mentions (shape, size, row, column of each named object) and said again with other
words, another order of the objects and another frame ("Segment ...", "Where is ...?"). Every
fact survives; nothing is added or dropped, so the mask stays right.

Any other text (a clinician's report, a QaTa sentence, a MoNuSeg description) is returned as it
is: its facts are not known, and a word-level swap that looks harmless ("left" -> "right",
"upper" -> "lower") would change what it says.
"""

from __future__ import annotations

import numpy as np

from .referring import describe, parse_mentions

__all__ = ["paraphrase"]


def paraphrase(text: str, rng: np.random.Generator | int | None) -> str:
    """``text`` said differently with the same facts, or ``text`` itself when its facts cannot
    be read. Deterministic given ``rng`` (a generator or a seed)."""
    mentions = parse_mentions(text) if text else None
    if mentions is None:
        return text
    return describe(mentions, rng)

"""The LV (language-vision) loss of LViT for unlabeled images, and its text-matched references.

For an unlabeled image with a text, the reference is the mask of the labeled image (or of a
template) whose text embedding is most cosine-similar to the image's own text; the loss is

    LV = 1 - cos(flatten(sigmoid(prediction)), flatten(reference mask))

(0 for a prediction that equals the reference, 1 for no overlap), weighted 0.1 beside the
Dice + BCE terms. It is a weak shape/location prior: similar descriptions ("lower left lung")
should give similar masks. Images without a text, or whose best match has an empty mask, have
no reference and skip the loss.

The matching depends only on the texts, so it is computed once per round
(:func:`match_references`), never per batch. Sentence embeddings come from the text encoder's
``sentence_embeddings`` (unit vectors); encoders without it (e.g. test fakes) are mean-pooled
from ``encode``. Each distinct text is embedded once.

A template library is a folder in the LViT layout whose ``labelcol/`` masks and text table give
(text, mask) pairs; ``img/`` is optional (:func:`load_templates`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from src_models.losses._functional import cosine_shape_loss

__all__ = [
    "LVLoss",
    "TemplateLibrary",
    "load_templates",
    "lv_loss",
    "match_references",
    "nearest_by_text",
    "sentence_embeddings",
]


def lv_loss(logits: torch.Tensor, reference: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``1 - cos(sigmoid(logits), reference)`` per image, flattened; see the module docstring.

    ``logits`` and ``reference`` are ``[B, 1, H, W]`` (reference in [0, 1]).
    """
    return cosine_shape_loss(torch.sigmoid(logits.float()), reference, reduction=reduction)


class LVLoss(nn.Module):
    """``weight * mean(1 - cos(sigmoid(logits), reference))`` over the rows marked ``valid``.

    Call ``loss(logits [B,1,H,W], reference [B,1,H,W], valid bool [B] | None)``; with no valid
    row it returns a zero that keeps the graph (so it can always be summed and backpropagated).
    """

    def __init__(self, weight: float = 0.1) -> None:
        super().__init__()
        self.weight = float(weight)

    def forward(
        self,
        logits: torch.Tensor,
        reference: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if valid is not None:
            valid = valid.to(logits.device, torch.bool).reshape(-1)
            if not bool(valid.any()):
                return logits.float().sum() * 0.0
            logits, reference = logits[valid], reference[valid]
        return self.weight * lv_loss(logits, reference)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


# --------------------------------------------------------------------------- text matching


def sentence_embeddings(encoder: Any, texts: Sequence[str], chunk: int = 64) -> torch.Tensor:
    """Unit sentence vectors ``[N, D]`` (float32, CPU) of ``texts``, each distinct text once.

    Uses ``encoder.sentence_embeddings`` when it exists, else the masked mean of
    ``encoder.encode(texts).tokens``.
    """
    texts = [" ".join(t.split()) for t in texts]
    if not texts:
        return torch.zeros(0, int(getattr(encoder, "dim", 0)))
    unique = list(dict.fromkeys(texts))
    rows = []
    for start in range(0, len(unique), chunk):
        part = unique[start : start + chunk]
        fn = getattr(encoder, "sentence_embeddings", None)
        if callable(fn):
            emb = fn(part)
        else:
            feats = encoder.encode(part)
            w = feats.mask.unsqueeze(-1).float()
            emb = (feats.tokens.float() * w).sum(1) / w.sum(1).clamp_min(1.0)
        rows.append(torch.nn.functional.normalize(emb.detach().float().cpu(), dim=-1))
    table = torch.cat(rows)
    where = {t: i for i, t in enumerate(unique)}
    return table[[where[t] for t in texts]]


def nearest_by_text(query: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query embedding the index of the most cosine-similar key, and that similarity.

    ``query`` ``[N, D]``, ``keys`` ``[M, D]`` (normalised here). Ties go to the lowest index.
    """
    if keys.shape[0] == 0:
        raise ValueError("no keys to match against")
    q = torch.nn.functional.normalize(query.float(), dim=-1)
    k = torch.nn.functional.normalize(keys.float(), dim=-1)
    sim = q @ k.T
    best, idx = sim.max(dim=1)
    return idx, best


@dataclass
class TemplateLibrary:
    """Reference (text, mask) pairs for the LV loss; masks bool ``[S, S]`` at the model size."""

    texts: list[str]
    masks: np.ndarray  # [M, S, S] bool
    names: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def load_templates(folder: str | os.PathLike, size: int) -> TemplateLibrary:
    """(text, mask) pairs from a folder in the LViT layout, masks resized to ``size``.

    The text table's ``Image`` column names the mask files in ``labelcol/`` (or the images in
    ``img/``, paired with their masks by name). Rows without a mask file or without text are
    skipped; an empty library is an error.
    """
    from src_models.data.dataset import (
        DatasetError,
        find_text_table,
        read_text_table,
        scan_split,
    )
    from src_models.data.io import load_image, mask_from_array
    from src_models.data.transforms import resize_mask

    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"template folder '{root}' does not exist")
    pairs: list[tuple[str, str, Path]] = []
    if (root / "img").is_dir():
        for rec in scan_split(root, require_masks=True, check_sizes=False):
            if rec.text and rec.mask_path is not None:
                pairs.append((rec.name, rec.text, rec.mask_path))
    else:
        table_path = find_text_table(root)
        if table_path is None:
            raise DatasetError(f"template folder '{root}' has no text table")
        table = read_text_table(table_path)
        mask_dir = root / "labelcol"
        for name, text in table.items():
            path = mask_dir / name
            if text and path.is_file():
                pairs.append((Path(name).stem, text, path))
    if not pairs:
        raise DatasetError(f"template folder '{root}' has no (text, mask) pairs")
    masks = []
    for _, _, path in pairs:
        loaded = load_image(path)
        data = loaded.slice(0) if loaded.is_volume else loaded.data
        masks.append(resize_mask(mask_from_array(data, rgb=loaded.rgb), int(size)))
    return TemplateLibrary(
        texts=[t for _, t, _ in pairs], masks=np.stack(masks), names=[n for n, _, _ in pairs]
    )


def match_references(
    encoder: Any,
    query_texts: Sequence[str | None],
    key_texts: Sequence[str | None],
) -> list[int | None]:
    """For every query text the index of the most similar key text (``None`` without a text).

    Keys without a text are never chosen; with no usable key every answer is ``None``.
    """
    keys = [i for i, t in enumerate(key_texts) if t and t.strip()]
    queries = [i for i, t in enumerate(query_texts) if t and t.strip()]
    out: list[int | None] = [None] * len(query_texts)
    if not keys or not queries:
        return out
    emb = sentence_embeddings(
        encoder, [key_texts[i] for i in keys] + [query_texts[i] for i in queries]
    )
    idx, _ = nearest_by_text(emb[len(keys) :], emb[: len(keys)])
    for qi, ki in zip(queries, idx.tolist(), strict=True):
        out[qi] = keys[ki]
    return out

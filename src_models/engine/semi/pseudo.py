"""What a semi-supervised round >= 1 needs before it trains: the EPI update of the pseudo labels
(:func:`update_bank`) and the LV references of the unlabeled images (:func:`lv_references`)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from src_models.data import transforms as T
from src_models.engine.distributed import DistEnv, Distributed
from src_models.engine.evaluate import iter_probs
from src_models.engine.semi.bank import PseudoLabelBank
from src_models.engine.semi.data import _plain_collate, _PlainView, bank_keys
from src_models.engine.semi.events import PseudoLabelProgress
from src_models.losses.lv import TemplateLibrary, load_templates, match_references

__all__ = ["load_lv_templates", "lv_references", "missing_pseudo_labels", "update_bank"]


def update_bank(
    model: nn.Module,
    base: Any,
    unlabeled: Sequence[int],
    bank: PseudoLabelBank,
    text_encoder: Any,
    *,
    round_index: int,
    device: torch.device,
    use_text: bool,
    amp: bool,
    batch_size: int,
    no_lesion: Collection[str] = frozenset(),
    cancelled: Callable[[], bool] = lambda: False,
    dist: Distributed | None = None,
) -> Generator[PseudoLabelProgress, None, float | None]:
    """Predict the ``unlabeled`` items of ``base`` and EPI-update the bank (a sub-generator:
    ``change = yield from update_bank(...)``, yielding :class:`PseudoLabelProgress`).

    Images named in ``no_lesion`` get an all-zero label. Returns the mean absolute change
    (``nan`` on a bank's first update), or ``None`` if ``cancelled()`` became true (the bank
    then keeps its previous labels).

    Under torchrun (``dist``, every rank calls this): the items go in steps of
    ``batch_size * world_size``; in each step rank r predicts the r-th ``batch_size`` of them,
    rank 0 gathers the maps and adds them in the items' order (so the bank is the one a single
    process writes), and only rank 0 writes; after the commit the others reload the bank. A
    cancel on any rank stops every rank.
    """
    dist = dist if dist is not None else Distributed(DistEnv())
    world, rank, main = dist.world_size, dist.rank, dist.is_main
    was_training = model.training
    model.to(device).eval()
    keys = bank_keys(base)
    order = [int(i) for i in unlabeled]
    total = len(order)
    step = int(batch_size) * world
    update = bank.begin_update() if main else None
    done = 0
    try:
        for start in range(0, total, step):
            mine = order[start : start + step][rank * batch_size : (rank + 1) * batch_size]
            maps = _predict(model, base, mine, device, text_encoder, use_text, amp)
            for rank_maps in dist.gather_objects(maps) or []:
                for index, prob in rank_maps:
                    if base.names[index] in no_lesion:
                        update.add_empty(keys[index], tuple(prob.shape[-2:]))
                    else:
                        update.add(keys[index], prob)
            done = min(start + step, total)
            yield PseudoLabelProgress(round=round_index, done=done, total=total)
            if dist.any(cancelled()):
                if update is not None:
                    update.abort()
                return None
        change = update.commit() if update is not None else None
        change = dist.broadcast_object(change)
    except BaseException:
        if update is not None:
            update.abort()
        raise
    finally:
        model.train(was_training)
    dist.barrier()  # rank 0's index is written: the others read it
    if not main:
        bank.reload()
    return float("nan") if change is None else change


def _predict(
    model: nn.Module,
    base: Any,
    indices: Sequence[int],
    device: torch.device,
    text_encoder: Any,
    use_text: bool,
    amp: bool,
) -> list[tuple[int, np.ndarray]]:
    """``(index, probability map [S, S] float32)`` for the items ``indices`` of ``base``, in
    their order, predicted in one batch without augmentation."""
    if not indices:
        return []
    loader = DataLoader(
        _PlainView(base, indices),
        batch_size=len(indices),
        shuffle=False,
        num_workers=0,
        collate_fn=_plain_collate,
    )
    out: list[tuple[int, np.ndarray]] = []
    for batch, probs in iter_probs(model, loader, device, text_encoder, use_text, amp):
        for j, index in enumerate(batch["index"].tolist()):
            out.append((int(index), probs[j, 0].cpu().numpy()))
    return out


def missing_pseudo_labels(
    base: Any,
    unlabeled: Sequence[int],
    bank: PseudoLabelBank,
    no_lesion: Collection[str] = frozenset(),
) -> list[str]:
    """The names of the ``unlabeled`` items (but the ``no_lesion`` ones) without a pseudo label
    in ``bank``."""
    keys = bank_keys(base)
    names = base.names
    return [names[i] for i in unlabeled if keys[i] not in bank and names[i] not in no_lesion]


def load_lv_templates(templates: Any, img_size: int) -> TemplateLibrary:
    """Extra LV references: a :class:`~src_models.losses.lv.TemplateLibrary` as is, or a folder
    in the LViT layout loaded at ``img_size``."""
    if isinstance(templates, TemplateLibrary):
        return templates
    return load_templates(templates, img_size)


def lv_references(
    base: Any,
    labeled: Sequence[int],
    unlabeled: Sequence[int],
    text_encoder: Any,
    templates: TemplateLibrary | None = None,
    no_lesion: Collection[str] = frozenset(),
) -> dict[int, np.ndarray]:
    """For every unlabeled image with a text (and not in ``no_lesion``): the mask of the labeled
    image (or template) with the most similar text, at the model size. Empty masks are never
    references."""
    texts = base.texts
    key_masks: list[np.ndarray] = []
    key_texts: list[str] = []
    for i in labeled:
        m = base.mask_bool(i)
        if texts[i] and m.any():
            key_masks.append(m)
            key_texts.append(texts[i])
    if templates is not None:
        for t, m in zip(templates.texts, templates.masks, strict=True):
            if t and m.any():
                key_masks.append(np.asarray(m, dtype=bool))
                key_texts.append(t)
    queries = [i for i in unlabeled if base.names[i] not in no_lesion]
    if not key_texts or not queries:
        return {}
    match = match_references(text_encoder, [texts[i] for i in queries], key_texts)
    size = int(base.img_size)
    refs: dict[int, np.ndarray] = {}
    for i, k in zip(queries, match, strict=True):
        if k is None:
            continue
        m = key_masks[k]
        if m.shape != (size, size):
            m = T.resize_mask(m, size)
        refs[i] = m
    return refs

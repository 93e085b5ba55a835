"""The data of semi-supervised rounds: the labeled split, the training base, each round's items.

- :func:`split_labeled` chooses the labeled records of a data set (benchmarks, ``--labeled-
  fraction``); :class:`LabeledUnlabeledSet` joins a labeled and an unlabeled set into one base.
- :class:`_RoundDataset` is what one round trains on: labeled images with their masks,
  unlabeled ones with their pseudo label (from the bank) and LV reference, augmented together;
  :func:`semi_collate` batches it.
- :class:`_PlainView` serves the unlabeled images un-augmented, for predicting pseudo labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from src_models.data import transforms as T
from src_models.engine.semi.bank import PseudoLabelBank

__all__ = ["LabeledUnlabeledSet", "bank_keys", "semi_collate", "split_labeled"]


def split_labeled(records: Sequence[Any], fraction: float, seed: int = 0) -> tuple[list, list]:
    """Choose ``round(fraction * n)`` records (at least 1) as labeled, by ``seed``.

    Records are :class:`~src_models.data.SegmentationRecord`-like (``mask_path``); the others
    are returned as copies with ``mask_path=None`` (used without their masks). Records without
    a mask are never chosen as labeled. Returns ``(labeled, unlabeled)`` in input order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the labeled fraction must be in (0, 1], got {fraction}")
    with_mask = [i for i, r in enumerate(records) if r.mask_path is not None]
    if not with_mask:
        raise ValueError("no record has a mask: nothing can be labeled")
    n = min(len(with_mask), max(1, round(fraction * len(with_mask))))
    rng = np.random.default_rng(seed)
    chosen = set(np.asarray(with_mask)[rng.permutation(len(with_mask))[:n]].tolist())
    labeled = [r for i, r in enumerate(records) if i in chosen]
    unlabeled = [
        dataclasses.replace(r, mask_path=None) if r.mask_path is not None else r
        for i, r in enumerate(records)
        if i not in chosen
    ]
    return labeled, unlabeled


def bank_keys(base: Any) -> list[str]:
    """The pseudo-label bank key of every item: ``base.bank_keys`` if it has them, else names."""
    keys = getattr(base, "bank_keys", None)
    return list(keys) if keys is not None else list(base.names)


class LabeledUnlabeledSet:
    """One training base from a labeled set and an unlabeled set (both SegmentationDataset-like,
    same ``img_size``): the items of the second get ``has_mask`` False. Augmentation, seed and
    ``spatial_text`` come from the labeled set (``spatial_text`` is True if either says so).
    ``unlabeled_keys`` name the unlabeled items in the pseudo-label bank (default: names)."""

    root = None

    def __init__(
        self, labeled: Any, unlabeled: Any, unlabeled_keys: Sequence[str] | None = None
    ) -> None:
        if int(labeled.img_size) != int(unlabeled.img_size):
            raise ValueError("the labeled and unlabeled sets must have the same img_size")
        self.labeled, self.unlabeled = labeled, unlabeled
        self.n_labeled = len(labeled)
        self.img_size = int(labeled.img_size)
        self.augment = bool(getattr(labeled, "augment", False))
        self.seed = int(getattr(labeled, "seed", 0))
        self.spatial_text = bool(getattr(labeled, "spatial_text", True)) or bool(
            getattr(unlabeled, "spatial_text", True)
        )
        self.names = list(labeled.names) + list(unlabeled.names)
        self.texts = list(labeled.texts) + list(unlabeled.texts)
        self.has_mask = np.concatenate(
            [np.asarray(labeled.has_mask, bool), np.zeros(len(unlabeled), bool)]
        )
        ukeys = list(unlabeled.names) if unlabeled_keys is None else list(unlabeled_keys)
        if len(ukeys) != len(unlabeled):
            raise ValueError("unlabeled_keys must name every unlabeled item")
        self.bank_keys = list(labeled.names) + ukeys

    def __len__(self) -> int:
        return len(self.names)

    def _where(self, i: int) -> tuple[Any, int]:
        i = int(i)
        return (self.labeled, i) if i < self.n_labeled else (self.unlabeled, i - self.n_labeled)

    def image_uint8(self, i: int) -> np.ndarray:
        data, j = self._where(i)
        return data.image_uint8(j)

    def mask_bool(self, i: int) -> np.ndarray:
        data, j = self._where(i)
        return data.mask_bool(j)


def semi_collate(batch: Sequence[dict]) -> dict:
    """:func:`~src_models.data.collate` plus ``lv_ref`` ``[B,1,S,S]`` and ``lv_valid`` ``[B]``."""
    from src_models.data import collate

    out = collate(batch)
    out["lv_ref"] = torch.stack([b["lv_ref"] for b in batch])
    out["lv_valid"] = torch.tensor([bool(b["lv_valid"]) for b in batch])
    return out


class _RoundDataset(Dataset):
    """The training items of one round: labeled images with their masks, unlabeled ones with
    their pseudo label as ``mask`` (``has_mask`` False) and their LV reference."""

    def __init__(
        self,
        base: Any,
        labeled: Sequence[int],
        unlabeled: Sequence[int] = (),
        bank: PseudoLabelBank | None = None,
        lv_refs: dict[int, np.ndarray] | None = None,
        empty: Collection[str] = frozenset(),
        labeled_repeat: int = 1,
        jitter: float = 0.0,
    ) -> None:
        self.base = base
        self.keys = bank_keys(base)
        self.jitter = float(jitter)
        self.items: list[tuple[int, int]] = [
            (int(i), k) for k in range(int(labeled_repeat)) for i in labeled
        ] + [(int(i), 0) for i in unlabeled]
        self.bank = bank
        self.lv_refs = lv_refs or {}
        self.empty = frozenset(empty)
        self.epoch = 0
        self.size = int(base.img_size)
        self.augment = bool(getattr(base, "augment", False))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def texts(self) -> list[str]:
        texts = self.base.texts
        return [texts[i] for i, _ in self.items]

    @property
    def names(self) -> list[str]:
        return [self.base.names[i] for i, _ in self.items]

    @property
    def has_mask(self) -> np.ndarray:
        has = self.base.has_mask
        return np.asarray([has[i] for i, _ in self.items], dtype=bool)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _pseudo(self, index: int) -> np.ndarray:
        name = self.base.names[index]
        if name in self.empty:
            return np.zeros((self.size, self.size), np.float32)
        p = None if self.bank is None else self.bank.get(self.keys[index])
        if p is None:
            raise KeyError(f"no pseudo label for unlabeled image {name!r}")
        if p.shape != (self.size, self.size):
            p = T.resize_prob(p, (self.size, self.size))
        return p

    def __getitem__(self, i: int) -> dict:
        bi, copy_id = self.items[int(i)]
        base = self.base
        img = base.image_uint8(bi).astype(np.float32) * np.float32(1.0 / 255.0)
        labeled = bool(base.has_mask[bi])
        rng = np.random.default_rng([base.seed, self.epoch, bi, copy_id]) if self.augment else None
        ref = self.lv_refs.get(bi)
        if labeled:
            mask = base.mask_bool(bi)
            if rng is not None:
                img, mask = T.augment(img, mask, rng, spatial_text=base.spatial_text)
            target = mask.astype(np.float32)
            ref_map = np.zeros_like(target)
            ref = None
        else:
            target = self._pseudo(bi)
            ref_map = np.zeros_like(target) if ref is None else ref.astype(np.float32)
            if rng is not None:
                c = img.shape[2]
                stacked = np.concatenate([img, target[..., None], ref_map[..., None]], axis=2)
                stacked, _ = T.augment(stacked, None, rng, spatial_text=base.spatial_text)
                img, target, ref_map = stacked[..., :c], stacked[..., c], stacked[..., c + 1]
            target = np.clip(target, 0.0, 1.0)
            ref_map = (ref_map > 0.5).astype(np.float32)
            if self.jitter > 0:
                img = _jitter(
                    img, self.jitter, np.random.default_rng([base.seed, self.epoch, bi, 7])
                )
        img = np.clip(img, 0.0, 1.0)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None],
            "has_mask": labeled,
            "text": base.texts[bi],
            "name": base.names[bi],
            "index": bi,
            "lv_ref": torch.from_numpy(np.ascontiguousarray(ref_map, dtype=np.float32))[None],
            "lv_valid": ref is not None,
        }


def _jitter(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Photometric noise (contrast, brightness, gamma, Gaussian noise); no geometry, so texts
    that name sides stay true."""
    j = float(strength)
    out = (img - 0.5) * rng.uniform(1 - j, 1 + j) + 0.5 + rng.uniform(-j / 2, j / 2)
    out = np.clip(out, 0.0, 1.0) ** rng.uniform(1 - j, 1 + j)
    out = out + rng.normal(0.0, j / 10, size=out.shape)
    return out.astype(np.float32)


class _PlainView(Dataset):
    """Un-augmented items of ``base`` at ``indices`` (for predicting pseudo labels)."""

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        bi = self.indices[int(i)]
        img = self.base.image_uint8(bi).astype(np.float32) * np.float32(1.0 / 255.0)
        size = img.shape[:2]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "mask": torch.zeros(1, *size),
            "has_mask": False,
            "text": self.base.texts[bi],
            "name": self.base.names[bi],
            "index": bi,
        }


def _plain_collate(batch: Sequence[dict]) -> dict:
    from src_models.data import collate

    return collate(batch)

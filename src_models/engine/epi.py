"""Semi-supervised retraining in rounds: EPI pseudo labels + the LV loss around the Trainer.

::

    semi = SemiTrainer(model, train_set, val_set, text_encoder,
                       TrainConfig(epochs=20, out="run/model.safetensors"),
                       SemiConfig(rounds=3, round_epochs=8, lv_weight=0.1))
    for event in semi.fit():         # RoundStart, PseudoLabelProgress, the inner trainer's
        print(format_semi_event(event))  # events, RoundEnd, ..., SemiDone
    semi.cancel()                    # from anywhere: stops at the next event

``train_set`` is one :class:`~src_models.data.SegmentationDataset` in which the items with
``has_mask`` False are the unlabeled images (e.g. built from records whose ``mask_path`` is
``None``, see :func:`split_labeled`). The rounds:

- **round 0** trains on the labeled images only (``SemiConfig.round0_epochs``; 0 skips it when
  the model is already trained, e.g. a GUI retrain that starts from the current checkpoint);
- **round r >= 1**: the model predicts every unlabeled image (no augmentation, model size);
  each pseudo label is EPI-updated in the :class:`~src_models.engine.pseudo_bank.PseudoLabelBank`
  (``P_t = beta_t P_(t-1) + (1 - beta_t) Phat_t``, bias-corrected schedule by default: see
  that module for why ``beta = 0.99`` needs it with a handful of rounds); the LV references
  (most text-similar labeled image or template) are matched once; then the model trains
  ``round_epochs`` epochs on labeled + pseudo-labeled images.

Every round is one ordinary :class:`~src_models.engine.Trainer` run (:class:`EPIRoundTrainer`,
a subclass that only overrides hooks): same optimizer recipe (fresh Adam + cosine schedule per
round, i.e. a warm restart; ``t0`` is capped at the round's length and rounds >= 1 may use a
lower ``SemiConfig.round_lr``), validation, early stopping, checkpoints and exact resume. Between
rounds the model keeps the round's best weights by validation Dice (``carry_best``); the best
model of all rounds is saved to ``TrainConfig.out`` and left in ``model`` at the end.

The loss of a round r >= 1 (terms as logged in ``BatchEnd.losses``):

- ``dice``, ``bce``: the supervised loss (``loss_fn``, default 0.5 Dice + 0.5 balanced BCE) on
  the labeled rows of the batch;
- ``unl_dice``, ``unl_bce``: ``ramp * unlabeled_weight * 0.5 * (Dice + balanced BCE)`` against
  the pseudo label, over the pixels whose pseudo label is confident, ``|P - 0.5| >= margin``
  (the margin drops the pixels where the rounds disagree: the averaged label sits near 0.5
  there). Defaults: soft targets (``hard=False``), ``margin=0.1``, ``unlabeled_weight=0.5``.
  Soft targets keep the EPI average's uncertainty instead of turning it into confident errors;
  on the synthetic benchmark hardening at 0.5 with ``margin=0.2`` and weight 1 was not better
  (within the noise, see ``benchmarks/bench_semi.py``). ``hard=True`` hardens at 0.5.
- ``lv``: ``ramp * lv_weight * (1 - cos(sigmoid(logits), reference mask))`` for unlabeled rows
  with a reference (:mod:`src_models.losses.lv`).

``ramp`` is the sigmoid ramp-up ``exp(-5 (1 - x)^2)``, ``x`` = semi-supervised epochs so far /
``ramp_epochs`` (counted across rounds, so it ramps in once, during the first EPI round).

Pseudo labels and the LV reference are geometrically augmented together with their image (as
extra image channels, so the same random draw moves all of them), which keeps targets aligned
with augmented inputs. Images flagged "no lesion" (``no_lesion`` names) get an all-zero pseudo
label (every pixel confident background) and no LV term.

With ``SemiConfig.clcc`` set (a :class:`~src_models.engine.clcc.CLCCConfig`), every round's
trainer also adds CLCC's terms (``clcc_contrast`` during the first third of all rounds' epochs,
``clcc_consistency`` after; see :mod:`src_models.engine.clcc`).

Restart: with ``TrainConfig.out`` set, ``<stem>.semi.json`` records finished rounds and the
bank records its updates, so ``SemiTrainer(..., resume=True)`` continues with the next round (a
round interrupted mid-way resumes exactly from its last epoch via the Trainer's own resume; a
bank update interrupted mid-way is discarded and redone). Single process only (no torchrun).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from src_models.data import transforms as T
from src_models.device import resolve_device
from src_models.engine.checkpoint import (
    CheckpointError,
    last_checkpoint_path,
    load_train_state,
    load_weights_into,
    save_checkpoint,
    train_state_path,
)
from src_models.engine.evaluate import (
    check_masks,
    check_texts,
    iter_probs,
    resolve_use_text,
)
from src_models.engine.events import EpochEnd, Event, TrainingDone, ValidationEnd, format_event
from src_models.engine.pseudo_bank import SCHEDULES, PseudoLabelBank
from src_models.engine.trainer import Callback, TrainConfig, Trainer
from src_models.losses._functional import (
    masked_balanced_bce_with_logits,
    masked_soft_dice_loss,
)
from src_models.losses.lv import LVLoss, TemplateLibrary, load_templates, match_references

__all__ = [
    "EPIRoundTrainer",
    "LabeledUnlabeledSet",
    "PseudoLabelProgress",
    "RoundEnd",
    "RoundStart",
    "SemiConfig",
    "SemiDone",
    "SemiTrainer",
    "bank_keys",
    "format_semi_event",
    "semi_collate",
    "sigmoid_rampup",
    "split_labeled",
]


# --------------------------------------------------------------------------- config, events


@dataclass
class SemiConfig:
    """Settings of semi-supervised retraining (see the module docstring).

    ``rounds`` EPI rounds follow round 0. ``round0_epochs``/``round_epochs`` default to
    ``TrainConfig.epochs``; ``round0_epochs=0`` skips round 0. ``pseudo_dir`` is the bank folder
    (default: ``<out stem>.pseudo`` beside the checkpoint, else ``pseudo_labels`` inside the data
    folder, else a temporary folder removed at the end).
    """

    rounds: int = 3
    round0_epochs: int | None = None
    round_epochs: int | None = None
    beta: float = 0.99
    schedule: str = "corrected"  # or "plain"
    unlabeled_weight: float = 0.5
    margin: float = 0.1  # pixels with |P - 0.5| < margin are left out of the unlabeled loss
    hard: bool = False  # True: harden pseudo labels at 0.5; False: soft targets
    ramp_epochs: float = 3.0  # sigmoid ramp-up of the unlabeled and LV terms, in epochs
    lv_weight: float = 0.1
    labeled_repeat: int = 1  # each labeled image appears this often per epoch of a round >= 1
    round_lr: float | None = None  # learning rate of rounds >= 1 (default TrainConfig.lr)
    unlabeled_jitter: float = 0.0  # photometric jitter of pseudo-labeled inputs (0 = off)
    carry_best: bool = True  # next round starts from this round's best weights (by val Dice)
    pseudo_dir: str | None = None
    bank_dtype: str = "float16"
    bank_fsync: bool = True
    predict_batch_size: int = 8
    keep_files: bool = True  # round checkpoints + <stem>.semi.json beside out (for resume)
    # CLCC terms in every round (src_models.engine.clcc.CLCCConfig or its dict; None = off)
    clcc: Any = None

    def __post_init__(self) -> None:
        if self.clcc is not None:
            from src_models.engine.clcc import CLCCConfig

            self.clcc = CLCCConfig.coerce(self.clcc)
        if self.pseudo_dir is not None:
            self.pseudo_dir = str(self.pseudo_dir)
        if int(self.rounds) < 0:
            raise ValueError(f"SemiConfig.rounds must be >= 0, got {self.rounds}")
        for name in ("round0_epochs", "round_epochs"):
            value = getattr(self, name)
            if value is not None and int(value) < (0 if name == "round0_epochs" else 1):
                raise ValueError(f"SemiConfig.{name} is too small: {value}")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"SemiConfig.beta must be in [0, 1), got {self.beta}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"SemiConfig.schedule must be one of {SCHEDULES}")
        if not 0.0 <= self.margin < 0.5:
            raise ValueError(f"SemiConfig.margin must be in [0, 0.5), got {self.margin}")
        if self.unlabeled_weight < 0 or self.lv_weight < 0 or self.ramp_epochs < 0:
            raise ValueError("SemiConfig weights and ramp_epochs must be >= 0")
        if self.round_lr is not None and self.round_lr <= 0:
            raise ValueError(f"SemiConfig.round_lr must be > 0, got {self.round_lr}")
        if not 0.0 <= self.unlabeled_jitter < 1.0:
            raise ValueError("SemiConfig.unlabeled_jitter must be in [0, 1)")
        if int(self.labeled_repeat) < 1 or int(self.predict_batch_size) < 1:
            raise ValueError("SemiConfig.labeled_repeat and predict_batch_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RoundStart:
    """A round begins. Round 0 = labeled images only; ``pseudo_change`` is the mean absolute
    change of the pseudo labels made by this round's EPI update (None in round 0 and on the
    first update of a new bank)."""

    round: int
    rounds: int  # index of the last round
    epochs: int
    n_labeled: int
    n_unlabeled: int  # images trained on with pseudo labels (0 in round 0)
    pseudo_t: int = 0  # the bank's update counter
    pseudo_change: float | None = None
    n_lv: int = 0  # unlabeled images with an LV reference


@dataclass(frozen=True)
class PseudoLabelProgress:
    """Predicting the unlabeled images for the EPI update of ``round``: ``done`` of ``total``."""

    round: int
    done: int
    total: int


@dataclass(frozen=True)
class RoundEnd:
    """A round is over. ``losses`` are the means over its epochs of the named terms (including
    ``unl_dice``, ``unl_bce``, ``lv`` in rounds >= 1); ``val_dice`` is the round's best
    validation Dice, ``best_dice`` the best over all rounds so far."""

    round: int
    rounds: int
    epochs_run: int
    train_loss: float
    losses: dict[str, float] = field(default_factory=dict)
    val_dice: float | None = None
    best_dice: float | None = None
    improved: bool = False
    pseudo_change: float | None = None
    checkpoint: str | None = None
    seconds: float = 0.0
    cancelled: bool = False


@dataclass(frozen=True)
class SemiDone:
    """The end of :meth:`SemiTrainer.fit`; always the last event."""

    rounds_run: int
    best_dice: float | None
    best_round: int | None
    cancelled: bool
    checkpoint: str | None
    pseudo_dir: str | None
    history: list[dict[str, Any]] = field(default_factory=list)


SemiEvent = RoundStart | PseudoLabelProgress | RoundEnd | SemiDone


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_semi_event(event: Event | SemiEvent) -> str:
    """One line per event; the inner trainer's events go to :func:`format_event`."""
    if isinstance(event, RoundStart):
        head = f"round {event.round}/{event.rounds}: {event.epochs} epochs on "
        if event.round == 0:
            return head + f"{event.n_labeled} labeled images (supervised)"
        return head + (
            f"{event.n_labeled} labeled + {event.n_unlabeled} pseudo-labeled images (EPI "
            f"t={event.pseudo_t}, change {_fmt(event.pseudo_change)}, {event.n_lv} with an LV "
            "reference)"
        )
    if isinstance(event, PseudoLabelProgress):
        return f"round {event.round}: predicted {event.done}/{event.total} unlabeled images"
    if isinstance(event, RoundEnd):
        terms = " ".join(f"{k} {v:.4f}" for k, v in event.losses.items())
        how = " (cancelled)" if event.cancelled else ""
        return (
            f"round {event.round} done{how}: loss {_fmt(event.train_loss)} ({terms}), "
            f"val Dice {_fmt(event.val_dice)} (best {_fmt(event.best_dice)}), "
            f"{event.seconds:.1f} s"
        )
    if isinstance(event, SemiDone):
        how = "cancelled" if event.cancelled else "done"
        return (
            f"semi-supervised training {how} after {event.rounds_run} rounds, best val Dice "
            f"{_fmt(event.best_dice)} (round {event.best_round})"
        )
    return format_event(event)


def sigmoid_rampup(position: float, length: float) -> float:
    """``exp(-5 (1 - x)^2)`` for ``x = position / length`` in [0, 1], 1 after (Laine & Aila)."""
    if length <= 0:
        return 1.0
    x = min(max(float(position) / float(length), 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - x) ** 2))


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


# --------------------------------------------------------------------------- datasets


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


# --------------------------------------------------------------------------- one round


class EPIRoundTrainer(Trainer):
    """One round of semi-supervised training: a :class:`Trainer` whose training items may lack
    a mask (their ``mask`` is the pseudo label) and whose loss adds the unlabeled and LV terms.

    Extra keyword arguments: ``semi`` (:class:`SemiConfig`), ``round_index`` (0 = supervised
    only) and ``ramp_offset`` (semi-supervised epochs run in earlier rounds).
    """

    def __init__(
        self,
        *args: Any,
        semi: SemiConfig | None = None,
        round_index: int = 1,
        ramp_offset: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.semi = semi if semi is not None else SemiConfig()
        self.round_index = int(round_index)
        self.ramp_offset = float(ramp_offset)
        self.lv_loss = LVLoss(self.semi.lv_weight)

    def check_datasets(self) -> None:
        for data in (self.train_set, self.val_set):
            if data is not None and self.use_text:
                check_texts(data)
        if self.val_set is not None:
            check_masks(self.val_set)
        has = getattr(self.train_set, "has_mask", None)
        if self.round_index == 0 and has is not None and not np.all(has):
            check_masks(self.train_set)

    def build_train_loader(self) -> tuple[DataLoader, Any]:
        loader, sampler = super().build_train_loader()
        loader.collate_fn = semi_collate
        return loader, sampler

    def ramp(self) -> float:
        """Current weight of the unlabeled and LV terms (sigmoid ramp over semi epochs)."""
        n = max(len(self.train_loader), 1)
        position = self.ramp_offset + self.epoch + self._epoch_batches / n
        return sigmoid_rampup(position, self.semi.ramp_epochs)

    def _supervised(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = getattr(self.loss_fn, "terms", None)
        if callable(terms):
            return dict(terms(logits, target))
        return {"seg": self.loss_fn(logits, target)}

    def compute_loss(self, batch: dict[str, Any], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        target = self.targets(batch)
        has = batch.get("has_mask")
        if has is None or self.round_index == 0:
            return self._supervised(logits, target)
        has = has.to(logits.device, torch.bool).reshape(-1)
        if bool(has.any()):
            terms = self._supervised(logits[has], target[has])
        else:  # same names, zero values, graph kept
            terms = {k: v * 0.0 for k, v in self._supervised(logits, target).items()}
        anchor = logits.float().sum() * 0.0
        unl = ~has
        weight = self.ramp()
        w_unl = weight * self.semi.unlabeled_weight
        if bool(unl.any()) and w_unl > 0:
            lg = logits[unl]
            p = target[unl].float()
            conf = ((p - 0.5).abs() >= self.semi.margin).float()
            tgt = (p > 0.5).float() if self.semi.hard else p
            dice = masked_soft_dice_loss(torch.sigmoid(lg.float()), tgt, conf)
            bce = masked_balanced_bce_with_logits(lg, tgt, conf)
            terms["unl_dice"] = w_unl * 0.5 * dice
            terms["unl_bce"] = w_unl * 0.5 * bce
        else:
            terms["unl_dice"] = anchor
            terms["unl_bce"] = anchor
        valid = batch.get("lv_valid")
        if valid is not None and self.semi.lv_weight > 0 and weight > 0:
            valid = valid.to(logits.device, torch.bool).reshape(-1) & unl
            terms["lv"] = weight * self.lv_loss(logits, batch["lv_ref"], valid)
        else:
            terms["lv"] = anchor
        return terms

    def extra_state(self) -> dict[str, Any]:
        return {"semi_round": self.round_index, "ramp_offset": self.ramp_offset}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        saved = state.get("semi_round")
        if saved is not None and int(saved) != self.round_index:
            raise CheckpointError(
                f"the training state is from semi-supervised round {saved}, not "
                f"round {self.round_index}"
            )
        self.ramp_offset = float(state.get("ramp_offset", self.ramp_offset))


class _KeepBest(Callback):
    """Keeps a CPU copy of the weights whenever validation improves."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None
        self.dice: float | None = None

    def on_event(self, trainer: Trainer, event: Any) -> None:
        if isinstance(event, ValidationEnd) and event.improved:
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in _sd(trainer.model)}
            self.dice = event.dice


def _sd(model: nn.Module):
    return model.state_dict().items()


# --------------------------------------------------------------------------- the rounds


class SemiTrainer:
    """Semi-supervised retraining in rounds (EPI + LV); see the module docstring.

    Args:
        model: a registry model; trained in place (holds the best weights at the end).
        train_set: a :class:`~src_models.data.SegmentationDataset`; ``has_mask`` False marks
            the unlabeled images.
        val_set: labeled validation set (best round/epoch selection), or ``None``.
        text_encoder: for text models and for the LV matching (``sentence_embeddings``).
        config: the :class:`TrainConfig` of every round (``epochs`` = default round length,
            ``out`` = the best checkpoint over all rounds).
        semi: a :class:`SemiConfig`.
        no_lesion: names of unlabeled images known to contain no lesion (empty pseudo label).
        templates: extra LV references: a :class:`~src_models.losses.lv.TemplateLibrary` or a
            folder in the LViT layout.
        hooks: :class:`Callback` objects passed to every round's trainer.
        loss_fn: supervised criterion (default Dice + BCE).
        resume: continue the run recorded beside ``config.out`` (needs ``out``).
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Any,
        val_set: Dataset | None = None,
        text_encoder: Any = None,
        config: TrainConfig | None = None,
        semi: SemiConfig | None = None,
        *,
        no_lesion: Collection[str] = (),
        templates: TemplateLibrary | str | os.PathLike | None = None,
        hooks: Sequence[Callback] = (),
        loss_fn: nn.Module | None = None,
        resume: bool = False,
    ) -> None:
        self.model = model
        self.train_set = train_set
        self.val_set = val_set
        self.text_encoder = text_encoder
        self.config = config if config is not None else TrainConfig()
        self.semi = semi if semi is not None else SemiConfig()
        self.no_lesion = frozenset(no_lesion)
        self.templates = templates
        self.hooks = list(hooks)
        self.loss_fn = loss_fn
        self.resume = bool(resume)
        if self.resume and (self.config.out is None or not self.semi.keep_files):
            raise ValueError(
                "resume=True needs TrainConfig.out and SemiConfig.keep_files (the run's files)"
            )
        self.bank: PseudoLabelBank | None = None
        self.history: list[dict[str, Any]] = []
        self.best_dice: float | None = None
        self.best_round: int | None = None
        self.trainer: EPIRoundTrainer | None = None
        self._cancel = threading.Event()
        self._best_state: dict[str, torch.Tensor] | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._plan = (self.config.epochs, self.config.epochs, int(self.semi.rounds))

    # ------------------------------------------------------------------ public

    def cancel(self) -> None:
        """Stop at the next event (thread-safe); a round in progress stops like the Trainer."""
        self._cancel.set()
        trainer = self.trainer
        if trainer is not None:
            trainer.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> SemiDone:
        """Consume :meth:`fit`; return its :class:`SemiDone`."""
        done = None
        for event in self.fit():
            done = event
        assert isinstance(done, SemiDone)
        return done

    @property
    def labeled_indices(self) -> list[int]:
        return [i for i, h in enumerate(self.train_set.has_mask) if h]

    @property
    def unlabeled_indices(self) -> list[int]:
        return [i for i, h in enumerate(self.train_set.has_mask) if not h]

    def fit(self) -> Iterator[Event | SemiEvent]:
        """Run the rounds; yields round events, bank progress and every trainer event."""
        cfg, semi = self.config, self.semi
        labeled, unlabeled = self.labeled_indices, self.unlabeled_indices
        if not labeled:
            raise ValueError("semi-supervised training needs at least one labeled image")
        unknown = self.no_lesion - set(self.train_set.names)
        if unknown:
            warnings.warn(
                f"no_lesion names not in the training set: {sorted(unknown)[:5]}", stacklevel=2
            )
        device = resolve_device(cfg.device)
        use_text = resolve_use_text(self.model, self.text_encoder, cfg.use_text)
        amp = bool(cfg.amp and device.type == "cuda")
        self.bank = self._open_bank()
        templates = self._load_templates()
        state = self._load_state() if self.resume else None
        if state is None:
            state = {"next_round": 0, "bank_t0": self.bank.t, "ramp_offset": 0.0}
        else:
            self.history = list(state.get("history", []))
            self.best_dice = state.get("best_dice")
            self.best_round = state.get("best_round")
        round0 = cfg.epochs if semi.round0_epochs is None else int(semi.round0_epochs)
        per_round = cfg.epochs if semi.round_epochs is None else int(semi.round_epochs)
        last_round = int(semi.rounds) if unlabeled else 0
        self._plan = (round0, per_round, last_round)
        if not unlabeled and semi.rounds:
            warnings.warn("no unlabeled images: only round 0 (supervised) runs", stacklevel=2)
        rounds_run = 0
        cancelled = False
        try:
            r = int(state["next_round"])
            if self.resume:
                self._restore_carry(r)
            while r <= last_round:
                if self._cancel.is_set():
                    cancelled = True
                    break
                epochs = round0 if r == 0 else per_round
                if epochs == 0:  # round 0 skipped: the model is already trained
                    r += 1
                    state["next_round"] = r
                    continue
                t_round = time.perf_counter()
                change = None
                n_lv = 0
                lv_refs: dict[int, np.ndarray] = {}
                if r >= 1:
                    if self.bank.t < int(state["bank_t0"]) + r:
                        upd = yield from self._update_bank(r, unlabeled, device, use_text, amp)
                        if upd is None:
                            cancelled = True
                            break
                        change = None if math.isnan(upd) else upd
                    lv_refs = self._lv_references(labeled, unlabeled, templates)
                    n_lv = len(lv_refs)
                    keys = bank_keys(self.train_set)
                    missing = [
                        self.train_set.names[i]
                        for i in unlabeled
                        if keys[i] not in self.bank
                        and self.train_set.names[i] not in self.no_lesion
                    ]
                    if missing:
                        raise RuntimeError(f"no pseudo labels for {missing[:3]}")
                    data = _RoundDataset(
                        self.train_set,
                        labeled,
                        unlabeled,
                        self.bank,
                        lv_refs,
                        self.no_lesion,
                        semi.labeled_repeat,
                        semi.unlabeled_jitter,
                    )
                else:
                    data = _RoundDataset(self.train_set, labeled)
                yield RoundStart(
                    round=r,
                    rounds=last_round,
                    epochs=epochs,
                    n_labeled=len(labeled),
                    n_unlabeled=len(unlabeled) if r else 0,
                    pseudo_t=self.bank.t if r else 0,
                    pseudo_change=change,
                    n_lv=n_lv,
                )
                trainer = self._make_trainer(r, data, epochs, float(state["ramp_offset"]))
                keep = trainer.hooks[0]
                self.trainer = trainer
                if self._cancel.is_set():
                    trainer.cancel()
                epoch_rows: list[EpochEnd] = []
                done: TrainingDone | None = None
                for event in trainer.fit():
                    if isinstance(event, EpochEnd):
                        epoch_rows.append(event)
                    if isinstance(event, TrainingDone):
                        done = event
                    yield event
                self.trainer = None
                assert done is not None
                means = _mean_losses(epoch_rows)
                if done.cancelled:
                    cancelled = True
                    yield RoundEnd(
                        round=r,
                        rounds=last_round,
                        epochs_run=done.epochs_run,
                        train_loss=means.pop("loss", float("nan")),
                        losses=means,
                        val_dice=done.best_dice,
                        best_dice=self.best_dice,
                        pseudo_change=change,
                        seconds=time.perf_counter() - t_round,
                        cancelled=True,
                    )
                    break
                improved = self._finish_round(r, trainer, keep, done)
                if r >= 1:
                    state["ramp_offset"] = float(state["ramp_offset"]) + trainer.epoch
                record = {
                    "round": r,
                    "epochs": done.last_epoch,
                    "train_loss": means.get("loss", float("nan")),
                    "losses": {k: v for k, v in means.items() if k != "loss"},
                    "val_dice": done.best_dice,
                    "pseudo_change": change,
                    "pseudo_t": self.bank.t if r else 0,
                    "n_lv": n_lv,
                }
                self.history.append(record)
                rounds_run += 1
                r += 1
                state["next_round"] = r
                self._save_state(state)
                self._cleanup_round_files(r - 2)
                yield RoundEnd(
                    round=r - 1,
                    rounds=last_round,
                    epochs_run=done.epochs_run,
                    train_loss=record["train_loss"],
                    losses=record["losses"],
                    val_dice=done.best_dice,
                    best_dice=self.best_dice,
                    improved=improved,
                    pseudo_change=change,
                    checkpoint=cfg.out if cfg.out and Path(cfg.out).is_file() else None,
                    seconds=time.perf_counter() - t_round,
                )
        finally:
            self.trainer = None
            if not self.semi.keep_files:
                for k in range(last_round + 1):
                    self._cleanup_round_files(k)
            self._load_best_into_model()
            pseudo_dir = str(self.bank.folder) if self.bank is not None else None
            if self._tmpdir is not None:
                self._tmpdir.cleanup()
                self._tmpdir = None
                pseudo_dir = None
        yield SemiDone(
            rounds_run=rounds_run,
            best_dice=self.best_dice,
            best_round=self.best_round,
            cancelled=cancelled,
            checkpoint=cfg.out if cfg.out and Path(cfg.out).is_file() else None,
            pseudo_dir=pseudo_dir,
            history=list(self.history),
        )

    # ------------------------------------------------------------------ pieces

    def _open_bank(self) -> PseudoLabelBank:
        semi = self.semi
        folder: Path | None = None
        if semi.pseudo_dir is not None:
            folder = Path(semi.pseudo_dir)
        elif self.config.out is not None:
            out = Path(self.config.out)
            folder = out.with_name(_stem(out) + ".pseudo")
        elif getattr(self.train_set, "root", None) is not None:
            folder = Path(self.train_set.root) / "pseudo_labels"
        if folder is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="lvit-pseudo-")
            folder = Path(self._tmpdir.name)
        return PseudoLabelBank(
            folder, semi.beta, semi.schedule, semi.bank_dtype, fsync=semi.bank_fsync
        )

    def _load_templates(self) -> TemplateLibrary | None:
        if self.templates is None or self.semi.lv_weight <= 0:
            return None
        if isinstance(self.templates, TemplateLibrary):
            return self.templates
        return load_templates(self.templates, int(self.train_set.img_size))

    def _round_out(self, r: int) -> Path | None:
        if self.config.out is None:
            return None
        out = Path(self.config.out)
        return out.with_name(f"{_stem(out)}.round{r}.safetensors")

    def _state_path(self) -> Path | None:
        if self.config.out is None:
            return None
        out = Path(self.config.out)
        return out.with_name(_stem(out) + ".semi.json")

    def _load_state(self) -> dict[str, Any] | None:
        p = self._state_path()
        if p is None or not p.is_file():
            return None
        return json.loads(p.read_text(encoding="utf-8"))

    def _save_state(self, state: dict[str, Any]) -> None:
        p = self._state_path()
        if p is None or not self.semi.keep_files:
            return
        data = dict(state)
        data.update(
            version=1,
            history=self.history,
            best_dice=self.best_dice,
            best_round=self.best_round,
            semi=self.semi.to_dict(),
            pseudo_dir=str(self.bank.folder) if self.bank is not None else None,
        )
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, default=_json_default), encoding="utf-8")
        os.replace(tmp, p)

    def _restore_carry(self, r: int) -> None:
        """On resume: the weights round ``r`` starts from (unless its own state resumes)."""
        if self._round_resume_path(r) is not None or r == 0:
            return
        prev = self._round_out(r - 1)
        if prev is None:
            return
        if not (self.semi.carry_best and self.val_set is not None):
            prev = last_checkpoint_path(prev)
        if prev.is_file():
            load_weights_into(self.model, prev)

    def _round_resume_path(self, r: int) -> Path | None:
        out = self._round_out(r)
        if out is None or not self.resume:
            return None
        last = last_checkpoint_path(out)
        state = train_state_path(last)
        if not (last.is_file() and state.is_file()):
            return None
        try:
            saved = load_train_state(state).get("extra", {}).get("semi_round")
        except Exception:  # noqa: BLE001 - an unreadable state is simply not resumed
            return None
        return out if saved == r else None

    def _make_trainer(self, r: int, data: Dataset, epochs: int, ramp_offset: float):
        cfg = self.config
        out = self._round_out(r)
        lr = cfg.lr if r == 0 or self.semi.round_lr is None else float(self.semi.round_lr)
        config = dataclasses.replace(
            cfg,
            epochs=int(epochs),
            seed=int(cfg.seed) + 1000 * r,
            out=out,
            lr=lr,
            min_lr=min(cfg.min_lr, lr),
            t0=max(1, min(int(cfg.t0), int(epochs))),
        )
        cls: type[EPIRoundTrainer] = EPIRoundTrainer
        extra: dict[str, Any] = {}
        if self.semi.clcc is not None:
            from src_models.engine.clcc import CLCCRoundTrainer, schedule_total

            round0, per_round, last_round = self._plan
            cls = CLCCRoundTrainer
            extra = {
                "clcc": self.semi.clcc,
                # the contrast -> consistency switch is placed on the whole run, all rounds
                "clcc_offset": 0.0 if r == 0 else float(round0) + ramp_offset,
                "clcc_total": schedule_total(round0, last_round, per_round),
            }
        return cls(
            self.model,
            data,
            self.val_set,
            self.text_encoder,
            config,
            hooks=[_KeepBest(), *self.hooks],
            resume=self._round_resume_path(r),
            loss_fn=self.loss_fn,
            semi=self.semi,
            round_index=r,
            ramp_offset=ramp_offset,
            **extra,
        )

    def _update_bank(self, r, unlabeled, device, use_text, amp):
        """Predict the unlabeled images and EPI-update the bank (a sub-generator).

        Returns the mean absolute change (``nan`` on a bank's first update), or ``None`` if
        cancelled (the bank then keeps its previous labels).
        """
        model = self.model
        was_training = model.training
        model.to(device).eval()
        loader = DataLoader(
            _PlainView(self.train_set, unlabeled),
            batch_size=self.semi.predict_batch_size,
            shuffle=False,
            num_workers=0,
            collate_fn=_plain_collate,
        )
        update = self.bank.begin_update()
        keys = bank_keys(self.train_set)
        total = len(unlabeled)
        done = 0
        try:
            for batch, probs in iter_probs(model, loader, device, self.text_encoder, use_text, amp):
                for j, (name, index) in enumerate(
                    zip(batch["name"], batch["index"].tolist(), strict=True)
                ):
                    if name in self.no_lesion:
                        update.add_empty(keys[index], tuple(probs.shape[-2:]))
                    else:
                        update.add(keys[index], probs[j, 0].cpu().numpy())
                done += len(batch["name"])
                yield PseudoLabelProgress(round=r, done=done, total=total)
                if self._cancel.is_set():
                    update.abort()
                    return None
            change = update.commit()
        except BaseException:
            update.abort()
            raise
        finally:
            model.train(was_training)
        return float("nan") if change is None else change

    def _lv_references(self, labeled, unlabeled, templates) -> dict[int, np.ndarray]:
        """Once per round: for every unlabeled image with a text, the mask of the labeled image
        (or template) with the most similar text. Empty masks are never references."""
        if self.semi.lv_weight <= 0 or self.text_encoder is None:
            return {}
        base = self.train_set
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
        queries = [i for i in unlabeled if base.names[i] not in self.no_lesion]
        if not key_texts or not queries:
            return {}
        match = match_references(self.text_encoder, [texts[i] for i in queries], key_texts)
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

    def _finish_round(self, r: int, trainer: EPIRoundTrainer, keep: _KeepBest, done) -> bool:
        """Carry the round's best (or last) weights; update the best model over all rounds."""
        model = self.model
        last_state = None
        has_val = self.val_set is not None and done.best_dice is not None
        if has_val:
            if not self.semi.carry_best:
                last_state = {k: v.detach().to("cpu", copy=True) for k, v in _sd(model)}
            if keep.state is not None and keep.dice == done.best_dice:
                model.load_state_dict(keep.state)
            elif (out := self._round_out(r)) is not None and out.is_file():
                load_weights_into(model, out)
        dice = done.best_dice
        improved = not has_val or self.best_dice is None or dice > self.best_dice
        if improved:
            self.best_dice = dice if has_val else None
            self.best_round = r
            self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in _sd(model)}
            if self.config.out is not None:
                meta = trainer.checkpoint_meta("best")
                training = meta["training"]
                training["best_dice"] = dice
                training["metrics"] = {"dice": dice} if has_val else {}
                training["semi"] = {
                    "round": r,
                    "rounds": self.semi.rounds,
                    "n_labeled": len(self.labeled_indices),
                    "n_unlabeled": len(self.unlabeled_indices),
                    "pseudo_t": self.bank.t if self.bank is not None else 0,
                    "config": {k: v for k, v in self.semi.to_dict().items() if k != "pseudo_dir"},
                }
                save_checkpoint(self.config.out, model, meta)
        if last_state is not None:
            model.load_state_dict(last_state)
        return improved

    def _cleanup_round_files(self, r: int) -> None:
        out = self._round_out(r) if r >= 0 else None
        if out is None:
            return
        last = last_checkpoint_path(out)
        for p in (out, last, train_state_path(last), train_state_path(out)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def _load_best_into_model(self) -> None:
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        elif self.config.out is not None and Path(self.config.out).is_file() and self.resume:
            with contextlib.suppress(CheckpointError):
                load_weights_into(self.model, self.config.out)
        self.model.eval()


def _plain_collate(batch: Sequence[dict]) -> dict:
    from src_models.data import collate

    return collate(batch)


def _mean_losses(rows: Sequence[EpochEnd]) -> dict[str, float]:
    if not rows:
        return {}
    out: dict[str, float] = {"loss": float(np.mean([r.train_loss for r in rows]))}
    keys = list(dict.fromkeys(k for r in rows for k in r.losses))
    for k in keys:
        out[k] = float(np.mean([r.losses[k] for r in rows if k in r.losses]))
    return out


def _stem(p: Path) -> str:
    return p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.stem


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)

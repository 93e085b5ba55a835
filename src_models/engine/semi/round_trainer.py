"""The trainer of one semi-supervised round: :class:`EPIRoundTrainer` and, with the CLCC terms,
:class:`CLCCRoundTrainer`.

Both are ordinary :class:`~src_models.engine.Trainer` runs that override hooks only: training
items may lack a mask (their ``mask`` is the pseudo label) and the loss adds the unlabeled and
LV terms, weighted by :func:`sigmoid_rampup` (see :mod:`src_models.engine.semi`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from src_models.engine.checkpoint import CheckpointError
from src_models.engine.clcc import CLCCConfig, CLCCMixin, schedule_total
from src_models.engine.evaluate import check_masks
from src_models.engine.events import EpochEnd, Event, TrainingDone
from src_models.engine.semi.config import SemiConfig
from src_models.engine.semi.data import semi_collate
from src_models.engine.semi.events import mean_losses
from src_models.engine.trainer import TrainConfig, Trainer
from src_models.losses._functional import (
    masked_balanced_bce_with_logits,
    masked_soft_dice_loss,
)
from src_models.losses.lv import LVLoss

__all__ = [
    "CLCCRoundTrainer",
    "EPIRoundTrainer",
    "round_config",
    "round_trainer_class",
    "run_trainer",
    "sigmoid_rampup",
]


def sigmoid_rampup(position: float, length: float) -> float:
    """``exp(-5 (1 - x)^2)`` for ``x = position / length`` in [0, 1], 1 after (Laine & Aila)."""
    if length <= 0:
        return 1.0
    x = min(max(float(position) / float(length), 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - x) ** 2))


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
        self.check_texts_and_val_masks()
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

    def compute_loss(self, batch: dict[str, Any], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, logits = self.loss_rows(batch, logits)  # every rank's rows under torchrun
        target = self.targets(batch)
        has = batch.get("has_mask")
        if has is None or self.round_index == 0:
            return self.supervised_terms(logits, target)
        has = has.to(logits.device, torch.bool).reshape(-1)
        if bool(has.any()):
            terms = self.supervised_terms(logits[has], target[has])
        else:  # same names, zero values, graph kept
            terms = {k: v * 0.0 for k, v in self.supervised_terms(logits, target).items()}
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

    def best_of_rounds_meta(self, dice: float | None, has_val: bool, **counts: int) -> dict:
        """``checkpoint_meta("best")`` for the best model over all rounds, saved to the run's
        ``out``: this round's ``dice`` and the run's settings (``counts``: ``n_labeled``,
        ``n_unlabeled``, ``pseudo_t``) under ``training["semi"]``."""
        meta = self.checkpoint_meta("best")
        training = meta["training"]
        training["best_dice"] = dice
        training["metrics"] = {"dice": dice} if has_val else {}
        training["semi"] = {
            "round": self.round_index,
            "rounds": self.semi.rounds,
            **counts,
            "config": {k: v for k, v in self.semi.to_dict().items() if k != "pseudo_dir"},
        }
        return meta

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


class CLCCRoundTrainer(CLCCMixin, EPIRoundTrainer):
    """One EPI round (:class:`EPIRoundTrainer`) plus the CLCC terms (:mod:`src_models.engine.clcc`).

    Extra keyword arguments: ``clcc``, ``clcc_offset``, ``clcc_total`` (see
    :class:`~src_models.engine.clcc.CLCCMixin`).
    """

    def __init__(
        self,
        *args: Any,
        clcc: CLCCConfig | dict | None = None,
        clcc_offset: float = 0.0,
        clcc_total: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._init_clcc(clcc, clcc_offset, clcc_total)


def round_config(
    config: TrainConfig, semi: SemiConfig, r: int, epochs: int, out: Any = None
) -> TrainConfig:
    """The :class:`TrainConfig` of round ``r``: ``epochs`` long, its own seed and checkpoint
    ``out``, ``SemiConfig.round_lr`` in rounds >= 1 (``min_lr`` at most that), the cosine period
    ``t0`` at most the round's length (every round is a warm restart)."""
    lr = config.lr if r == 0 or semi.round_lr is None else float(semi.round_lr)
    return dataclasses.replace(
        config,
        epochs=int(epochs),
        seed=int(config.seed) + 1000 * r,
        out=out,
        lr=lr,
        min_lr=min(config.min_lr, lr),
        t0=max(1, min(int(config.t0), int(epochs))),
    )


def round_trainer_class(
    semi: SemiConfig, r: int, plan: tuple[int, int, int], ramp_offset: float
) -> tuple[type[EPIRoundTrainer], dict[str, Any]]:
    """The trainer class of round ``r`` and its extra keyword arguments.

    With ``SemiConfig.clcc``: :class:`CLCCRoundTrainer`, its contrast -> consistency schedule
    placed on the whole run, all rounds (``plan`` = epochs of round 0, epochs of every later
    round, index of the last round; ``ramp_offset`` = EPI epochs before round ``r``).
    """
    if semi.clcc is None:
        return EPIRoundTrainer, {}
    round0, per_round, last_round = plan
    return CLCCRoundTrainer, {
        "clcc": semi.clcc,
        "clcc_offset": 0.0 if r == 0 else float(round0) + ramp_offset,
        "clcc_total": schedule_total(round0, last_round, per_round),
    }


def run_trainer(trainer: Trainer) -> Generator[Event, None, tuple[TrainingDone, dict[str, float]]]:
    """Run a round's trainer, passing its events on (``done, means = yield from ...``):
    returns its ``TrainingDone`` and the means of the losses of the epochs it ran
    (:func:`mean_losses`; read from its history, which every rank of a torchrun job has)."""
    done: TrainingDone | None = None
    for event in trainer.fit():
        if isinstance(event, TrainingDone):
            done = event
        yield event
    assert done is not None
    ran = trainer.history[len(trainer.history) - trainer.epochs_run :] if trainer.epochs_run else []
    rows = [
        EpochEnd(
            epoch=h["epoch"],
            train_loss=h["train_loss"],
            losses=h["losses"],
            lr=h["lr"],
            seconds=h["seconds"],
        )
        for h in ran
    ]
    return done, mean_losses(rows)

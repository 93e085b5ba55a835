"""The events of semi-supervised retraining and their one-line text (:func:`format_semi_event`).

:meth:`~src_models.engine.semi.SemiTrainer.fit` yields them between the events of every round's
:class:`~src_models.engine.Trainer`: ``RoundStart``, ``PseudoLabelProgress`` (rounds >= 1),
the trainer's events, ``RoundEnd``, ..., ``SemiDone``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from src_models.engine.events import EpochEnd, Event, format_event

__all__ = [
    "PseudoLabelProgress",
    "RoundEnd",
    "RoundStart",
    "SemiDone",
    "SemiEvent",
    "format_semi_event",
    "mean_losses",
]


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


def mean_losses(rows: Sequence[EpochEnd]) -> dict[str, float]:
    """A round's ``EpochEnd`` rows averaged: ``{"loss": mean train loss, term: mean, ...}``
    (``RoundEnd.train_loss`` and ``RoundEnd.losses``); a term averages the epochs that have it."""
    if not rows:
        return {}
    out: dict[str, float] = {"loss": float(np.mean([r.train_loss for r in rows]))}
    keys = list(dict.fromkeys(k for r in rows for k in r.losses))
    for k in keys:
        out[k] = float(np.mean([r.losses[k] for r in rows if k in r.losses]))
    return out

"""Progress events of long jobs: small frozen dataclasses, no Qt, no callbacks required.

A trainer's ``fit()`` yields them; the CLI prints them (:func:`format_event`), the napari widget
turns them into a progress bar and a curve. Epochs are numbered from 1, steps count optimizer
steps since the start of training (1 after the first batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FitStart:
    """Training is set up: totals for progress bars."""

    epochs: int  # the last epoch that will run (unless stopped early)
    start_epoch: int  # first epoch to run (> 1 when resuming)
    steps_per_epoch: int
    n_train: int
    n_val: int
    device: str
    world_size: int = 1


@dataclass(frozen=True)
class BatchEnd:
    """One optimizer step done. ``losses`` holds the named terms whose sum is ``loss``."""

    epoch: int
    step: int
    loss: float
    lr: float
    losses: dict[str, float] = field(default_factory=dict)
    batch: int = 0  # 1-based index of the batch in its epoch
    batches: int = 0  # batches per epoch


@dataclass(frozen=True)
class EpochEnd:
    """Training part of an epoch done (before validation). ``train_loss`` is the epoch mean."""

    epoch: int
    train_loss: float
    losses: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True)
class ValidationEnd:
    """Validation of an epoch: mean per-image Dice and IoU at the threshold.

    ``best`` is the best validation Dice so far (including this one); ``improved`` says whether
    this epoch set it.
    """

    epoch: int
    dice: float
    iou: float
    best: float
    improved: bool = False
    n: int = 0


@dataclass(frozen=True)
class CheckpointSaved:
    """A checkpoint file was written. ``kind`` is ``"best"`` or ``"last"``."""

    path: str
    epoch: int
    dice: float | None
    kind: str = "best"


@dataclass(frozen=True)
class TrainingDone:
    """The end of ``fit()``; always the last event."""

    epochs_run: int  # epochs completed in this call of fit()
    best_dice: float | None  # None without a validation set
    stopped_early: bool
    cancelled: bool
    best_epoch: int | None = None
    last_epoch: int = 0  # the last completed epoch number (counts resumed epochs too)
    checkpoint: str | None = None  # the best (or, without validation, the last) checkpoint


Event = FitStart | BatchEnd | EpochEnd | ValidationEnd | CheckpointSaved | TrainingDone


def format_event(event: Event) -> str:
    """One human-readable line per event (for logs and the CLI)."""
    if isinstance(event, FitStart):
        first = f"epochs {event.start_epoch}-{event.epochs}"
        return (
            f"training {first}: {event.n_train} train / {event.n_val} val images, "
            f"{event.steps_per_epoch} steps per epoch on {event.device}"
            + (f" x {event.world_size} processes" if event.world_size > 1 else "")
        )
    if isinstance(event, BatchEnd):
        terms = " ".join(f"{k} {v:.4f}" for k, v in event.losses.items())
        return (
            f"epoch {event.epoch} batch {event.batch}/{event.batches} step {event.step}: "
            f"loss {event.loss:.4f} ({terms}) lr {event.lr:.2e}"
        )
    if isinstance(event, EpochEnd):
        return (
            f"epoch {event.epoch}: train loss {event.train_loss:.4f} "
            f"lr {event.lr:.2e} ({event.seconds:.1f} s)"
        )
    if isinstance(event, ValidationEnd):
        mark = " (new best)" if event.improved else f" (best {event.best:.4f})"
        return f"epoch {event.epoch}: val Dice {event.dice:.4f} IoU {event.iou:.4f}{mark}"
    if isinstance(event, CheckpointSaved):
        dice = "" if event.dice is None else f" (val Dice {event.dice:.4f})"
        return f"epoch {event.epoch}: saved {event.kind} checkpoint {event.path}{dice}"
    if isinstance(event, TrainingDone):
        how = "cancelled" if event.cancelled else "stopped early" if event.stopped_early else "done"
        best = "" if event.best_dice is None else f", best val Dice {event.best_dice:.4f}"
        if event.best_epoch is not None:
            best += f" at epoch {event.best_epoch}"
        return f"training {how} after {event.epochs_run} epochs{best}"
    return repr(event)

"""The events of a retraining run (:func:`~src_models.project.retrain.retrain`) besides the
engine's own, their JSON form (the ``--jsonl`` lines) and their one-line text."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from src_models.engine.recipe import semi_engine

from .store import json_safe

__all__ = [
    "RetrainDone",
    "RetrainRoundEnd",
    "RetrainRoundStart",
    "RetrainStartProbe",
    "event_to_dict",
    "format_retrain_event",
]


@dataclass(frozen=True)
class RetrainRoundStart:
    """A round was recorded and its data are loaded; the engine starts next."""

    round_id: int
    index: int  # 1-based index of the round in this call
    rounds: int
    n_labeled: int
    n_unlabeled: int
    n_no_lesion: int
    n_val: int
    val_on: str  # "held_out" or "train"
    base: str  # the checkpoint or model it starts from
    engine: str  # "epi" or "supervised", with "+clcc" when the CLCC terms are on
    epochs: int
    skipped: tuple[str, ...] = ()  # samples left out (no text), by name


@dataclass(frozen=True)
class RetrainRoundEnd:
    """A round ended: ``status`` done, cancelled or failed; ``checkpoint`` is set when done.

    ``current`` is False for a done round whose model scored below the one it started from
    (``metrics["start_dice"]`` against ``metrics["best_dice"]``): its file is kept, but the
    project's current checkpoint did not change.
    """

    round_id: int
    index: int
    status: str
    checkpoint: str | None
    metrics: dict[str, Any]
    error: str | None = None
    current: bool = True


@dataclass(frozen=True)
class RetrainStartProbe:
    """A new project's first round probes a start candidate (:mod:`.retrain_start`): sent as
    it begins (``done`` False) and when it ends, with its validation Dice after ``steps``
    steps."""

    round_id: int
    label: str
    base: str
    index: int  # 1-based
    total: int
    dice: float | None
    steps: int
    seconds: float
    done: bool = True


@dataclass(frozen=True)
class RetrainDone:
    """The last event of :func:`retrain`: the overall status and the current checkpoint."""

    status: str
    rounds_done: int
    checkpoint: str | None


def event_to_dict(event: Any) -> dict[str, Any]:
    """A JSON-ready dict ``{"type": <class name>, ...fields}`` of any event dataclass.

    Non-finite floats become ``None``; tuples become lists.
    """
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    else:
        fields = {"value": repr(event)}
    return {"type": type(event).__name__, **json_safe(fields)}


def format_retrain_event(event: Any) -> str:
    """One human-readable line per event."""
    from src_models.engine.events import format_event

    if isinstance(event, RetrainRoundStart):
        return (
            f"round {event.round_id} ({event.index}/{event.rounds}, {event.engine}): "
            f"{event.n_labeled} labelled ({event.n_no_lesion} no lesion), "
            f"{event.n_unlabeled} unlabelled, validation on {event.n_val} "
            f"{'held-out' if event.val_on == 'held_out' else 'training'} samples; "
            f"from {event.base}"
        )
    if isinstance(event, RetrainRoundEnd):
        dice = event.metrics.get("best_dice")
        extra = "" if dice is None else f", best val Dice {dice:.4f}"
        where = f": {event.checkpoint}" if event.checkpoint else ""
        why = f" ({event.error})" if event.error else ""
        if event.status == "done" and not event.current:
            why = (
                f" (below the starting model's {event.metrics['start_dice']:.4f}: "
                "the current model stays)"
            )
        return f"round {event.round_id} {event.status}{extra}{where}{why}"
    if isinstance(event, RetrainStartProbe):
        if not event.done:
            return f"round {event.round_id} start probe {event.index}/{event.total}: {event.base}"
        dice = "no validation" if event.dice is None else f"val Dice {event.dice:.4f}"
        return (
            f"round {event.round_id} start probe {event.index}/{event.total}: {event.base}, "
            f"{dice} after {event.steps} steps ({event.seconds:.0f} s)"
        )
    if isinstance(event, RetrainDone):
        return f"retraining {event.status} after {event.rounds_done} round(s); current model: " + (
            event.checkpoint or "none"
        )
    semi = semi_engine()
    module = type(event).__module__
    if semi is not None and (module == semi.__name__ or module.startswith(semi.__name__ + ".")):
        return semi.format_semi_event(event)
    return format_event(event)

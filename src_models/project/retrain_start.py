"""Where a new project's first round starts, chosen by evidence.

A project without a model of its own could start from the configured model (the shipped
default, trained on synthetic chest X-rays), from a fresh model of the same architecture, or
from one whose image encoder was pretrained on the project's own images (``napari-lvit pretrain
DATA --out PROJECT/checkpoints/pretrained.safetensors``). Which one learns a project fastest is
not known in advance: on H&E tissue the chest X-ray start is worse than a random one. So the
first round trains every candidate for a short probe (``PROBE_SHARE`` of the round's steps, at
least one validation period) on the round's labelled data, scores each on the round's
validation set, and goes on from the best (with its probe training, when the round is
supervised). The scores are in the round's metrics (``start_probe``). Rounds of a project that
has a current model start from it, as before.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import torch

from .retrain_events import RetrainStartProbe
from .store import Project

__all__ = [
    "PRETRAINED_NAME",
    "PROBE_SHARE",
    "StartCandidate",
    "probe_starts",
    "start_candidates",
]

#: A project's pretrained encoder, used as a start candidate when the file exists.
PRETRAINED_NAME = "pretrained.safetensors"
#: Share of a round's optimizer steps each candidate trains for in the probe.
PROBE_SHARE = 1 / 6


@dataclass
class StartCandidate:
    """One possible start: a model (trained in place by the probe) and how it is described."""

    label: str  # "configured", "fresh" or "pretrained"
    model: Any
    meta: dict[str, Any]
    base: str  # for people, as RoundPlan.base
    base_is_new: bool
    lr: float  # what it trains at, in the probe and after it
    lr_rule: str


def start_candidates(project: Project, cfg: Any, plan: Any) -> list[StartCandidate]:
    """The starts to probe in this round: none (start as planned) unless ``cfg.start`` is
    ``"auto"`` and the project has no current model; then the planned one, a fresh model of its
    architecture (unless the planned one is fresh already) and the project's pretrained encoder
    in a fresh model (when ``checkpoints/pretrained.safetensors`` exists)."""
    if cfg.start != "auto" or project.current_checkpoint is not None:
        return []
    from .retrain_sizing import step_round_lr

    train, sizing = plan.recipe.train, plan.sizing
    rule = sizing.lr_rule if sizing is not None else "as configured"
    planned = StartCandidate(
        "configured", plan.model, plan.meta, plan.base, plan.base_is_new, train.lr, rule
    )
    # a new model learns at the rate of a new model (a round sized in epochs has one rate)
    new_lr = step_round_lr(cfg, False) if sizing is not None and sizing.steps else (train.lr, rule)
    out = [planned]
    if not plan.base_is_new:
        out.append(_fresh(plan, cfg.seed, "fresh", new_lr))
    pretrained = project.folder / "checkpoints" / PRETRAINED_NAME
    if pretrained.is_file():
        from src_models.engine.pretrain import load_pretrained_encoder

        candidate = _fresh(plan, cfg.seed, "pretrained", new_lr)
        load_pretrained_encoder(candidate.model, pretrained)
        candidate.base = f"{candidate.base} with checkpoints/{PRETRAINED_NAME}"
        candidate.base_is_new = True  # its decoder is untrained
        out.append(candidate)
    return out if len(out) > 1 else []


def _fresh(plan: Any, seed: int, label: str, lr: tuple[float, str]) -> StartCandidate:
    from src_models.models import create_model

    name = plan.meta["model_name"]
    config = dict(plan.meta.get("model_config") or {})
    # prompt inputs only where the round trains them: an untrained adapter would take clicks
    # and ignore them
    config["prompts"] = bool(plan.recipe.train.clicks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = create_model(name, **config)
    meta = {"model_name": name, "model_config": model.model_config, "threshold": 0.5}
    if plan.meta.get("text_encoder"):
        meta["text_encoder"] = plan.meta["text_encoder"]
    size = int(model.img_size)
    return StartCandidate(label, model, meta, f"{name} (new, {size} px)", True, *lr)


def probe_epochs(plan: Any) -> int:
    """Epochs over the labelled set that each candidate trains in the probe: ``PROBE_SHARE`` of
    the round's planned optimizer steps, at least one epoch."""
    batch = int(plan.recipe.train.batch_size)

    def steps_per_epoch(dataset: Any) -> int:
        return max(1, math.ceil(len(dataset) / batch))

    planned = plan.sizing.steps if plan.sizing is not None else None
    if not planned:  # an epoch-counted round
        planned = int(plan.recipe.train.epochs) * steps_per_epoch(plan.train_set)
    probe_steps = max(1, round(planned * PROBE_SHARE))
    return max(1, round(probe_steps / steps_per_epoch(plan.labeled_set)))


def probe_starts(
    candidates: list[StartCandidate],
    plan: Any,
    round_id: int,
    on_trainer: Callable[[Any], None],
) -> Generator[Any, None, tuple[StartCandidate, dict[str, Any]]]:
    """Train each candidate :func:`probe_epochs` supervised epochs on the round's labelled data
    (``plan.labeled_set``) and score it on the validation set; returns the best candidate
    (first on ties, so the configured one) and the record for the round's metrics. The winner
    keeps its probe training when the round is supervised too (``record["kept_training"]``);
    before an EPI or CLCC round it goes back to its starting weights, so that the round trains
    it as it would have without a probe (a supervised detour on the few labelled images would
    change the pseudo labels EPI starts from). Yields each
    probe's ``FitStart`` and ``BatchEnd`` (for progress bars) and a :class:`RetrainStartProbe`
    as each candidate begins and ends. ``on_trainer`` receives each probe's trainer (``None``
    after it), so that a cancel reaches it."""
    from src_models.engine.callbacks import cpu_state_dict
    from src_models.engine.events import BatchEnd, FitStart, TrainingDone
    from src_models.engine.recipe import TrainingRecipe, build_trainer

    base = plan.recipe.train
    epochs = probe_epochs(plan)
    keep = plan.recipe.semi is None and plan.recipe.clcc is None
    scores: list[tuple[float, int, StartCandidate]] = []
    initial: dict[int, Any] = {}
    record: dict[str, Any] = {"epochs": epochs, "kept_training": keep, "candidates": []}
    for index, candidate in enumerate(candidates, start=1):
        t0 = time.perf_counter()
        if not keep:
            initial[index] = cpu_state_dict(candidate.model)
        lr = float(candidate.lr)
        train = dataclasses.replace(
            base,
            epochs=epochs,
            t0=epochs,
            lr=lr,
            min_lr=lr * base.min_lr / base.lr,
            out=None,
            save_last=False,
        )
        recipe = TrainingRecipe(train)  # supervised: EPI, CLCC and SKS run in the round itself
        total = len(candidates)
        yield RetrainStartProbe(
            round_id, candidate.label, candidate.base, index, total, None, 0, 0.0, done=False
        )
        trainer = build_trainer(
            candidate.model, plan.labeled_set, plan.val_set, plan.encoder, recipe
        )
        on_trainer(trainer)
        dice, steps, cancelled = None, 0, False
        for event in trainer.fit():
            if isinstance(event, (FitStart, BatchEnd)):
                steps += isinstance(event, BatchEnd)
                yield event
            elif isinstance(event, TrainingDone):
                dice, cancelled = event.best_dice, event.cancelled
        on_trainer(None)
        seconds = time.perf_counter() - t0
        record["candidates"].append(
            {
                "label": candidate.label,
                "base": candidate.base,
                "lr": lr,
                "dice": dice,
                "steps": steps,
                "seconds": seconds,
            }
        )
        yield RetrainStartProbe(
            round_id, candidate.label, candidate.base, index, total, dice, steps, seconds
        )
        if cancelled:
            break
        scores.append((-1.0 if dice is None else float(dice), index, candidate))
    _, index, best = max(scores, key=lambda s: s[0]) if scores else (0, 1, candidates[0])
    if not keep and index in initial:
        best.model.load_state_dict(initial[index])
    record["chosen"] = best.label
    record["seconds"] = sum(c["seconds"] for c in record["candidates"])
    return best, record

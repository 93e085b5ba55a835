"""How big a retraining round is and at which working resolution it trains: the resolution
(chosen from the project's labelled images, or configured), the optimizer steps for the number
of corrections within the time budget, the batch size and the learning rate. An explicit
``epochs`` keeps the epoch-counted round of before."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .retrain_config import RetrainConfig
from .store import Project

__all__ = ["RoundSizing", "choose_round_resolution", "size_round", "step_round_lr"]


@dataclass
class RoundSizing:
    """How big a round is and at which resolution it works (see :mod:`src_models.data.patches`).

    ``steps``: the planned optimizer steps (``None``: an epoch-counted round, ``cfg.epochs``);
    ``lr``/``min_lr``/``batch_size``: what the engine gets; ``lr_rule`` says why.
    """

    resolution: Any  # WorkingResolution
    resolution_from: str  # "chosen" or "config"
    steps: int | None
    epochs: int
    batch_size: int
    lr: float
    min_lr: float
    samples_per_epoch: int | None = None  # patches mode
    lr_rule: str = "config"
    step_cap: int | None = None
    s_per_step: float | None = None
    not_in_patch_mode: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "working_resolution": self.resolution.to_dict(),
            "plan": {
                "resolution_from": self.resolution_from,
                "steps": self.steps,
                "epochs": self.epochs,
                "batch_size": self.batch_size,
                "lr": self.lr,
                "min_lr": self.min_lr,
                "lr_rule": self.lr_rule,
                "samples_per_epoch": self.samples_per_epoch,
                "step_cap": self.step_cap,
                "s_per_step_before": self.s_per_step,
            },
        }
        if self.not_in_patch_mode:
            out["not_in_patch_mode"] = list(self.not_in_patch_mode)
        return out


def choose_round_resolution(
    cfg: RetrainConfig,
    shapes: list[tuple[int, int]],
    masks: list[np.ndarray | None],
    texts: list[str],
    size: int,
    kept: dict[str, Any] | None = None,
    kept_from: int | None = None,
) -> tuple[Any, str]:
    """The round's :class:`~src_models.data.resolution.WorkingResolution` and where it came
    from: ``cfg.resolution`` ("whole" / "patches", with ``cfg.resolution_scale``), else the
    project's own (``kept``, chosen in an earlier round from ``kept_from`` labelled images for a
    model of this size: a project keeps its resolution, so a round fine-tunes the last one's
    model instead of relearning at another scale, until it has twice as many labelled images
    to choose from), else :func:`~src_models.data.resolution.choose_resolution` over the
    labelled images, unless the kept one :func:`~src_models.data.resolution.still_suits` them
    (``"kept"``: confirmed on the new evidence)."""
    from src_models.data.resolution import WorkingResolution, choose_resolution, still_suits

    if cfg.resolution == "whole":
        return WorkingResolution.whole(size), "config"
    res = None
    more_evidence = kept_from is None or len(shapes) >= 2 * int(kept_from)
    if cfg.resolution == "auto" and not more_evidence:
        res = _kept(kept, size)
    how = "project"
    if res is None:
        res, how = choose_resolution(shapes, texts, size, masks), "chosen"
        old = _kept(kept, size) if cfg.resolution == "auto" else None
        if old is not None and old != res and still_suits(old, shapes, texts, masks):
            res, how = old, "kept"  # confirmed on the new evidence
    if cfg.resolution == "patches" and res.is_whole:
        res, how = WorkingResolution("patches", size, 1.0), "config"
    if not res.is_whole and cfg.resolution_scale is not None:
        res, how = WorkingResolution("patches", size, float(cfg.resolution_scale)), "config"
    return res, how


def _kept(kept: dict[str, Any] | None, size: int) -> Any:
    """The project's stored working resolution, if it was chosen for a model of ``size``."""
    from src_models.data.resolution import WorkingResolution

    if not isinstance(kept, dict):
        return None
    try:
        res = WorkingResolution.from_dict(kept)
    except (TypeError, ValueError):
        return None
    return res if res.patch == size else None


def previous_s_per_step(project: Project) -> float | None:
    """Seconds per optimizer step of the project's last round that measured it."""
    for r in reversed(project.rounds()):
        value = (r.metrics or {}).get("s_per_step")
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None


def trained_resolution(meta: dict[str, Any], size: int, base_is_new: bool) -> Any:
    """The working resolution the starting model was trained at (``None``: untrained)."""
    from src_models.data.resolution import WorkingResolution

    if base_is_new:
        return None
    stored = meta.get("working_resolution")
    if isinstance(stored, dict):
        try:
            return WorkingResolution.from_dict(stored)
        except (TypeError, ValueError):
            return None
    return WorkingResolution.whole(size)  # checkpoints before working resolutions: whole


#: Batch size and learning rate of an epoch-counted round (the settings before rounds were
#: sized in steps), and the batch size of a step-sized one; a configured value wins.
EPOCH_ROUND_BATCH, EPOCH_ROUND_LR, STEP_ROUND_BATCH = 2, 3e-4, 4
#: Optimizer steps in one "epoch" of patches (validation runs after each).
PATCH_EPOCH_STEPS = 50


def step_round_lr(cfg: RetrainConfig, same_resolution: bool) -> tuple[float, str]:
    """The learning rate of a round sized in steps, and why: ``cfg.lr``, else 3e-4 to fine-tune
    a model trained at the round's resolution, else 1e-3."""
    if cfg.lr is not None:
        return float(cfg.lr), "as configured"
    if same_resolution:
        return 3e-4, "3e-4: the starting model was trained at this resolution"
    return 1e-3, "1e-3: the starting model is new or was trained at another resolution"


def size_round(
    cfg: RetrainConfig,
    res: Any,
    how: str,
    *,
    n_labeled: int,
    n_train: int,
    start_resolution: Any,
    s_per_step: float | None,
) -> RoundSizing:
    """Steps, epochs, batch and learning rate of a round. An explicit ``cfg.epochs`` keeps the
    epoch-counted round at ``cfg.lr``; else ``cfg.steps`` or
    :func:`~src_models.data.patches.steps_for` (capped by ``cfg.time_budget_s`` at the last
    round's seconds per step), batch ``cfg.batch_size`` or 4, ``cfg.lr`` or else 3e-4 when the
    starting model was trained at this resolution and 1e-3 otherwise, one cosine decay to lr / 10.
    """
    from src_models.data.resolution import steps_for

    if cfg.epochs is not None:
        batch = cfg.batch_size or EPOCH_ROUND_BATCH
        lr = EPOCH_ROUND_LR if cfg.lr is None else cfg.lr
        spe = None if res.is_whole else PATCH_EPOCH_STEPS * batch
        return RoundSizing(res, how, None, int(cfg.epochs), batch, lr, min(cfg.min_lr, lr), spe)
    cap = None
    if s_per_step and cfg.time_budget_s > 0:
        cap = max(1, int(cfg.time_budget_s / s_per_step))
    steps = int(cfg.steps) if cfg.steps is not None else steps_for(n_labeled, maximum=cap)
    lr, rule = step_round_lr(cfg, start_resolution is not None and start_resolution == res)
    batch = int(cfg.batch_size or STEP_ROUND_BATCH)
    if res.is_whole:
        epochs = max(1, math.ceil(steps * batch / max(n_train, 1)))
        spe = None
    else:  # an "epoch" of patches: the unit of validation and progress events
        epochs = max(1, math.ceil(steps / PATCH_EPOCH_STEPS))
        spe = min(steps, PATCH_EPOCH_STEPS) * batch
    return RoundSizing(res, how, steps, epochs, batch, lr, lr / 10, spe, rule, cap, s_per_step)

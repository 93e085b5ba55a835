"""One retraining round's plan: what it starts from (the project's current checkpoint, else the
configured model), which samples it trains and validates on, the engine configs it hands to
:func:`~src_models.engine.recipe.build_trainer`, and how the engine's events fold into the
round's metrics."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from src_models.engine.recipe import TrainingRecipe, is_sks, semi_engine
from src_models.model_source import OpenedModel, open_model

from .project_dataset import (
    ProjectDataset,
    common_window,
    load_full_resolution,
    split_validation,
)
from .pseudo_review import ACCEPTED_KIND
from .records import TrainingItem
from .retrain_config import RetrainConfig, RetrainError
from .retrain_events import RetrainRoundStart
from .retrain_sizing import (
    RoundSizing,
    choose_round_resolution,
    previous_s_per_step,
    size_round,
    trained_resolution,
)
from .store import Project

__all__ = [
    "PLAN_META_KEYS",
    "FitLog",
    "RoundPlan",
    "RoundSamples",
    "plan_round",
    "round_recipe",
    "validation_dice",
    "worse",
]


@dataclass
class RoundPlan:
    """What a round trains: its base model, samples, datasets and recipe (all built before the
    engine starts)."""

    model: Any
    meta: dict[str, Any]
    base: str  # the checkpoint or model it starts from, for people
    base_is_new: bool  # untrained (or only pretrained): no bar to clear, EPI starts with round 0
    encoder: Any
    samples: RoundSamples
    recipe: TrainingRecipe
    train_set: Any
    val_set: Any
    sizing: RoundSizing | None = None
    #: builds the labelled part of ``train_set`` when that holds unlabelled samples too (only
    #: a start probe needs it, so it is read on first use); ``None``: all of it is labelled
    labeled_builder: Callable[[], Any] | None = None
    _labeled: Any = field(default=None, repr=False)

    @property
    def labeled_set(self) -> Any:
        """The labelled samples of ``train_set`` as a dataset (what a start probe trains on)."""
        if self.labeled_builder is None:
            return self.train_set
        if self._labeled is None:
            self._labeled = self.labeled_builder()
        return self._labeled

    def summary(self) -> dict[str, Any]:
        """The round's metrics once it is planned (``trainer``: the configs of the engine)."""
        s = self.samples
        return {
            "state": "training",
            "engine": self.recipe.engine,
            "base": self.base,
            "val_on": s.val_on,
            "n_train": len(s.train),
            "n_val": len(s.val),
            "n_unlabeled": len(s.unlabeled),
            "model": self.meta.get("model_name"),
            "img_size": int(self.model.img_size),
            "trainer": self.recipe.to_dict(),
            **({} if self.sizing is None else self.sizing.summary()),
        }

    def start_from(self, start: Any, trained_epochs: int) -> None:
        """Go on from ``start`` (a :class:`~.retrain_start.StartCandidate`, whose probe
        training of ``trained_epochs`` epochs of this round is kept; 0: none is): its model and
        description, at its learning rate, for the rest of the round's epochs."""
        self.model, self.meta = start.model, start.meta
        self.base, self.base_is_new = start.base, start.base_is_new
        train = self.recipe.train
        epochs = max(1, int(train.epochs) - int(trained_epochs))
        lr = float(start.lr)
        train = dataclasses.replace(
            train, epochs=epochs, t0=epochs, lr=lr, min_lr=lr * train.min_lr / train.lr
        )
        semi = self.recipe.semi
        if semi is not None:
            # a new model gets its supervised round 0 first, as in round_recipe
            round0 = epochs if start.base_is_new else 0
            semi = dataclasses.replace(semi, round0_epochs=round0, round_epochs=epochs)
        self.recipe = dataclasses.replace(self.recipe, train=train, semi=semi)
        if self.sizing is not None:
            self.sizing.epochs, self.sizing.lr, self.sizing.min_lr = epochs, lr, train.min_lr
            self.sizing.lr_rule = start.lr_rule

    def start_event(self, round_id: int, index: int, cfg: RetrainConfig) -> RetrainRoundStart:
        s = self.samples
        return RetrainRoundStart(
            round_id=round_id,
            index=index,
            rounds=cfg.rounds,
            n_labeled=len(s.labeled),
            n_unlabeled=len(s.unlabeled),
            n_no_lesion=sum(1 for it in s.labeled if it.kind == "no_lesion"),
            n_val=len(s.val),
            val_on=s.val_on,
            base=self.base,
            engine=self.recipe.engine
            + (
                ", patches (no " + ", ".join(self.sizing.not_in_patch_mode) + ")"
                if self.sizing is not None and self.sizing.not_in_patch_mode
                else ""
            ),
            epochs=int(self.recipe.train.epochs),
            skipped=tuple(s.skipped),
        )


@dataclass
class RoundSamples:
    """The samples of a round: labelled ones split into ``train``/``val``, and the unlabelled
    ones that join the training set (with EPI or CLCC; else none)."""

    labeled: list[TrainingItem]
    unlabeled: list[TrainingItem]
    skipped: list[str]  # labelled samples left out (no text, for a text model), by name
    use_semi: bool
    train: list[TrainingItem]
    val: list[TrainingItem]
    val_on: str  # "held_out" or "train"


def _base_model(project: Project, cfg: RetrainConfig) -> tuple[OpenedModel, str]:
    """What the round starts from, and its description: the project's current checkpoint
    (unless ``from_scratch``), else ``cfg.model`` (:func:`~src_models.model_source.open_model`)."""
    current = None if cfg.from_scratch else project.current_checkpoint
    if current is not None and current.is_file():
        opened = open_model(current, kinds=("checkpoint",))
    else:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # a new model starts alike in every run with this seed
            opened = open_model(cfg.model, text_encoder=cfg.text_encoder, img_size=cfg.img_size)
    if opened.new:
        name, size = opened.meta["model_name"], int(opened.model.img_size)
        return opened, f"{name} (new, {size} px)"
    return opened, _describe(project, opened.checkpoint)


def _describe(project: Project, path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(project.folder).as_posix()
    except ValueError:
        return str(path)


def _with_text(items: list[TrainingItem]) -> list[TrainingItem]:
    return [it for it in items if it.text and it.text.strip()]


def _item_name(item: TrainingItem) -> str:
    return item.image.name if item.slice is None else f"{item.image.name}[z={item.slice}]"


def _samples(
    cfg: RetrainConfig,
    labeled: list[TrainingItem],
    unlabeled: list[TrainingItem],
    uses_text: bool,
) -> RoundSamples:
    skipped: list[str] = []
    if uses_text:
        kept = _with_text(labeled)
        skipped = [_item_name(it) for it in labeled if it not in kept]
        labeled = kept
        if not labeled:
            raise RetrainError("every labelled image lacks a description; this model reads text")
        unlabeled = _with_text(unlabeled)
    semi = semi_engine() if cfg.semi != "off" else None
    if cfg.semi == "epi" and semi is None:
        raise RetrainError("semi='epi' asked for, but the EPI engine is not installed")
    use_semi = semi is not None and bool(unlabeled)
    # accepted pseudo labels train but never validate: a round would be scored on the model's
    # own predictions (and so would the check against the current model)
    accepted = [it for it in labeled if it.kind == ACCEPTED_KIND]
    by_hand = [it for it in labeled if it.kind != ACCEPTED_KIND] or accepted
    train, val, val_on = split_validation(by_hand, cfg.val_fraction, cfg.min_val)
    if by_hand is not accepted:
        train = train + accepted
    # with EPI or CLCC, the unlabelled samples join the training set (has_mask False)
    if not (use_semi or cfg.clcc):
        unlabeled = []
    return RoundSamples(labeled, unlabeled, skipped, use_semi, train, val, val_on)


#: The project meta a round's plan reads and then rewrites (the working resolution).
PLAN_META_KEYS = ("working_resolution", "resolution_from_n")


def plan_round(
    project: Project,
    cfg: RetrainConfig,
    round_id: int,
    work: Path,
    labeled: list[TrainingItem],
    unlabeled: list[TrainingItem],
) -> RoundPlan:
    """The base model, samples, recipe and datasets of round ``round_id`` (writing ``work``)."""
    opened, base = _base_model(project, cfg)
    model, meta = opened.model, opened.meta
    clicks = round_clicks(cfg, model)
    # a `napari-lvit pretrain` checkpoint has a trained encoder but an untrained decoder
    base_is_new = opened.new or (meta.get("training") or {}).get("kind") == "pretrain"
    uses_text = bool(getattr(model, "uses_text", False))
    encoder = opened.text_encoder
    if uses_text and encoder is None:
        from src_models.text import TextEncoder

        encoder = TextEncoder(meta.get("text_encoder") or cfg.text_encoder)
    samples = _samples(cfg, labeled, unlabeled, uses_text)
    size = int(model.img_size)
    in_chans = int(getattr(model, "in_chans", 3) or 3)
    # the resolution needs the sizes and masks only; images are read at full size for patches
    shapes = [tuple(it.image.shape[-2:]) for it in samples.labeled]
    masks = [it.load_mask() for it in samples.labeled]
    texts = [it.text or "" for it in samples.labeled]
    kept, kept_from = (project.get_meta(k) for k in PLAN_META_KEYS)
    res, how = choose_round_resolution(cfg, shapes, masks, texts, size, kept, kept_from)
    project.set_meta("working_resolution", res.to_dict())
    if how in ("chosen", "kept"):  # the evidence was weighed at this many labelled images
        project.set_meta("resolution_from_n", len(shapes))
    skip: list[str] = []
    if not res.is_whole:
        # EPI, CLCC and SKS stage 1 work on whole images: a patch round trains supervised only
        if samples.use_semi:
            skip.append("EPI")
        if cfg.clcc:
            skip.append("CLCC")
        if is_sks(model):
            skip.append("SKS stage 1")
        samples = RoundSamples(
            samples.labeled, [], samples.skipped, False, samples.train, samples.val, samples.val_on
        )
    sizing = size_round(
        cfg,
        res,
        how,
        n_labeled=len(samples.labeled),
        n_train=len(samples.train) + len(samples.unlabeled),
        start_resolution=trained_resolution(meta, size, base_is_new),
        s_per_step=previous_s_per_step(project),
    )
    sizing.not_in_patch_mode = skip
    recipe = round_recipe(
        cfg,
        round_id=round_id,
        use_semi=samples.use_semi,
        base_is_new=base_is_new,
        sks=is_sks(model) and res.is_whole,
        use_text=uses_text,
        threshold=float(meta.get("threshold", 0.5) or 0.5),
        out=work,
        pseudo_dir=project.folder / "pseudo" / "epi",
        sizing=sizing,
        clcc=cfg.clcc and res.is_whole,
        clicks=clicks,
    )
    labeled = None
    if res.is_whole:
        train_set = ProjectDataset(
            samples.train + samples.unlabeled,
            size,
            augment=cfg.augment,
            seed=cfg.seed + round_id,
            in_chans=in_chans,
        )
        val_set = ProjectDataset(samples.val, size, in_chans=in_chans)
        if samples.unlabeled:
            labeled = functools.partial(
                ProjectDataset,
                samples.train,
                size,
                augment=cfg.augment,
                seed=cfg.seed + round_id,
                in_chans=in_chans,
            )
    else:
        full = load_full_resolution(samples.labeled)
        train_set, val_set = _patch_sets(cfg, samples, full, res, sizing, round_id, in_chans)
    return RoundPlan(
        model,
        meta,
        base,
        base_is_new,
        encoder,
        samples,
        recipe,
        train_set,
        val_set,
        sizing,
        labeled,
    )


def _patch_sets(cfg, samples: RoundSamples, full, res, sizing: RoundSizing, round_id, in_chans):
    """Training (random patches, half on foreground, colour augmentation) and validation (a
    grid of patches) sets of a patch-mode round, from the full-resolution labelled samples."""
    from src_models.data.patches import GridPatchDataset, PatchDataset

    index = {id(it): i for i, it in enumerate(samples.labeled)}

    def pick(items: list[TrainingItem]):
        ids = [index[id(it)] for it in items]
        return [[part[i] for i in ids] for part in full]

    images, masks, texts, names = pick(samples.train)
    train_set = PatchDataset(
        images,
        masks,
        texts,
        res,
        samples_per_epoch=sizing.samples_per_epoch,
        fg_fraction=0.5,
        augment=cfg.augment,
        color=1.0 if cfg.augment else 0.0,
        seed=cfg.seed + round_id,
        in_chans=in_chans,
        names=names,
        window=common_window(samples.labeled),  # the checkpoint records it
    )
    images, masks, texts, names = pick(samples.val)
    val_set = GridPatchDataset(images, masks, texts, res, in_chans=in_chans, names=names)
    return train_set, val_set


def round_recipe(
    cfg: RetrainConfig,
    *,
    round_id: int = 0,
    use_semi: bool,
    base_is_new: bool,
    sks: bool,
    use_text: bool,
    threshold: float,
    out: str | os.PathLike | None,
    pseudo_dir: str | os.PathLike,
    sizing: RoundSizing | None = None,
    clcc: bool | None = None,
    clicks: int = 0,
) -> TrainingRecipe:
    """The engine configs of a project round: ``cfg.epochs`` epochs at ``cfg.lr`` in one cosine
    cycle, no early stopping; with EPI one EPI update + those epochs per project round (a new,
    untrained model first gets a supervised round 0; the pseudo-label bank lives in the project,
    so EPI averages across project rounds); SKS models first refresh their lesion classifier on
    the image-level labels (committed masks, one-click "no lesion")."""
    from src_models.engine.sks import ClassifierConfig
    from src_models.engine.trainer import TrainConfig

    if sizing is None:  # an epoch-counted round as configured
        from src_models.data.resolution import WorkingResolution

        sizing = size_round(
            cfg,
            WorkingResolution.whole(cfg.img_size or 128),
            "config",
            n_labeled=1,
            n_train=1,
            start_resolution=None,
            s_per_step=None,
        )
    epochs = int(sizing.epochs)
    train = TrainConfig(
        epochs=epochs,
        batch_size=sizing.batch_size,
        lr=sizing.lr,
        min_lr=sizing.min_lr,
        t0=max(epochs, 1),
        patience=10**6,
        seed=cfg.seed + round_id,
        device=cfg.device,
        use_text=use_text,
        out=None if out is None else str(out),
        save_last=False,
        threshold=threshold,
        clicks=int(clicks),
    )
    clcc = semi = classifier = None
    if cfg.clcc if clcc is None else clcc:
        from src_models.engine.clcc import CLCCConfig

        clcc = CLCCConfig(grid=int(cfg.clcc_grid))
    if use_semi:
        options = {
            "rounds": 1,
            "round0_epochs": epochs if base_is_new else 0,
            "round_epochs": epochs,
            "pseudo_dir": str(pseudo_dir),
            "clcc": clcc,
            **cfg.semi_options,
        }
        semi = semi_engine().SemiConfig(**options)
    if sks:
        classifier = ClassifierConfig(
            epochs=epochs, batch_size=max(2, sizing.batch_size), seed=cfg.seed, device=cfg.device
        )
    return TrainingRecipe(train, semi=semi, clcc=clcc, classifier=classifier)


def round_clicks(cfg: RetrainConfig, model: Any) -> int:
    """The round's simulated clicks per batch (``cfg.clicks``, none by default); a model that
    is to learn them gets its prompt inputs (:func:`~src_models.models.prompts.add_prompt_inputs`,
    starting at zero). The pseudo-labelled images of an EPI round get clicks from their pseudo
    labels. Not by default, even for a model that reads clicks: the simulated passes made a
    MoNuSeg round of 90 s do 100-200 steps instead of 200-300, and cost it 0.05-0.11 Dice
    (benchmarks/bench_loop.py --clicks)."""
    from src_models.models.prompts import add_prompt_inputs, reads_prompts

    clicks = int(cfg.clicks or 0)
    if clicks and not reads_prompts(model):
        add_prompt_inputs(model)
    return clicks


def validation_dice(model, val_set, encoder, config) -> float | None:
    from src_models.engine.evaluate import evaluate

    report = evaluate(
        model,
        val_set,
        encoder,
        device=config.device,
        threshold=config.threshold,
        batch_size=config.val_batch_size,
        use_text=config.use_text,
        amp=config.amp,
    )
    dice = float(report["dice"])
    return dice if np.isfinite(dice) else None


def worse(metrics: dict[str, Any]) -> bool:
    """Did the round's best validation Dice fall below its starting model's? (A tie is not
    worse: the new model has seen the newer commits.)"""
    start, best = metrics.get("start_dice"), metrics.get("best_dice")
    return start is not None and best is not None and best < start


class FitLog:
    """Folds the engine's events into a round's metrics (the per-epoch curve, best Dice, ...)."""

    def __init__(self, metrics: dict[str, Any], done_type: str) -> None:
        self.metrics = metrics
        self.epochs: list[dict[str, Any]] = metrics["epochs"]
        self.done_type = done_type
        self.steps = 0
        self.seconds = 0.0

    def record(self, event: Any) -> bool:
        """Update the metrics from ``event``; True when they should be saved now."""
        from src_models.engine.events import (
            BatchEnd,
            EpochEnd,
            FitStart,
            TrainingDone,
            ValidationEnd,
        )

        m = self.metrics
        if isinstance(event, FitStart):
            m["steps_per_epoch"] = event.steps_per_epoch
            m["device"] = event.device
        elif isinstance(event, BatchEnd):
            self.steps += 1
        elif isinstance(event, EpochEnd):
            self.seconds += event.seconds
            row = {"epoch": len(self.epochs) + 1, "train_loss": event.train_loss}
            self.epochs.append({**row, "seconds": event.seconds})
            m["steps"] = self.steps
            m["s_per_step"] = self.seconds / max(self.steps, 1)
            return True
        elif isinstance(event, ValidationEnd):
            if self.epochs:
                self.epochs[-1].update(val_dice=event.dice, val_iou=event.iou)
            best = m.get("best_dice")
            m["best_dice"] = event.dice if best is None else max(best, event.dice)
            return True
        elif type(event).__name__ == self.done_type:
            m["best_dice"] = event.best_dice
            m["completed"] = not event.cancelled
            if isinstance(event, TrainingDone):
                m["best_epoch"] = event.best_epoch
        return False

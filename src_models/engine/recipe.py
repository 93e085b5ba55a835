"""The training recipe: SKS stage 1, then EPI, CLCC or plain training, chosen in one place.

A :class:`TrainingRecipe` holds the configs a run hands to the engine; the edges (``napari-lvit
train``, a project's retraining round, the benchmarks) build one from their own settings, and
:func:`sks_stage1` + :func:`build_trainer` run it::

    recipe = TrainingRecipe(TrainConfig(...), semi=SemiConfig(...), clcc=CLCCConfig())
    for epoch in sks_stage1(model, train_set, recipe):     # SKS models only
        ...
    trainer = build_trainer(model, train_set, val_set, encoder, recipe)
    for event in trainer.fit():
        ...

``recipe.to_dict()`` is what the run was given (JSON-ready), e.g. for a round's metrics.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from src_models.dataclass_io import json_ready
from src_models.engine.sks import ClassifierConfig, ClassifierEpoch, image_labels
from src_models.engine.trainer import TrainConfig

if TYPE_CHECKING:  # the CLCC module imports the EPI engine, which is optional
    from src_models.engine.clcc import CLCCConfig

__all__ = [
    "TrainingRecipe",
    "build_trainer",
    "is_sks",
    "no_lesion_names",
    "semi_engine",
    "sks_stage1",
]

#: Where the semi-supervised EPI engine may live (the first importable one is used).
SEMI_MODULES = ("src_models.engine.semi",)


def semi_engine():
    """The semi-supervised EPI engine module (``SemiConfig``, ``SemiTrainer``, ...), or
    ``None`` when it is not installed."""
    for name in SEMI_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name not in (name, "src_models.engine.semi.bank"):
                raise
            continue
        if hasattr(module, "SemiTrainer"):  # (not a half-moved, empty package)
            return module
    return None


@dataclass
class TrainingRecipe:
    """What a run trains with: ``train`` always; ``semi`` for EPI rounds (its CLCC terms are
    ``clcc``, copied into ``semi.clcc``); ``clcc`` alone for a CLCC run; ``classifier`` for the
    SKS stage 1 (SKS models only; ``None`` skips it)."""

    train: TrainConfig
    semi: Any = None  # SemiConfig of the EPI engine
    clcc: CLCCConfig | None = None
    classifier: ClassifierConfig | None = None

    def __post_init__(self) -> None:
        if self.semi is not None:
            if self.semi.clcc is None and self.clcc is not None:
                self.semi = dataclasses.replace(self.semi, clcc=self.clcc)
            self.clcc = self.semi.clcc

    @property
    def engine(self) -> str:
        """``"epi"`` or ``"supervised"``, with ``"+clcc"`` when the CLCC terms are on."""
        return ("epi" if self.semi is not None else "supervised") + ("+clcc" if self.clcc else "")

    def to_dict(self) -> dict[str, Any]:
        """``{"train", "semi", "clcc", "classifier"}``: each config's fields, or None."""
        return {
            "train": json_ready(self.train),
            "semi": None if self.semi is None else json_ready(self.semi),
            "clcc": None if self.clcc is None else json_ready(self.clcc),
            "classifier": None if self.classifier is None else json_ready(self.classifier),
        }


def is_sks(model: Any) -> bool:
    """An SKS model (a lesion classifier that stage 1 trains)."""
    return hasattr(model, "classifier_training")


def no_lesion_names(train_set: Any, labels: np.ndarray | None = None) -> list[str]:
    """Names of the images labelled "no lesion" at image level that have no mask (EPI forces
    their pseudo labels empty)."""
    labels = image_labels(train_set) if labels is None else labels
    has = train_set.has_mask
    return [n for n, y, h in zip(train_set.names, labels, has, strict=True) if y == 0 and not h]


def sks_stage1(
    model: Any, train_set: Any, recipe: TrainingRecipe, labels: np.ndarray | None = None
) -> Iterator[ClassifierEpoch]:
    """SKS stage 1: train the model's lesion classifier on the image-level labels (default
    :func:`~src_models.engine.sks.image_labels`); yields its epochs. Nothing happens for other
    models, without ``recipe.classifier`` or when no image has a label."""
    if recipe.classifier is None or not is_sks(model):
        return
    from src_models.engine.sks import train_classifier

    labels = image_labels(train_set) if labels is None else labels
    if not (labels >= 0).any():
        return
    yield from train_classifier(model, train_set, recipe.classifier, labels=labels)


def build_trainer(
    model: Any,
    train_set: Any,
    val_set: Any,
    encoder: Any,
    recipe: TrainingRecipe,
    *,
    no_lesion: Collection[str] = (),
    templates: Any = None,
    resume: Any = None,
    hooks: Sequence[Any] = (),
):
    """The trainer of ``recipe``: EPI rounds (``semi``), CLCC (``clcc``), or plain supervised.

    ``resume``: a checkpoint to continue from (with EPI: any value resumes the run's own
    ``out``); ``no_lesion`` and ``templates`` go to the EPI engine.
    """
    if recipe.semi is not None:
        semi = semi_engine()
        if semi is None:
            raise RuntimeError("the recipe has EPI rounds, but the EPI engine is not installed")
        return semi.SemiTrainer(
            model,
            train_set,
            val_set,
            encoder,
            recipe.train,
            recipe.semi,
            no_lesion=no_lesion,
            templates=templates,
            hooks=hooks,
            resume=resume is not None,
        )
    if recipe.clcc is not None:
        from src_models.engine.clcc import CLCCTrainer

        return CLCCTrainer(
            model,
            train_set,
            val_set,
            encoder,
            recipe.train,
            hooks=hooks,
            resume=resume,
            clcc=recipe.clcc,
        )
    from src_models.engine.trainer import Trainer

    return Trainer(model, train_set, val_set, encoder, recipe.train, hooks=hooks, resume=resume)

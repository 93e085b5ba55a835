"""CLCC in the training engine: cross-level contrast first, patch consistency after.

::

    clcc = CLCCConfig(grid=2, contrast_weight=0.1, consistency_weight=1.0)
    # without EPI: labeled and unlabeled images together, CLCC on both, supervision on labeled
    CLCCTrainer(model, train_set, val_set, encoder, TrainConfig(epochs=30), clcc=clcc).run()
    # with EPI: every round's trainer adds the CLCC terms (src_models.engine.semi)
    SemiTrainer(model, train_set, val_set, encoder, config, SemiConfig(clcc=clcc)).run()

Per optimizer step, up to ``CLCCConfig.images`` rows of the batch (unlabeled rows first) are cut
into a ``grid x grid`` grid; each cell is zoomed back to the model size (nearest, so that a
pointwise network sees exactly the same pixels) and run through the model with its image's
text. Before ``switch`` (a fraction of the whole training, default one third) the term is the
cross-level InfoNCE between the full image's decoder features per cell and the patch features
(the patch forward runs without gradients: stop-gradient on the patch side); after it, the MSE
between patch predictions and the detached full-image prediction of that cell. The terms are
logged as ``clcc_contrast`` and ``clcc_consistency`` (the inactive one is 0).

Cost: each CLCC row adds ``grid**2`` forward passes (with a backward only in the consistency
phase), so ``images`` is small. Under torchrun each rank runs the patches of up to ``images``
rows of its own share of the batch (so N ranks run up to ``N * images`` rows per step); the
supervised terms see the global batch (:meth:`~src_models.engine.Trainer.loss_rows`) and the
engine averages gradients itself, so the second model call in a step is allowed.

The CLCC weights (0.1 contrast, 1.0 consistency) are this project's choice; the paper does not
fix them.

The EPI round trainer with these terms,
:class:`~src_models.engine.semi.round_trainer.CLCCRoundTrainer`, lives in the semi package
(which imports this module, never the other way round).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from src_models.device import autocast
from src_models.engine.trainer import Trainer
from src_models.losses.clcc import cross_level_contrast, patch_consistency, patchify
from src_models.models.features import logits_and_features

__all__ = [
    "CLCCConfig",
    "CLCCMixin",
    "CLCCTrainer",
    "PartialLabelTrainer",
    "balanced_index",
    "schedule_total",
]


@dataclass
class CLCCConfig:
    """Settings of the CLCC terms (see the module docstring)."""

    grid: int = 2
    contrast_weight: float = 0.1
    consistency_weight: float = 1.0
    temperature: float = 0.07
    switch: float = 1.0 / 3.0  # fraction of training with the contrast term; consistency after
    images: int = 2  # rows per batch run as patches (each costs grid**2 forwards)

    def __post_init__(self) -> None:
        if int(self.grid) < 2:
            raise ValueError(f"CLCCConfig.grid must be >= 2 (negatives), got {self.grid}")
        if self.contrast_weight < 0 or self.consistency_weight < 0:
            raise ValueError("CLCCConfig weights must be >= 0")
        if self.temperature <= 0:
            raise ValueError("CLCCConfig.temperature must be > 0")
        if not 0.0 <= self.switch <= 1.0:
            raise ValueError(f"CLCCConfig.switch must be in [0, 1], got {self.switch}")
        if int(self.images) < 1:
            raise ValueError("CLCCConfig.images must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def coerce(cls, value: CLCCConfig | dict | None) -> CLCCConfig | None:
        """A config from itself, a dict (e.g. read back from JSON) or ``None``."""
        if value is None or isinstance(value, cls):
            return value
        return cls(**dict(value))


class CLCCMixin:
    """Adds the CLCC terms to a :class:`~src_models.engine.Trainer` subclass.

    Needs ``self.clcc`` (:class:`CLCCConfig`), ``self.clcc_offset`` (epochs of the whole
    training before this trainer's first epoch) and ``self.clcc_total`` (epochs of the whole
    training; the schedule's length), set by :meth:`_init_clcc`.
    """

    clcc: CLCCConfig
    clcc_offset: float = 0.0
    clcc_total: float | None = None

    def _init_clcc(
        self, clcc: CLCCConfig | dict | None, offset: float = 0.0, total: float | None = None
    ) -> None:
        self.clcc = CLCCConfig.coerce(clcc) or CLCCConfig()
        self.clcc_offset = float(offset)
        self.clcc_total = None if total is None else float(total)
        self._clcc_features: torch.Tensor | None = None

    def clcc_progress(self) -> float:
        """Position in the whole training, 0 .. 1 (epochs, with the fraction of this epoch)."""
        n = max(len(self.train_loader), 1)
        total = self.clcc_total if self.clcc_total else float(self.config.epochs)
        position = self.clcc_offset + self.epoch + self._epoch_batches / n
        return min(max(position / max(total, 1e-9), 0.0), 1.0)

    def clcc_phase(self) -> str:
        """``"contrast"`` before ``switch``, ``"consistency"`` after."""
        return "contrast" if self.clcc_progress() < self.clcc.switch else "consistency"

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        logits, feats = logits_and_features(
            self.ddp_model, batch["image"], batch.get("text_tokens"), batch.get("text_mask")
        )
        self._clcc_features = feats
        return logits

    def compute_loss(self, batch: dict[str, Any], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = super().compute_loss(batch, logits)
        terms.update(self.clcc_terms(batch, logits))
        return terms

    def clcc_rows(self, batch: dict[str, Any]) -> torch.Tensor:
        """Indices of the rows that run as patches: unlabeled rows first, at most ``images``."""
        b = batch["image"].shape[0]
        has = batch.get("has_mask")
        order = torch.arange(b)
        if has is not None:
            has = torch.as_tensor(has).reshape(-1).cpu().bool()
            order = torch.cat([order[~has], order[has]])
        return order[: int(self.clcc.images)].to(batch["image"].device)

    def clcc_terms(self, batch: dict[str, Any], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"clcc_contrast", "clcc_consistency"}`` for a prepared batch and its logits."""
        cfg = self.clcc
        n = int(cfg.grid)
        zero = logits.float().sum() * 0.0
        out = {"clcc_contrast": zero, "clcc_consistency": zero}
        phase = self.clcc_phase()
        weight = cfg.contrast_weight if phase == "contrast" else cfg.consistency_weight
        if weight <= 0:
            return out
        rows = self.clcc_rows(batch)
        image = batch["image"][rows]
        patches = F.interpolate(patchify(image, n), scale_factor=n, mode="nearest")
        text, mask = batch.get("text_tokens"), batch.get("text_mask")
        if text is not None:
            text = text[rows].repeat_interleave(n * n, dim=0)
            mask = None if mask is None else mask[rows].repeat_interleave(n * n, dim=0)
        with autocast(self.device, self.amp, cpu_bf16=self.cpu_bf16):
            if phase == "contrast":
                with torch.no_grad():  # stop-gradient on the patch side
                    _, patch_feats = logits_and_features(self.ddp_model, patches, text, mask)
                full = self._clcc_features
                if full is None:
                    raise RuntimeError("CLCC needs the features of the forward pass")
                out["clcc_contrast"] = weight * cross_level_contrast(
                    full[rows], patch_feats, n, cfg.temperature
                )
            else:
                patch_logits = self.ddp_model(patches, text=text, text_mask=mask)
                out["clcc_consistency"] = weight * patch_consistency(logits[rows], patch_logits, n)
        self._clcc_features = None
        return out


def balanced_index(has_mask: Sequence[bool]) -> list[int]:
    """One epoch of a partly labeled set: every item once, the labeled ones repeated so that
    they make up about half of it (``k = floor(unlabeled / labeled)`` copies, at least 1).

    Without it, 10 labeled among 100 images would get a tenth of the supervised steps that
    training on them alone gets, and the unsupervised terms could not make up for that.
    """
    has = np.asarray(has_mask, dtype=bool)
    labeled = np.flatnonzero(has).tolist()
    unlabeled = np.flatnonzero(~has).tolist()
    if not labeled:
        return unlabeled
    repeat = max(1, len(unlabeled) // len(labeled))
    return labeled * repeat + unlabeled


class PartialLabelTrainer(Trainer):
    """A :class:`Trainer` whose training items may lack a mask (``has_mask`` False): the
    supervised loss uses the labeled rows only (unlabeled rows serve unsupervised terms added
    by a subclass, e.g. CLCC). An epoch repeats the labeled items (:func:`balanced_index`).
    Validation still needs masks."""

    def train_index(self) -> Sequence[int] | None:
        has = getattr(self.train_set, "has_mask", None)
        if has is None or bool(np.all(has)):
            return None
        return balanced_index(has)

    def check_datasets(self) -> None:
        self.check_texts_and_val_masks()
        has = getattr(self.train_set, "has_mask", None)
        if has is not None and not np.any(has):
            raise ValueError("no training image has a mask: nothing to supervise")

    def compute_loss(self, batch: dict[str, Any], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, logits = self.loss_rows(batch, logits)
        target = self.targets(batch)
        has = batch.get("has_mask")
        supervised = self.supervised_terms
        if has is None:
            return supervised(logits, target)
        has = has.to(logits.device, torch.bool).reshape(-1)
        if bool(has.all()):
            return supervised(logits, target)
        if bool(has.any()):
            return supervised(logits[has], target[has])
        return {k: v * 0.0 for k, v in supervised(logits, target).items()}


class CLCCTrainer(CLCCMixin, PartialLabelTrainer):
    """CLCC without EPI: one run on labeled + unlabeled images (see the module docstring).

    Arguments as :class:`~src_models.engine.Trainer`, plus ``clcc`` (:class:`CLCCConfig`).
    """

    def __init__(self, *args: Any, clcc: CLCCConfig | dict | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_clcc(clcc)

    def checkpoint_meta(self, kind: str) -> dict[str, Any]:
        meta = super().checkpoint_meta(kind)
        meta["training"]["clcc"] = self.clcc.to_dict()
        return meta


def schedule_total(round0: int, rounds: int, round_epochs: int) -> float:
    """Epochs of a whole semi-supervised run (the CLCC schedule's length), at least 1."""
    return float(max(1, int(round0) + int(rounds) * int(round_epochs)))

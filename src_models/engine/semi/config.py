"""The settings of semi-supervised retraining (:class:`SemiConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from src_models.engine.clcc import CLCCConfig
from src_models.engine.semi.bank import SCHEDULES

__all__ = ["SemiConfig"]


@dataclass
class SemiConfig:
    """Settings of semi-supervised retraining (see :mod:`src_models.engine.semi`).

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

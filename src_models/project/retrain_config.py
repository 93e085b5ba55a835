""":class:`RetrainConfig`, the settings of a retraining run, and its one wire format.

The widget (thread or process), ``napari-lvit retrain`` and tests all build the same object:
in a thread it is handed to :func:`~src_models.project.retrain.retrain`; for a process it
crosses as ``config.to_json()`` (``napari-lvit retrain PROJECT --config - --jsonl`` reads it
from stdin). The command's flags are generated from the fields below (see
:mod:`src_models.dataclass_io`): adding a field adds its flag, its JSON key and its check.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from src_models.dataclass_io import from_dict, to_dict
from src_models.errors import UserError

__all__ = ["RetrainConfig", "RetrainError"]

SEMI_CHOICES = ("auto", "epi", "off")
RESOLUTION_CHOICES = ("auto", "whole", "patches")
START_CHOICES = ("auto", "model")


class RetrainError(UserError, ValueError):
    """Retraining cannot start (nothing labelled, another retraining running, bad config)."""


def _opt(default: Any = None, help: str = "", **meta: Any) -> Any:
    """A field with its command-line ``help`` (and ``flags``, ``choices``) as metadata."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


def _check_semi_options(options: dict[str, Any]) -> None:
    """Unknown or invalid ``SemiConfig`` fields fail now, not when a round starts."""
    import dataclasses

    from src_models.engine.recipe import semi_engine

    semi = semi_engine()
    if semi is None:
        return
    known = {f.name for f in dataclasses.fields(semi.SemiConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown semi_options field(s): {', '.join(unknown)}")
    semi.SemiConfig(**options)


@dataclass
class RetrainConfig:
    """Settings of :func:`~src_models.project.retrain.retrain` (built at the edge: CLI, widget).

    ``model``: what to start from when the project has no current checkpoint (or with
    ``from_scratch``): a checkpoint file, ``"default"``, a registry name, or ``"auto"``
    (``default`` if shipped, else ``lvit_s`` at 128 px). ``start="auto"`` probes it against a
    fresh model in the first round (:mod:`.retrain_start`). ``img_size`` applies to a new registry
    model only (``None``: its own size; 128 px for the "auto" choice).
    ``semi``: ``"auto"`` (EPI when available and there are unlabelled images with a text),
    ``"epi"`` (required) or ``"off"``. A validation split of ``val_fraction`` of the labelled
    samples is held out when there are at least ``min_val`` of them; with fewer, validation
    runs on the (unaugmented) training samples. ``semi_options`` are further
    :class:`~src_models.engine.semi.SemiConfig` fields. ``clcc`` adds the CLCC terms
    (:mod:`src_models.engine.clcc`, a ``clcc_grid`` x ``clcc_grid`` grid of patches) to the
    round, with or without EPI; its schedule (contrast, then consistency) spans each round.
    ``replace_if_worse``: make the round's checkpoint current even when its best validation Dice
    is below the starting model's (by default the better model stays current).
    """

    rounds: int = _opt(1, "retraining rounds")
    epochs: int | None = _opt(
        None,
        "epochs per round (none: the round is sized in optimizer steps, see --steps; a number "
        "keeps the epoch-counted round)",
    )
    steps: int | None = _opt(
        None,
        "optimizer steps per round when epochs is none (none: max(300, 100 x labelled images))",
    )
    time_budget_s: float = _opt(
        90.0,
        "cap a step-sized round at about this many seconds, from the seconds per step of the "
        "previous round (else a quick measurement); 0: no cap",
    )
    resolution: str = _opt(
        "auto",
        "working resolution: auto (chosen from image and object sizes), whole (resize each "
        "image to the model size) or patches (train and predict on patches)",
        choices=RESOLUTION_CHOICES,
    )
    resolution_scale: float | None = _opt(
        None,
        "patches mode: input pixels per working pixel (1 native, 2 half; none: chosen)",
    )
    batch_size: int | None = _opt(
        None, "training batch size (none: 4 in a round sized in steps, 2 in an epoch-counted one)"
    )
    lr: float | None = _opt(
        None,
        "learning rate (none: in a round sized in steps 3e-4 when the starting model was "
        "trained at the chosen resolution, else 1e-3; 3e-4 in an epoch-counted round)",
    )
    min_lr: float = _opt(1e-5, "lowest learning rate of the cosine schedule")
    model: str = _opt(
        "auto",
        "start from this checkpoint/registry model when the project has no model yet "
        "('auto': the shipped default, else lvit_s)",
    )
    start: str = _opt(
        "auto",
        "first round of a project without a model: auto (probe the configured model, a fresh "
        "one and checkpoints/pretrained.safetensors briefly; go on with the best) or model (the "
        "configured model)",
        choices=START_CHOICES,
    )
    img_size: int | None = _opt(
        None, "input size of a new registry model (none: its own; 128 for 'auto')"
    )
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N or mps")
    seed: int = _opt(0, "random seed (plus the round id)")
    text_encoder: str = _opt("default", "text encoder of a new model: 'default' or a folder")
    val_fraction: float = _opt(0.2, "fraction of the labelled images held out for validation")
    min_val: int = _opt(10, "labelled samples needed before a validation split is held out")
    semi: str = _opt("auto", "EPI pseudo labels: auto, epi (required) or off", choices=SEMI_CHOICES)
    from_scratch: bool = _opt(False, "ignore the current checkpoint")
    augment: bool = _opt(True, "augment the training images")
    num_threads: int | None = _opt(
        None, "torch CPU threads", flags=["--threads", "--num-threads"], metavar="N"
    )
    clcc: bool = _opt(
        False,
        "add CLCC's cross-level contrast (first third) and patch consistency (after); uses the "
        "images without masks too, with or without EPI",
    )
    clcc_grid: int = _opt(2, "CLCC grid side n (n x n patches)")
    clicks: int | None = _opt(
        0,
        "simulated correction clicks per training batch, so that the model learns to take "
        "clicks (3 is usual; 0 or none: no clicks, the default, since in a round limited in "
        "time they cost optimizer steps: a model that reads clicks keeps its prompt inputs)",
    )
    replace_if_worse: bool = _opt(
        False,
        "make the new model current even if it scores below the current one on validation",
    )
    semi_options: dict[str, Any] = _opt(
        {}, "further SemiConfig fields, a JSON object (replaces the one of --config)"
    )

    def __post_init__(self) -> None:
        for name in ("rounds", "epochs", "batch_size", "steps"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.resolution not in RESOLUTION_CHOICES:
            raise ValueError(
                f"resolution must be 'auto', 'whole' or 'patches', got {self.resolution!r}"
            )
        if self.resolution_scale is not None and not self.resolution_scale > 0:
            raise ValueError(f"resolution_scale must be > 0, got {self.resolution_scale}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not self.time_budget_s >= 0:
            raise ValueError(f"time_budget_s must be >= 0, got {self.time_budget_s}")
        if self.start not in START_CHOICES:
            raise ValueError(f"start must be 'auto' or 'model', got {self.start!r}")
        if self.semi not in SEMI_CHOICES:
            raise ValueError(f"semi must be 'auto', 'epi' or 'off', got {self.semi!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.img_size is not None and (self.img_size < 16 or self.img_size % 16):
            raise ValueError(f"img_size must be a multiple of 16, got {self.img_size}")
        if self.clicks is not None and int(self.clicks) < 0:
            raise ValueError(f"clicks must be >= 0, got {self.clicks}")
        if int(self.clcc_grid) < 2:
            raise ValueError(f"clcc_grid must be >= 2, got {self.clcc_grid}")
        if not isinstance(self.semi_options, dict):
            raise ValueError(f"semi_options must be a dict, got {self.semi_options!r}")
        if self.semi_options:
            _check_semi_options(self.semi_options)

    # -- the wire format ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrainConfig:
        """The config of a dict (missing keys: defaults); unknown keys or values of the wrong
        type raise ValueError naming them."""
        return from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RetrainConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the retrain config is not JSON: {exc}") from None
        return cls.from_dict(data)

"""Ready-made :class:`~src_models.engine.Callback` objects.

::

    keep = KeepBest()
    done = Trainer(model, train_set, val_set, encoder, config, hooks=[keep]).run()
    keep.restore(model)  # the best-by-validation weights, also when out=None wrote nothing
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from src_models.engine.events import ValidationEnd
from src_models.engine.trainer import Callback, Trainer

__all__ = ["KeepBest", "cpu_state_dict"]


def cpu_state_dict(model: nn.Module) -> OrderedDict[str, Any]:
    """A copy of ``model.state_dict()`` on the CPU that shares no memory with the model.

    Tensors are detached CPU copies; other entries (a module's extra state) are deep copies;
    the state dict's ``_metadata`` (module versions) is kept, as ``copy.deepcopy`` would.
    """
    state = model.state_dict()
    out: OrderedDict[str, Any] = OrderedDict(
        (k, v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else copy.deepcopy(v))
        for k, v in state.items()
    )
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = copy.deepcopy(metadata)  # type: ignore[attr-defined]
    return out


class KeepBest(Callback):
    """Keeps the best-by-validation weights in memory (for runs that write no checkpoint).

    Whenever a validation improves (``ValidationEnd.improved``), ``state`` becomes a CPU copy of
    the model's weights (:func:`cpu_state_dict`) and ``dice`` that validation's Dice. Both stay
    ``None`` until then (e.g. without a validation set). :meth:`restore` loads ``state``.
    """

    def __init__(self) -> None:
        self.state: OrderedDict[str, Any] | None = None
        self.dice: float | None = None

    def on_event(self, trainer: Trainer, event: Any) -> None:
        if isinstance(event, ValidationEnd) and event.improved:
            self.state = cpu_state_dict(trainer.model)
            self.dice = event.dice

    def restore(self, model: nn.Module) -> None:
        """Load the kept weights into ``model`` (nothing happens while there are none)."""
        if self.state is not None:
            model.load_state_dict(self.state)

"""The state of one semi-supervised run: its plan and progress (:class:`RunState`), the round
in progress (:class:`RoundState`) and its files beside the checkpoint (:class:`RunFiles`).

For ``out = run/model.safetensors``: ``run/model.round<r>.safetensors`` is round r's own
checkpoint (with the Trainer's ``.last`` checkpoint and training state for exact resume),
``run/model.semi.json`` records the finished rounds (``RunState.state`` and the history) and
``run/model.pseudo`` is the default pseudo-label bank folder. Without ``out`` there are no files
(every path is ``None``).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from src_models.engine.checkpoint import last_checkpoint_path, load_train_state, train_state_path
from src_models.losses.lv import TemplateLibrary

__all__ = ["RoundState", "RunFiles", "RunState"]


@dataclass
class RunState:
    """What one :meth:`~src_models.engine.semi.SemiTrainer.fit` works with. ``state`` is what
    ``.semi.json`` records (``next_round``, ``bank_t0``, ``ramp_offset``, and on resume what was
    read back)."""

    labeled: list[int]
    unlabeled: list[int]
    device: torch.device
    use_text: bool
    amp: bool
    templates: TemplateLibrary | None
    state: dict[str, Any]
    round0: int  # epochs of round 0 (0: skipped)
    per_round: int  # epochs of every round >= 1
    last_round: int
    next_round: int = 0  # set by fit from state["next_round"]
    rounds_run: int = 0
    cancelled: bool = False

    def epochs(self, r: int) -> int:
        return self.round0 if r == 0 else self.per_round

    def advance(self) -> None:
        """On to the next round (recorded in ``state``)."""
        self.next_round += 1
        self.state["next_round"] = self.next_round


@dataclass
class RoundState:
    """One round in progress: its items and what its EPI update changed."""

    index: int
    epochs: int
    started: float  # time.perf_counter() at its start
    data: Dataset | None = None
    change: float | None = None
    n_lv: int = 0


class RunFiles:
    """The paths of a run beside ``out`` (see the module docstring) and its ``.semi.json``."""

    def __init__(self, out: str | os.PathLike | None) -> None:
        self.out = None if out is None else Path(out)

    def bank_folder(self, pseudo_dir: Any = None, data_root: Any = None) -> Path | None:
        """The bank folder: ``pseudo_dir`` if set, else ``<stem>.pseudo`` beside ``out``, else
        ``pseudo_labels`` inside ``data_root``, else ``None`` (a temporary folder)."""
        if pseudo_dir is not None:
            return Path(pseudo_dir)
        if self.out is not None:
            return self.out.with_name(_stem(self.out) + ".pseudo")
        if data_root is not None:
            return Path(data_root) / "pseudo_labels"
        return None

    def round_out(self, r: int) -> Path | None:
        """Round ``r``'s checkpoint, ``<stem>.round<r>.safetensors``."""
        if self.out is None:
            return None
        return self.out.with_name(f"{_stem(self.out)}.round{r}.safetensors")

    def state_path(self) -> Path | None:
        """``<stem>.semi.json``: the finished rounds, for resuming."""
        return None if self.out is None else self.out.with_name(_stem(self.out) + ".semi.json")

    def load_state(self) -> dict[str, Any] | None:
        p = self.state_path()
        if p is None or not p.is_file():
            return None
        return json.loads(p.read_text(encoding="utf-8"))

    def save_state(self, data: dict[str, Any]) -> None:
        """Write ``.semi.json`` atomically (nothing without ``out``)."""
        p = self.state_path()
        if p is None:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, default=_json_default), encoding="utf-8")
        os.replace(tmp, p)

    def resume_path(self, r: int) -> Path | None:
        """Round ``r``'s checkpoint if its latest training state is from round ``r`` (the
        Trainer then resumes it exactly), else ``None``."""
        out = self.round_out(r)
        if out is None:
            return None
        last = last_checkpoint_path(out)
        state = train_state_path(last)
        if not (last.is_file() and state.is_file()):
            return None
        try:
            saved = load_train_state(state).get("extra", {}).get("semi_round")
        except Exception:  # noqa: BLE001 - an unreadable state is simply not resumed
            return None
        return out if saved == r else None

    def carry_path(self, r: int, best: bool) -> Path | None:
        """The checkpoint round ``r`` starts from on resume: round ``r - 1``'s best weights (or
        with ``best`` False its last ones), if written."""
        prev = self.round_out(r - 1)
        if prev is None:
            return None
        if not best:
            prev = last_checkpoint_path(prev)
        return prev if prev.is_file() else None

    def remove_round(self, r: int) -> None:
        """Delete round ``r``'s checkpoints and training states (if any; nothing for r < 0)."""
        out = self.round_out(r) if r >= 0 else None
        if out is None:
            return
        last = last_checkpoint_path(out)
        for p in (out, last, train_state_path(last), train_state_path(out)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _stem(p: Path) -> str:
    return p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.stem


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)

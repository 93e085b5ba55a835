"""The rounds loop of semi-supervised retraining (:class:`SemiTrainer`).

:meth:`SemiTrainer.fit` is :meth:`~SemiTrainer._start`, then for every round
:meth:`~SemiTrainer._round`: :meth:`~SemiTrainer._round_data` (round >= 1: the EPI update of the
bank, the LV references, the round's items), a ``RoundStart``, one
:class:`~src_models.engine.semi.round_trainer.EPIRoundTrainer` run (its events passed on), then
:meth:`~SemiTrainer._end_round` (carry and best weights, history, ``.semi.json``) and a
``RoundEnd``; at the end :meth:`~SemiTrainer._close` and a ``SemiDone``. See
:mod:`src_models.engine.semi` for the method.

Under torchrun every rank runs this same loop: the run joins the process group once (the round
trainers share it), the pseudo-label pass is sharded (:func:`~.pseudo.update_bank`), rank 0
alone writes the bank, the checkpoints and ``.semi.json`` while the others wait at a barrier and
read them, and events come from rank 0 only (every rank gets the ``SemiDone``).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Collection, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from src_models.engine.callbacks import KeepBest, cpu_state_dict
from src_models.engine.checkpoint import (
    CheckpointError,
    load_weights_into,
    save_checkpoint,
)
from src_models.engine.distributed import Distributed
from src_models.engine.evaluate import resolve_use_text
from src_models.engine.events import Event, TrainingDone
from src_models.engine.semi.bank import PseudoLabelBank
from src_models.engine.semi.config import SemiConfig
from src_models.engine.semi.data import _RoundDataset
from src_models.engine.semi.events import RoundEnd, RoundStart, SemiDone, SemiEvent
from src_models.engine.semi.pseudo import (
    load_lv_templates,
    lv_references,
    missing_pseudo_labels,
    update_bank,
)
from src_models.engine.semi.round_trainer import (
    EPIRoundTrainer,
    round_config,
    round_trainer_class,
    run_trainer,
)
from src_models.engine.semi.run import RoundState, RunFiles, RunState
from src_models.engine.trainer import Callback, TrainConfig
from src_models.losses.lv import TemplateLibrary

__all__ = ["SemiTrainer"]


class SemiTrainer:
    """Semi-supervised retraining in rounds (EPI + LV); see :mod:`src_models.engine.semi`.

    Args:
        model: a registry model; trained in place (holds the best weights at the end).
        train_set: a :class:`~src_models.data.SegmentationDataset`; ``has_mask`` False marks
            the unlabeled images.
        val_set: labeled validation set (best round/epoch selection), or ``None``.
        text_encoder: for text models and for the LV matching (``sentence_embeddings``).
        config: the :class:`TrainConfig` of every round (``epochs`` = default round length,
            ``out`` = the best checkpoint over all rounds).
        semi: a :class:`SemiConfig`.
        no_lesion: names of unlabeled images known to contain no lesion (empty pseudo label).
        templates: extra LV references: a :class:`~src_models.losses.lv.TemplateLibrary` or a
            folder in the LViT layout.
        hooks: :class:`Callback` objects passed to every round's trainer.
        loss_fn: supervised criterion (default Dice + BCE).
        resume: continue the run recorded beside ``config.out`` (needs ``out``).
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Any,
        val_set: Dataset | None = None,
        text_encoder: Any = None,
        config: TrainConfig | None = None,
        semi: SemiConfig | None = None,
        *,
        no_lesion: Collection[str] = (),
        templates: TemplateLibrary | str | os.PathLike | None = None,
        hooks: Sequence[Callback] = (),
        loss_fn: nn.Module | None = None,
        resume: bool = False,
    ) -> None:
        self.model = model
        self.train_set = train_set
        self.val_set = val_set
        self.text_encoder = text_encoder
        self.config = config if config is not None else TrainConfig()
        self.semi = semi if semi is not None else SemiConfig()
        self.no_lesion = frozenset(no_lesion)
        self.templates = templates
        self.hooks = list(hooks)
        self.loss_fn = loss_fn
        self.resume = bool(resume)
        if self.resume and (self.config.out is None or not self.semi.keep_files):
            raise ValueError(
                "resume=True needs TrainConfig.out and SemiConfig.keep_files (the run's files)"
            )
        self.bank: PseudoLabelBank | None = None
        self.history: list[dict[str, Any]] = []
        self.best_dice: float | None = None
        self.best_round: int | None = None
        self.trainer: EPIRoundTrainer | None = None
        self._cancel = threading.Event()
        self._best_state: dict[str, torch.Tensor] | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._plan = (self.config.epochs, self.config.epochs, int(self.semi.rounds))
        self._temporary_bank = False
        self.dist = Distributed()

    # ------------------------------------------------------------------ public

    def cancel(self) -> None:
        """Stop at the next event (thread-safe); a round in progress stops like the Trainer."""
        self._cancel.set()
        trainer = self.trainer
        if trainer is not None:
            trainer.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> SemiDone:
        """Consume :meth:`fit`; return its :class:`SemiDone`."""
        done = None
        for event in self.fit():
            done = event
        assert isinstance(done, SemiDone)
        return done

    @property
    def labeled_indices(self) -> list[int]:
        return [i for i, h in enumerate(self.train_set.has_mask) if h]

    @property
    def unlabeled_indices(self) -> list[int]:
        return [i for i, h in enumerate(self.train_set.has_mask) if not h]

    @property
    def files(self) -> RunFiles:
        """The run's files beside ``config.out`` (round checkpoints, ``.semi.json``)."""
        return RunFiles(self.config.out)

    def fit(self) -> Iterator[Event | SemiEvent]:
        """Run the rounds; yields round events, bank progress and every trainer event (under
        torchrun on rank 0 only; every rank gets the final ``SemiDone``). A rank that dies ends
        the others with a :class:`~src_models.engine.distributed.RankLostError`."""
        with self.dist.failures():
            for event in self._fit():
                if self.dist.is_main or isinstance(event, SemiDone):
                    yield event

    def _fit(self) -> Iterator[Event | SemiEvent]:
        run = self._start()
        completed = False
        try:
            run.next_round = int(run.state["next_round"])
            if self.resume:
                self._restore_carry(run.next_round)
            while run.next_round <= run.last_round and not run.cancelled:
                if self.dist.any(self._cancel.is_set()):
                    run.cancelled = True
                else:
                    yield from self._round(run)
            completed = True
        finally:
            pseudo_dir = self._close(run, completed)
        yield SemiDone(
            rounds_run=run.rounds_run,
            best_dice=self.best_dice,
            best_round=self.best_round,
            cancelled=run.cancelled,
            checkpoint=self._checkpoint(),
            pseudo_dir=pseudo_dir,
            history=list(self.history),
        )

    # ------------------------------------------------------------------ the steps of fit

    def _start(self) -> RunState:
        """Check the data, open the bank, read back a resumed run's state, plan the rounds."""
        cfg, semi = self.config, self.semi
        labeled, unlabeled = self.labeled_indices, self.unlabeled_indices
        if not labeled:
            raise ValueError("semi-supervised training needs at least one labeled image")
        unknown = self.no_lesion - set(self.train_set.names)
        if unknown:  # stacklevel 3: the caller of fit (this runs inside its generator)
            warnings.warn(
                f"no_lesion names not in the training set: {sorted(unknown)[:5]}", stacklevel=3
            )
        device = self.dist.setup(cfg.device)
        use_text = resolve_use_text(self.model, self.text_encoder, cfg.use_text)
        amp = bool(cfg.amp and device.type == "cuda")
        self.bank = self._open_bank()
        templates = None
        if self.templates is not None and self.semi.lv_weight > 0:
            templates = load_lv_templates(self.templates, int(self.train_set.img_size))
        state = self.files.load_state() if self.resume else None
        if state is None:
            state = {"next_round": 0, "bank_t0": self.bank.t, "ramp_offset": 0.0}
        else:
            self.history = list(state.get("history", []))
            self.best_dice = state.get("best_dice")
            self.best_round = state.get("best_round")
        round0 = cfg.epochs if semi.round0_epochs is None else int(semi.round0_epochs)
        per_round = cfg.epochs if semi.round_epochs is None else int(semi.round_epochs)
        last_round = int(semi.rounds) if unlabeled else 0
        self._plan = (round0, per_round, last_round)
        if not unlabeled and semi.rounds:
            warnings.warn("no unlabeled images: only round 0 (supervised) runs", stacklevel=3)
        return RunState(labeled, unlabeled, device, use_text, amp, templates, state, *self._plan)

    def _round(self, run: RunState) -> Iterator[Event | SemiEvent]:
        """Round ``run.next_round``: its items, its trainer's run, its bookkeeping."""
        rnd = RoundState(run.next_round, run.epochs(run.next_round), 0.0)
        if rnd.epochs == 0:  # round 0 skipped: the model is already trained
            run.advance()
            return
        rnd.started = time.perf_counter()
        if not (yield from self._round_data(run, rnd)):
            run.cancelled = True
            return
        r = rnd.index
        yield RoundStart(
            round=r,
            rounds=run.last_round,
            epochs=rnd.epochs,
            n_labeled=len(run.labeled),
            n_unlabeled=len(run.unlabeled) if r else 0,
            pseudo_t=self.bank.t if r else 0,
            pseudo_change=rnd.change,
            n_lv=rnd.n_lv,
        )
        trainer = self._make_trainer(r, rnd.data, rnd.epochs, float(run.state["ramp_offset"]))
        keep = trainer.hooks[0]
        self.trainer = trainer
        if self._cancel.is_set():
            trainer.cancel()
        done, means = yield from run_trainer(trainer)
        self.trainer = None
        self.dist.barrier()  # rank 0 has written the round's checkpoints: others may read them
        if done.cancelled:
            run.cancelled = True
            loss = means.pop("loss", float("nan"))
            yield self._round_end(run, rnd, done, loss, means, cancelled=True)
            return
        yield self._end_round(run, rnd, trainer, keep, done, means)

    def _round_data(
        self, run: RunState, rnd: RoundState
    ) -> Generator[Event | SemiEvent, None, bool]:
        """Set ``rnd.data``; in rounds >= 1 after the bank's EPI update (unless this round's
        update is already in the bank) and the LV matching. False if cancelled meanwhile."""
        r = rnd.index
        if r == 0:
            rnd.data = _RoundDataset(self.train_set, run.labeled)
            return True
        if self.bank.t < int(run.state["bank_t0"]) + r:
            change = yield from update_bank(
                self.model,
                self.train_set,
                run.unlabeled,
                self.bank,
                self.text_encoder,
                round_index=r,
                device=run.device,
                use_text=run.use_text,
                amp=run.amp,
                batch_size=self.semi.predict_batch_size,
                no_lesion=self.no_lesion,
                cancelled=self._cancel.is_set,
                dist=self.dist,
            )
            if change is None:
                return False
            rnd.change = None if math.isnan(change) else change
        lv_refs: dict[int, np.ndarray] = {}
        if self.semi.lv_weight > 0 and self.text_encoder is not None:
            base, encoder, templates = self.train_set, self.text_encoder, run.templates
            lv_refs = lv_references(
                base, run.labeled, run.unlabeled, encoder, templates, self.no_lesion
            )
        rnd.n_lv = len(lv_refs)
        missing = missing_pseudo_labels(self.train_set, run.unlabeled, self.bank, self.no_lesion)
        if missing:
            raise RuntimeError(f"no pseudo labels for {missing[:3]}")
        semi = self.semi
        rnd.data = _RoundDataset(
            self.train_set,
            run.labeled,
            run.unlabeled,
            self.bank,
            lv_refs,
            self.no_lesion,
            semi.labeled_repeat,
            semi.unlabeled_jitter,
        )
        return True

    def _end_round(
        self,
        run: RunState,
        rnd: RoundState,
        trainer: EPIRoundTrainer,
        keep: KeepBest,
        done: TrainingDone,
        means: dict[str, float],
    ) -> RoundEnd:
        """Book a finished round: weights (:meth:`_finish_round`), ramp offset, history, the
        state file, the files of the round before; its ``RoundEnd``."""
        r = rnd.index
        improved = self._finish_round(r, trainer, keep, done)
        if r >= 1:
            run.state["ramp_offset"] = float(run.state["ramp_offset"]) + trainer.epoch
        record = {
            "round": r,
            "epochs": done.last_epoch,
            "train_loss": means.get("loss", float("nan")),
            "losses": {k: v for k, v in means.items() if k != "loss"},
            "val_dice": done.best_dice,
            "pseudo_change": rnd.change,
            "pseudo_t": self.bank.t if r else 0,
            "n_lv": rnd.n_lv,
        }
        self.history.append(record)
        run.rounds_run += 1
        run.advance()
        self._save_state(run.state)
        if self.dist.is_main:
            self.files.remove_round(r - 1)
        return self._round_end(
            run,
            rnd,
            done,
            record["train_loss"],
            record["losses"],
            improved=improved,
            checkpoint=self._checkpoint(),
        )

    def _round_end(self, run: RunState, rnd: RoundState, done, loss, losses, **kw: Any) -> RoundEnd:
        return RoundEnd(
            round=rnd.index,
            rounds=run.last_round,
            epochs_run=done.epochs_run,
            train_loss=loss,
            losses=losses,
            val_dice=done.best_dice,
            best_dice=self.best_dice,
            pseudo_change=rnd.change,
            seconds=time.perf_counter() - rnd.started,
            **kw,
        )

    def _close(self, run: RunState, completed: bool = False) -> str | None:
        """After the rounds (also on errors): remove the round files unless kept, leave the best
        model in ``model``, drop a temporary bank, leave the process group (after a barrier
        if the run ``completed``: after an error a peer may never come). Returns the bank
        folder if it stays."""
        self.trainer = None
        if completed:
            self.dist.barrier()  # nobody reads the round files or the bank any more
        if not self.semi.keep_files and self.dist.is_main:
            for k in range(run.last_round + 1):
                self.files.remove_round(k)
        if self._best_state is not None:  # the best model over all rounds ends in ``model``
            self.model.load_state_dict(self._best_state)
        elif self.config.out is not None and Path(self.config.out).is_file() and self.resume:
            with contextlib.suppress(CheckpointError):
                load_weights_into(self.model, self.config.out)
        self.model.eval()
        pseudo_dir = str(self.bank.folder) if self.bank is not None else None
        if self._temporary_bank:  # (rank 0's folder: only rank 0 removes it)
            if self._tmpdir is not None:
                self._tmpdir.cleanup()
            self._tmpdir = None
            pseudo_dir = None
        self.dist.teardown(synchronize=False)  # the barrier above, if any, was the meeting
        return pseudo_dir

    # ------------------------------------------------------------------ pieces

    def _checkpoint(self) -> str | None:
        out = self.config.out
        return out if out and Path(out).is_file() else None

    def _open_bank(self) -> PseudoLabelBank:
        """The bank: rank 0 opens it (sweeping an interrupted update's files) and writes its
        index; then the other ranks open it read-only (a temporary folder is rank 0's)."""
        semi = self.semi
        folder = self.files.bank_folder(semi.pseudo_dir, getattr(self.train_set, "root", None))
        self._temporary_bank = folder is None
        if folder is None:
            if self.dist.is_main:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="lvit-pseudo-")
                folder = self._tmpdir.name
            folder = Path(self.dist.broadcast_object(None if folder is None else str(folder)))
        bank = None
        if self.dist.is_main:
            bank = PseudoLabelBank(
                folder, semi.beta, semi.schedule, semi.bank_dtype, fsync=semi.bank_fsync
            )
            bank.flush()
        self.dist.barrier()
        if bank is None:
            bank = PseudoLabelBank(folder, semi.beta, semi.schedule, read_only=True)
        return bank

    def _save_state(self, state: dict[str, Any]) -> None:
        if self.config.out is None or not self.semi.keep_files or not self.dist.is_main:
            return
        data = dict(state)
        data.update(
            version=1,
            history=self.history,
            best_dice=self.best_dice,
            best_round=self.best_round,
            semi=self.semi.to_dict(),
            pseudo_dir=str(self.bank.folder) if self.bank is not None else None,
        )
        self.files.save_state(data)

    def _restore_carry(self, r: int) -> None:
        """On resume: the weights round ``r`` starts from (unless its own state resumes)."""
        if self._round_resume_path(r) is not None or r == 0:
            return
        prev = self.files.carry_path(r, self.semi.carry_best and self.val_set is not None)
        if prev is not None:
            load_weights_into(self.model, prev)

    def _round_resume_path(self, r: int) -> Path | None:
        return self.files.resume_path(r) if self.resume else None

    def _make_trainer(self, r: int, data: Dataset, epochs: int, ramp_offset: float):
        config = round_config(self.config, self.semi, r, epochs, self.files.round_out(r))
        cls, extra = round_trainer_class(self.semi, r, self._plan, ramp_offset)
        return cls(
            self.model,
            data,
            self.val_set,
            self.text_encoder,
            config,
            hooks=[KeepBest(), *self.hooks],
            resume=self._round_resume_path(r),
            loss_fn=self.loss_fn,
            semi=self.semi,
            round_index=r,
            ramp_offset=ramp_offset,
            **extra,
        )

    def _finish_round(self, r: int, trainer: EPIRoundTrainer, keep: KeepBest, done) -> bool:
        """Carry the round's best (or last) weights; update the best model over all rounds."""
        model = self.model
        last_state = None
        has_val = self.val_set is not None and done.best_dice is not None
        if has_val:
            if not self.semi.carry_best:
                last_state = cpu_state_dict(model)
            if keep.state is not None and keep.dice == done.best_dice:
                keep.restore(model)
            elif (out := self.files.round_out(r)) is not None and out.is_file():
                load_weights_into(model, out)
        dice = done.best_dice
        improved = not has_val or self.best_dice is None or dice > self.best_dice
        if improved:
            self.best_dice = dice if has_val else None
            self.best_round = r
            self._best_state = cpu_state_dict(model)
            if self.config.out is not None and self.dist.is_main:
                meta = trainer.best_of_rounds_meta(
                    dice,
                    has_val,
                    n_labeled=len(self.labeled_indices),
                    n_unlabeled=len(self.unlabeled_indices),
                    pseudo_t=self.bank.t if self.bank is not None else 0,
                )
                save_checkpoint(self.config.out, model, meta)
        if last_state is not None:
            model.load_state_dict(last_state)
        return improved

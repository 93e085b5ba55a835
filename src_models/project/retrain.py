"""Retraining rounds of an annotation project: the "Retrain" button without the GUI.

::

    run = retrain("my_project", rounds=1, epochs=5)     # an iterator of events
    for event in run:                                   # RetrainRoundStart, FitStart, BatchEnd, ...
        print(format_retrain_event(event))              # ... RetrainRoundEnd, RetrainDone
    run.cancel()                                        # from any thread: stops between events

A round builds its datasets from the project at the moment it starts: the labelled images with
their committed masks, "no lesion" images as labelled empty masks, and the unlabelled images
that have a text (for EPI pseudo labels). It starts from the project's current checkpoint (else
the shipped ``default`` checkpoint, else a registry model: ``lvit_s`` at 128 px unless
configured otherwise), trains, writes ``checkpoints/round-<id>.safetensors`` durably, records
the round (``start_round`` / ``update_round`` per epoch / ``finish_round``) and makes the new
checkpoint current, unless its validation Dice is below that of the model it started from
(then the round is done and its file kept, but the current checkpoint stays;
``replace_if_worse`` turns this off). Semi-supervised EPI rounds are used when the EPI engine is
installed and there are unlabelled images; otherwise the supervised
:class:`~src_models.engine.Trainer` trains on the labelled images.

Safety: the current checkpoint changes only in ``finish_round(done)``, after the new file is
complete and fsynced; a cancelled or failed round is recorded as such and its files are
removed; a round whose process was killed stays ``running`` until the next retraining (or
:func:`recover_stale_rounds`) records it as ``failed``. One retraining at a time per project
(an OS file lock, released by the kernel even on SIGKILL).

Under ``torchrun`` (a project on a filesystem every rank sees) the ranks train each round
together (:mod:`src_models.engine.distributed`); rank 0 alone holds the lock, records the
rounds, writes the files and prints, and tells the others the round's id, items and outcome.
A rank that dies fails the round with one clear message; the project stays as it was.

The pieces, all importable from here: :mod:`.retrain_config` (:class:`RetrainConfig`, its JSON
and command-line form), :mod:`.retrain_events` (the events, ``event_to_dict``),
:mod:`.project_dataset` (``ProjectDataset``, ``split_validation``), :mod:`.retrain_round` (a
round's base model, samples and engine recipe), :mod:`.retrain_files` (lock, round files,
recovery); this module runs the rounds.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from src_models.engine.distributed import Distributed
from src_models.engine.recipe import build_trainer, sks_stage1
from src_models.model_source import AUTO_IMG_SIZE, AUTO_MODEL

from .project_dataset import ProjectDataset, split_validation
from .records import TrainingItem
from .retrain_config import RetrainConfig, RetrainError
from .retrain_events import (
    RetrainDone,
    RetrainRoundEnd,
    RetrainRoundStart,
    RetrainStartProbe,
    event_to_dict,
    format_retrain_event,
)
from .retrain_files import (
    LOCK_NAME,
    WORK_SUFFIX,
    ProjectLock,
    fail_running,
    publish,
    recover_stale_rounds,
    remove_round_files,
    round_paths,
)
from .retrain_round import (
    PLAN_META_KEYS,
    FitLog,
    RoundPlan,
    plan_round,
    round_recipe,
    validation_dice,
    worse,
)
from .retrain_start import probe_starts, start_candidates
from .store import Project

__all__ = [
    "AUTO_IMG_SIZE",
    "AUTO_MODEL",
    "LOCK_NAME",
    "WORK_SUFFIX",
    "ProjectDataset",
    "RetrainConfig",
    "RetrainDone",
    "RetrainError",
    "RetrainRun",
    "RetrainRoundEnd",
    "RetrainRoundStart",
    "RetrainStartProbe",
    "event_to_dict",
    "format_retrain_event",
    "recover_stale_rounds",
    "retrain",
    "round_recipe",
    "split_validation",
]


# ------------------------------------------------------------------------------- the run


class RetrainRun:
    """The iterator :func:`retrain` returns; :meth:`cancel` stops it between events.

    Iterating runs the rounds on the calling thread. Closing the iterator early (``close()``,
    garbage collection) records the running round as cancelled.
    """

    def __init__(self, project: Project | str | os.PathLike, config: RetrainConfig) -> None:
        self.config = config
        self._project_arg = project
        self._cancel = threading.Event()
        self._trainer = None
        self._gen = self._run()

    def __iter__(self) -> RetrainRun:
        return self

    def __next__(self):
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()

    def cancel(self) -> None:
        """Stop at the next event (thread-safe); the running round is recorded as cancelled."""
        self._cancel.set()
        trainer = self._trainer
        if trainer is not None:
            trainer.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # -- the generator -----------------------------------------------------------------

    def _run(self) -> Iterator[Any]:
        cfg = self.config
        self._dist = dist = Distributed()
        dist.setup(cfg.device)  # joins a torchrun job's process group; nothing on one process
        own = not isinstance(self._project_arg, Project)
        try:
            project = Project.open(self._project_arg) if own else self._project_arg
        except BaseException:
            dist.teardown(synchronize=False)
            raise
        lock = ProjectLock(project) if dist.is_main else None
        threads_before = None
        clean = False  # ended as planned (done or cancelled): every rank is at the same point
        try:
            refusal = dist.broadcast_object(self._refusal(project, lock) if lock else None)
            if refusal is not None:
                raise RetrainError(refusal)
            if cfg.num_threads:
                import torch

                threads_before = torch.get_num_threads()
                torch.set_num_threads(int(cfg.num_threads))
            done = 0
            status = "done"
            for index in range(1, cfg.rounds + 1):
                if dist.any(self._cancel.is_set()):
                    status = "cancelled"
                    break
                end = None
                for event in self._round(project, index):
                    if isinstance(event, RetrainRoundEnd):
                        end = event
                    yield event
                if end is None or end.status != "done":
                    status = end.status if end is not None else "failed"
                    break
                done += 1
            current = project.current_checkpoint
            yield RetrainDone(status, done, str(current) if current else None)
            clean = status != "failed"
        finally:
            if threads_before is not None:
                import torch

                torch.set_num_threads(threads_before)
            if lock is not None:
                lock.release()
            if own:
                project.close()
            # after a failure a peer may be gone or stuck in a collective: no last barrier
            dist.teardown(synchronize=clean)

    @staticmethod
    def _refusal(project: Project, lock: ProjectLock) -> str | None:
        """Why this run cannot start (nothing changed then), or None once it holds the lock."""
        if not project.labeled():  # before the lock: a refused run changes nothing
            return "nothing to learn from: commit at least one correction first"
        if not lock.acquire():
            return f"another retraining is running on the project '{project.folder}'"
        fail_running(project)  # rounds of processes that died
        return None

    def _set_trainer(self, trainer: Any) -> None:
        """The trainer a cancel reaches (``None``: none running)."""
        self._trainer = trainer
        if trainer is not None and self._cancel.is_set():
            trainer.cancel()

    def _round(self, project: Project, index: int) -> Iterator[Any]:
        dist = self._dist
        shared = None
        if dist.is_main:
            labeled = project.labeled()
            unlabeled = project.unlabeled()
            round_id = project.start_round(len(labeled), len(unlabeled))
            meta = {k: project.get_meta(k) for k in PLAN_META_KEYS}
            shared = (round_id, labeled, unlabeled, meta)
        round_id, labeled, unlabeled, meta = dist.broadcast_object(shared)
        if not dist.is_main:
            yield from self._follow(RankView(project, meta), index, round_id, labeled, unlabeled)
            return
        work, final = round_paths(project, round_id)
        metrics: dict[str, Any] = {
            "pid": os.getpid(),
            "state": "preparing",
            "epochs": [],
            "config": self.config.to_dict(),
        }
        t0 = time.perf_counter()
        finished = False
        try:
            project.update_round(round_id, metrics)
            yield from self._train(project, round_id, index, labeled, unlabeled, work, metrics)
            metrics["seconds"] = time.perf_counter() - t0
            if self._cancel.is_set() and not metrics.get("completed"):
                metrics["state"] = "cancelled"
                project.finish_round(round_id, "cancelled", metrics=metrics)
                finished = True
                remove_round_files(project, round_id)
                dist.broadcast_object("cancelled")
                yield RetrainRoundEnd(round_id, index, "cancelled", None, metrics)
                return
            if not work.is_file():
                raise RuntimeError("training ended without writing a checkpoint")
            publish(work, final)
            metrics["state"] = "done"
            metrics["checkpoint"] = final.name
            current = self.config.replace_if_worse or not worse(metrics)
            metrics["made_current"] = current
            project.finish_round(
                round_id, "done", checkpoint_path=final, metrics=metrics, make_current=current
            )
            finished = True
            remove_round_files(project, round_id)  # work leftovers only
            dist.broadcast_object("done")  # after the round is recorded: the next one reads it
            yield RetrainRoundEnd(round_id, index, "done", str(final), metrics, current=current)
        except GeneratorExit:
            if not finished:
                metrics["state"] = "cancelled"
                metrics["seconds"] = time.perf_counter() - t0
                project.finish_round(round_id, "cancelled", metrics=metrics)
                remove_round_files(project, round_id)
            raise
        except BaseException as exc:
            if finished:
                raise
            cancelled = isinstance(exc, KeyboardInterrupt)
            metrics["state"] = "cancelled" if cancelled else "failed"
            metrics["seconds"] = time.perf_counter() - t0
            message = f"{type(exc).__name__}: {exc}"
            if not cancelled:
                metrics["error"] = message
                metrics["traceback"] = traceback.format_exc(limit=8)
            project.finish_round(round_id, metrics["state"], metrics=metrics)
            remove_round_files(project, round_id)
            if not isinstance(exc, Exception):
                raise
            yield RetrainRoundEnd(round_id, index, "failed", None, metrics, error=message)

    def _follow(
        self,
        view: RankView,
        index: int,
        round_id: int,
        labeled: list[TrainingItem],
        unlabeled: list[TrainingItem],
    ) -> Iterator[Any]:
        """A round on a rank other than 0: the same training, rank 0's outcome."""
        work, _ = round_paths(view, round_id)
        metrics: dict[str, Any] = {"epochs": []}
        yield from self._train(view, round_id, index, labeled, unlabeled, work, metrics)
        status = self._dist.broadcast_object(None)
        yield RetrainRoundEnd(round_id, index, status, None, metrics)

    def _train(
        self,
        project: Project,
        round_id: int,
        index: int,
        labeled: list[TrainingItem],
        unlabeled: list[TrainingItem],
        work: Path,
        metrics: dict[str, Any],
    ) -> Iterator[Any]:
        """Plan the round, announce it, measure the starting model, run the recipe."""
        plan = plan_round(project, self.config, round_id, work, labeled, unlabeled)
        metrics.update(plan.summary())
        project.update_round(round_id, metrics)
        yield plan.start_event(round_id, index, self.config)
        if not plan.base_is_new:
            # the bar a round must clear to replace the current model (same metric as the
            # trainer's validation: mean per-image Dice at the model's size and threshold)
            metrics["start_dice"] = validation_dice(
                plan.model, plan.val_set, plan.encoder, plan.recipe.train
            )
            project.update_round(round_id, metrics)
        candidates = start_candidates(project, self.config, plan)
        if candidates:
            started = time.perf_counter()
            best, record = yield from probe_starts(candidates, plan, round_id, self._set_trainer)
            if self._cancel.is_set():
                return
            plan.start_from(best, record["epochs"] if record["kept_training"] else 0)
            metrics.update(start_probe=record, base=plan.base, trainer=plan.recipe.to_dict())
            metrics["probe_seconds"] = time.perf_counter() - started
            project.update_round(round_id, metrics)
        for _ in sks_stage1(plan.model, plan.train_set, plan.recipe):
            pass
        trainer = build_trainer(plan.model, plan.train_set, plan.val_set, plan.encoder, plan.recipe)
        yield from self._fit(project, round_id, trainer, plan, metrics)

    def _fit(self, project, round_id, trainer, plan: RoundPlan, metrics) -> Iterator[Any]:
        """Run the trainer, saving the round's metrics as epochs end; cancellable."""
        self._set_trainer(trainer)
        log = FitLog(metrics, "SemiDone" if plan.recipe.semi is not None else "TrainingDone")
        budget = TimeBudget(self.config, plan, trainer, metrics.get("probe_seconds", 0.0))
        for event in trainer.fit():
            if log.record(event):
                project.update_round(round_id, metrics)
            yield event
            if self._cancel.is_set():
                trainer.cancel()
            elif budget.spent(event):
                metrics["stopped_at_time_budget"] = True
        self._trainer = None


class RankView:
    """The project as a rank other than 0 of a torchrun job sees it: it reads the files and
    the database like rank 0 and writes nothing (rank 0 records everything). ``meta``: the
    values of :data:`PLAN_META_KEYS` when rank 0 began the round (it rewrites them while
    planning, maybe before this rank reads them)."""

    def __init__(self, project: Project, meta: dict[str, Any]) -> None:
        self._project = project
        self._meta = meta

    def __getattr__(self, name: str) -> Any:
        return getattr(self._project, name)

    def get_meta(self, key: str, default: Any = None) -> Any:
        if key in self._meta:
            return default if self._meta[key] is None else self._meta[key]
        return self._project.get_meta(key, default)

    def set_meta(self, key: str, value: Any) -> None:
        pass

    def update_round(self, round_id: int, metrics: dict[str, Any]) -> None:
        pass


class TimeBudget:
    """Ends a round sized in steps once its training has taken ``time_budget_s`` (checked when
    an epoch ends; the best model so far is kept, as at any early stop). The steps are planned
    to fit the budget from the last round's speed; this holds it when the machine is slower now
    (other work, a first round with nothing measured). ``spent_s``: what the round used already
    (the start probe). Epoch-counted rounds and EPI rounds run to their end."""

    def __init__(
        self, cfg: RetrainConfig, plan: RoundPlan, trainer: Any, spent_s: float = 0.0
    ) -> None:
        self.seconds = max(float(cfg.time_budget_s) - float(spent_s), 1.0)
        self.active = (
            cfg.epochs is None
            and cfg.time_budget_s > 0
            and plan.sizing is not None
            and plan.sizing.steps is not None
            and hasattr(trainer, "should_stop")
        )
        self.trainer = trainer
        self.started: float | None = None

    def spent(self, event: Any) -> bool:
        """True once, when the budget ran out at the end of an epoch (the trainer then stops)."""
        from src_models.engine.events import EpochEnd, FitStart

        if not self.active:
            return False
        if isinstance(event, FitStart):
            self.started = time.perf_counter()
        elif (
            isinstance(event, EpochEnd)
            and self.started is not None
            and time.perf_counter() - self.started > self.seconds
        ):
            self.trainer.should_stop = True
            self.active = False
            return True
        return False


def retrain(
    project: Project | str | os.PathLike,
    rounds: int = 1,
    epochs: int | None = None,
    model: str = "auto",
    device: str = "auto",
    *,
    config: RetrainConfig | None = None,
    **options: Any,
) -> RetrainRun:
    """Run retraining rounds on a project; returns an iterator of events (see the module doc).

    ``options`` are further :class:`RetrainConfig` fields (``img_size``, ``batch_size``, ``lr``,
    ``semi``, ``from_scratch``, ...). A given ``config`` replaces all of these arguments.
    """
    if config is None:
        config = RetrainConfig(rounds=rounds, epochs=epochs, model=model, device=device, **options)
    return RetrainRun(project, config)

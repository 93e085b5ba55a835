"""The supervised trainer: a generator of events around a few overridable hooks.

::

    trainer = Trainer(model, train_set, val_set, text_encoder, TrainConfig(epochs=50, out=...))
    for event in trainer.fit():      # BatchEnd, EpochEnd, ValidationEnd, ... TrainingDone
        print(format_event(event))   # trainer.cancel() from elsewhere stops between events
    done = trainer.run()             # or: consume everything, get the TrainingDone

Recipe (LViT): Adam, cosine warm restarts per epoch (``t0``, ``min_lr``), ``0.5 Dice + 0.5
class-balanced BCE``, validation Dice/IoU per image at threshold 0.5 at the model size, best
checkpoint by validation Dice, early stopping after ``patience`` epochs without improvement.

Subclasses extend it through the hooks, e.g. a semi-supervised trainer overrides
:meth:`Trainer.compute_loss` to add named terms (they are summed, backpropagated and reported in
``BatchEnd.losses``), :meth:`Trainer.on_epoch_start` to refresh pseudo labels, and
:meth:`Trainer.extra_state` / :meth:`Trainer.load_extra_state` so that its own state resumes
exactly. A model with training-only objectives of its own exposes them as
``model.auxiliary_losses()`` (see :meth:`Trainer.model_losses`); they join the loss terms.
Distributed training (torchrun) is handled here; models and losses never see it: with N ranks
and batches of ``b`` every step is that of one process with batches of ``N * b`` (BatchNorm over
the global batch, loss terms on every rank's rows: :meth:`Trainer.loss_rows`, gradients
averaged), up to floating-point rounding and dropout (each rank draws its own masks). The
epoch's items are padded to a multiple of N by the sampler when they do not divide.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from src_models.device import autocast, cpu_has_native_bf16
from src_models.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    last_checkpoint_path,
    load_train_state,
    load_weights_into,
    resolve_resume,
    restore_rng_state,
    save_checkpoint,
    save_train_state,
    to_weights_only,
    train_state_path,
)
from src_models.engine.clicks import ClickTraining
from src_models.engine.distributed import Distributed, unwrap
from src_models.engine.evaluate import (
    check_masks,
    check_texts,
    iter_scores,
    model_forward,
    prepare_batch,
    resolve_use_text,
)
from src_models.engine.events import (
    BatchEnd,
    CheckpointSaved,
    EpochEnd,
    Event,
    FitStart,
    TrainingDone,
    ValidationEnd,
)
from src_models.engine.sync import gather_rows
from src_models.losses import DiceBCELoss
from src_models.models.prompts import ADAPTER_NAME, reads_prompts


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs besides model, data and text encoder.

    ``out`` is the checkpoint path (``.safetensors``): the best epoch by validation Dice is
    saved there (without a validation set: the latest epoch); the latest epoch also goes to
    ``<stem>.last.safetensors`` with its training state ``<stem>.last.train_state.pt``
    (for ``Trainer(..., resume=out)``). ``out=None`` trains in memory only.
    """

    epochs: int = 100
    batch_size: int = 2
    lr: float = 1e-3
    min_lr: float = 1e-4
    t0: int = 10  # CosineAnnealingWarmRestarts period, in epochs
    weight_decay: float = 0.0
    patience: int = 50  # epochs without a better validation Dice before stopping
    seed: int = 0
    device: str = "auto"
    use_text: bool = True  # False: text models are called with text=None
    num_workers: int = 0
    amp: bool = True  # mixed precision on CUDA
    # bf16 autocast on a CPU with bf16 instructions (AVX512-BF16/AMX), ignored elsewhere: lvit_t's
    # training step takes ~0.6x the float32 time there. Off by default (float32 figures).
    cpu_bf16: bool = False
    # torch.compile the model that training steps run (the first steps then take minutes to
    # compile); the checkpoints are the plain model's
    compile: bool = False
    threshold: float = 0.5
    log_every: int = 1  # a BatchEnd event every n optimizer steps (and at each epoch's end)
    out: str | None = None
    save_last: bool = True
    val_every: int = 1
    val_batch_size: int = 4
    drop_last: bool = False
    grad_clip: float | None = None  # max gradient norm, None = no clipping
    # simulated clicks (models with prompt inputs): at most this many correction passes per
    # batch, src_models.engine.clicks.ClickTraining; 0 trains without clicks
    clicks: int = 0
    # the learning rate of the prompt adapter (models with prompt inputs) as a multiple of lr
    # (the schedule's floor min_lr is shared): it starts at zero beside a trained network, and
    # at lr alone the clicks stayed weak beside the text (benchmarks/bench_clicks.py)
    prompt_lr_scale: float = 10.0

    def __post_init__(self) -> None:
        if self.out is not None:
            self.out = str(self.out)
        for name in ("epochs", "batch_size", "t0", "patience", "log_every", "val_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if int(self.num_workers) < 0:
            raise ValueError(f"TrainConfig.num_workers must be >= 0, got {self.num_workers}")
        if int(self.clicks) < 0:
            raise ValueError(f"TrainConfig.clicks must be >= 0, got {self.clicks}")
        if self.prompt_lr_scale <= 0:
            raise ValueError(f"TrainConfig.prompt_lr_scale must be > 0, got {self.prompt_lr_scale}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ValueError("TrainConfig.lr must be > 0 and min_lr >= 0")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"TrainConfig.threshold must be in (0, 1), got {self.threshold}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Callback:
    """Optional observer hooks (Lightning style); subclass and override what you need.

    Every method receives the trainer; they run on every process of a distributed run.
    """

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_event(self, trainer: Trainer, event: Event) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...


class Trainer:
    """Supervised training of one segmentation model; see the module docstring.

    Args:
        model: a registry model (``create_model``); trained in place.
        train_set: items ``{"image" [3,S,S], "mask" [1,S,S], "text", "name", "index"}``;
            ``set_epoch(e)`` is called each epoch if it exists; ``texts`` is checked once.
        val_set: optional validation set (same items, no augmentation).
        text_encoder: ``encode(list[str]) -> TextFeatures``, ``dim``, ``id``; needed when the
            model uses text and ``config.use_text``.
        config: a :class:`TrainConfig`.
        hooks: :class:`Callback` objects.
        resume: a checkpoint written by a previous run (its ``out``): continue exactly where it
            stopped (weights, optimizer, scheduler, RNG, early-stopping state).
        loss_fn: the supervised criterion, ``terms(logits, target) -> dict`` or a plain callable
            ``(logits, target) -> scalar``; default :class:`DiceBCELoss`.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset | None = None,
        text_encoder: Any = None,
        config: TrainConfig | None = None,
        hooks: Sequence[Callback] = (),
        resume: str | Path | None = None,
        loss_fn: nn.Module | None = None,
    ) -> None:
        self.config = config if config is not None else TrainConfig()
        self.model = model
        self.train_set = train_set
        self.val_set = val_set
        self.text_encoder = text_encoder
        self.hooks = list(hooks)
        self.resume_from = resume
        self.loss_fn = loss_fn if loss_fn is not None else DiceBCELoss()
        self.dist = Distributed()
        self.device = torch.device("cpu")
        self.use_text = False
        self.click_training: ClickTraining | None = None
        self._corrected: torch.Tensor | None = None  # the last click forward's, for click_terms
        # progress state (saved in the training state)
        self.epoch = 0  # last completed epoch
        self.global_step = 0
        self.best_dice: float | None = None
        self.best_epoch: int | None = None
        self.epochs_since_best = 0
        self.history: list[dict[str, Any]] = []
        # per-run state
        self.should_stop = False
        self.stopped_early = False
        self.epochs_run = 0
        self._cancel = threading.Event()
        self._stopped_by_cancel = False
        self._epoch_sums: dict[str, torch.Tensor] = {}
        self._epoch_batches = 0
        self._epoch_t0 = 0.0
        self._epoch_summary: dict[str, Any] = {}
        self._last_val: dict[str, float] | None = None
        self._improved = False

    # ----------------------------------------------------------------------------- public API

    def cancel(self) -> None:
        """Ask ``fit()`` to stop; it does so at the next event (thread-safe, from any thread).

        A batch in progress finishes; an epoch cut short is not counted or saved, so the last
        checkpoint still resumes exactly. A cancelled trainer stays cancelled.
        """
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def run(self) -> TrainingDone:
        """Consume :meth:`fit` and return its final :class:`TrainingDone`."""
        done = None
        for event in self.fit():
            done = event
        if not isinstance(done, TrainingDone):  # pragma: no cover - fit always ends with it
            raise RuntimeError("fit() ended without a TrainingDone event")
        return done

    def fit(self) -> Iterator[Event]:
        """Train; yields events (on rank 0 only, except the final ``TrainingDone``). A rank of
        a torchrun job that dies ends the others with a
        :class:`~src_models.engine.distributed.RankLostError`."""
        self._fit_completed = False
        with self.dist.failures():
            try:
                self.on_fit_start()
                yield from self._emit([self._fit_start_event()])
                while not (self._agreed_stop() or self._stop_requested()):
                    self.on_epoch_start()
                    for batch in self.train_loader:
                        losses = self.training_step(batch)
                        yield from self._emit(self.on_batch_end(losses))
                        if self._stop_requested():
                            break
                    else:  # the epoch ran to its end
                        yield from self._emit(self.on_train_epoch_end())
                        yield from self._emit(self.validate())
                        yield from self._emit(self.on_epoch_end())
                self._fit_completed = True
            finally:
                self.on_fit_end()
        done = self._done_event()
        for hook in self.hooks:
            hook.on_event(self, done)
        yield done

    # ------------------------------------------------------------------------------- hooks

    def on_fit_start(self) -> None:
        """Device, process group, text checks, optimizer, loaders, resume, seeds."""
        cfg = self.config
        self.should_stop = self.stopped_early = self._stopped_by_cancel = False
        self.epochs_run = 0
        self.device = self.dist.setup(cfg.device)
        raw = unwrap(self.model)
        self.use_text = resolve_use_text(raw, self.text_encoder, cfg.use_text)
        self.click_training = ClickTraining(iterations=cfg.clicks) if cfg.clicks else None
        if self.click_training is not None and not reads_prompts(raw):
            raise ValueError(
                "training with clicks needs a model with prompt inputs: "
                "create_model(name, prompts=True)"
            )
        self.check_datasets()
        if cfg.out is not None and not getattr(raw, "model_name", None):
            raise CheckpointError(
                "the model has no model_name, so its checkpoints could not rebuild it: "
                "build it with src_models.models.create_model()"
            )
        self.amp = bool(cfg.amp and self.device.type == "cuda")
        self.cpu_bf16 = bool(cfg.cpu_bf16 and self.device.type == "cpu" and cpu_has_native_bf16())
        state = None
        if self.resume_from is not None:
            weights, state_file = resolve_resume(self.resume_from)
            meta = load_weights_into(raw, weights)
            state = load_train_state(state_file)
            step = meta.get("training", {}).get("global_step")
            if step is not None and step != state.get("global_step"):
                raise CheckpointError(
                    f"{weights} and {state_file} are from different steps ({step} vs "
                    f"{state.get('global_step')}); the run was interrupted while saving"
                )
        else:
            _seed_everything(cfg.seed)
        raw.to(self.device)
        self.model = raw
        self.ddp_model = self.dist.wrap(raw)  # the model itself; the name is historical
        if cfg.compile:
            self.ddp_model = torch.compile(self.ddp_model)
        self.optimizer, self.scheduler = self.configure_optimizers()
        use_scaler = self.amp and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.train_loader, self.train_sampler = self.build_train_loader()
        self.val_loader = self.build_val_loader()
        if state is not None:
            self.load_state(state)
        for hook in self.hooks:
            hook.on_fit_start(self)

    def check_datasets(self) -> None:
        """Fail early and clearly: every item needs a text (text runs) and a mask.

        A semi-supervised subclass overrides this to accept training items without a mask.
        """
        for data in (self.train_set, self.val_set):
            if data is None:
                continue
            if self.use_text:
                check_texts(data)
            check_masks(data)

    def check_texts_and_val_masks(self) -> None:
        """The checks for training items that may lack a mask (semi-supervised subclasses):
        every item of both sets needs a text (text runs), every validation item a mask."""
        for data in (self.train_set, self.val_set):
            if data is not None and self.use_text:
                check_texts(data)
        if self.val_set is not None:
            check_masks(self.val_set)

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, Any]:
        """Adam + CosineAnnealingWarmRestarts (stepped once per epoch); the prompt adapter's
        parameters in a group of their own at ``prompt_lr_scale`` times the rate."""
        cfg = self.config
        prompt, rest = [], []
        for name, param in unwrap(self.model).named_parameters():
            if param.requires_grad:
                (prompt if name.startswith(ADAPTER_NAME + ".") else rest).append(param)
        groups = [{"params": rest}]
        if prompt:
            groups.append({"params": prompt, "lr": cfg.lr * cfg.prompt_lr_scale})
        opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=cfg.t0, eta_min=cfg.min_lr
        )
        return opt, sched

    def build_train_loader(self) -> tuple[DataLoader, Any]:
        """Shuffled by a sampler whose order depends only on (seed, epoch): exact resume."""
        from src_models.data import collate

        cfg = self.config
        index = self.train_index()
        sampler = self.dist.train_sampler(len(self.train_set if index is None else index), cfg.seed)
        if index is not None:
            sampler = _IndexedSampler(sampler, index)
        self._train_generator = torch.Generator()  # worker seeds; reseeded every epoch
        loader = DataLoader(
            self.train_set,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.num_workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            drop_last=cfg.drop_last,
            generator=self._train_generator,
        )
        if len(loader) == 0:
            raise ValueError(
                f"no training batches: {len(self.train_set)} images, batch_size {cfg.batch_size}"
                + (", drop_last" if cfg.drop_last else "")
            )
        return loader, sampler

    def train_index(self) -> Sequence[int] | None:
        """The items of one training epoch, as indices into the training set (repeats allowed).

        ``None`` (the default) is every item once. A subclass may oversample, e.g. the labeled
        items of a partly labeled set.
        """
        return None

    def build_val_loader(self) -> DataLoader | None:
        from src_models.data import collate

        if self.val_set is None:
            return None
        return DataLoader(
            self.val_set,
            batch_size=self.config.val_batch_size,
            sampler=self.dist.eval_sampler(len(self.val_set)),
            num_workers=self.config.num_workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def on_epoch_start(self) -> None:
        """Set the epoch on sampler and dataset (augmentation), reset epoch sums."""
        epoch = self.epoch + 1
        self.train_sampler.set_epoch(epoch)
        self._train_generator.manual_seed(self.config.seed * 100_003 + epoch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        self.model.train()
        self._epoch_sums = {}
        self._epoch_batches = 0
        self._epoch_t0 = time.perf_counter()
        self._last_val = None
        self._improved = False
        for hook in self.hooks:
            hook.on_epoch_start(self, epoch)

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Move a collated batch to the device; add ``text_tokens``/``text_mask`` for text runs."""
        return prepare_batch(batch, self.device, self.text_encoder, self.use_text)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Logits ``[B, 1, S, S]`` of the (possibly DDP-wrapped) model for a prepared batch;
        with ``config.clicks``, after simulated clicks (their RNG: seed, step and rank)."""
        if self.click_training is not None:
            rng = np.random.default_rng((self.config.seed, self.global_step, self.dist.rank))
            logits, self._corrected = self.click_training.forward(self.ddp_model, batch, rng)
            return logits
        return model_forward(self.ddp_model, batch)

    def click_terms(self, batch: dict[str, Any], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss on the regions the simulated correction clicks pointed at (this rank's
        rows: a mean per item, so averaging the gradients makes it global); ``{}`` without
        clicks or with ``ClickTraining.corrected_weight`` 0."""
        clicks = self.click_training
        if clicks is None or not clicks.corrected_weight or self._corrected is None:
            return {}
        corrected, self._corrected = self._corrected, None
        return {"clicked": clicks.corrected_loss(logits, batch["mask"], corrected)}

    def compute_loss(self, batch: dict[str, Any], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named scalar loss terms; their sum is backpropagated (the name "loss" is reserved).

        Override to add terms (call ``super().compute_loss`` for the supervised ones). ``batch``
        holds the collated items on the device (``image``, ``mask``, ``text``, ``name``,
        ``index``, and ``text_tokens``/``text_mask`` in text runs).
        """
        batch, logits = self.loss_rows(batch, logits)
        return self.supervised_terms(logits, self.targets(batch))

    def loss_rows(
        self, batch: dict[str, Any], logits: torch.Tensor
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """``(batch, logits)`` as loss terms normalised over the batch must see them: on N ranks
        with every rank's rows (:func:`~src_models.engine.sync.gather_rows`: differentiable,
        rank order), so that the class-balanced BCE or a mean over the labeled rows is that of
        the global batch. Gathered: the logits and every tensor with one row per item except
        the model inputs (``image``, ``text_tokens``, ``text_mask``), which stay this rank's,
        as do lists (names, texts). Unchanged on one process. Terms that are means over images
        (CLCC's) can use the local rows instead: averaging the gradients makes them global."""
        b = int(logits.shape[0])
        rows = {
            k: v
            for k, v in batch.items()
            if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == b and k not in _MODEL_INPUTS
        }
        gathered = gather_rows({"logits": logits, **{f"batch.{k}": v for k, v in rows.items()}})
        out = dict(batch)
        out.update({k[len("batch.") :]: v for k, v in gathered.items() if k != "logits"})
        return out, gathered["logits"]

    def supervised_terms(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The supervised criterion's named terms: ``loss_fn.terms(logits, target)``, or
        ``{"seg": loss_fn(logits, target)}`` for a plain callable."""
        terms = getattr(self.loss_fn, "terms", None)
        if callable(terms):
            return dict(terms(logits, target))
        return {"seg": self.loss_fn(logits, target)}

    def model_losses(self) -> dict[str, torch.Tensor]:
        """Training-only terms the model computed in its last forward pass, already weighted.

        A model offers them through ``auxiliary_losses() -> dict[str, Tensor]`` (scalars; e.g.
        a reconstruction or contrastive objective of its own); they are added to the loss terms
        of :meth:`compute_loss`. ``{}`` for models without such terms.
        """
        get = getattr(self.model, "auxiliary_losses", None)
        return dict(get()) if callable(get) else {}

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """The segmentation targets ``[B, 1, S, S]`` in [0, 1] of a prepared batch: the masks.

        A semi-supervised subclass returns pseudo labels for the rows without a mask
        (``batch["has_mask"]`` False), looked up by ``batch["index"]``.
        """
        return batch["mask"]

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimizer step; returns the detached loss terms plus ``"loss"`` (their sum)."""
        batch = self.prepare_batch(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp, cpu_bf16=self.cpu_bf16):
            logits = self.forward(batch)
        # Read right after the forward that made them (a subclass may run the model again).
        model_terms = self.model_losses()
        model_terms.update(self.click_terms(batch, logits))
        terms = self.compute_loss(batch, logits)
        if not terms or "loss" in terms:
            raise ValueError("compute_loss must return named terms, none of them called 'loss'")
        clash = set(terms) & set(model_terms)
        if clash:
            raise ValueError(f"the model's auxiliary loss terms {sorted(clash)} clash with others")
        terms.update(model_terms)
        total = sum(terms.values())
        self.scaler.scale(total).backward()
        self.dist.average_gradients(self.model.parameters())
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        out = {k: v.detach() for k, v in terms.items()}
        out["loss"] = total.detach()
        return out

    def on_batch_end(self, losses: dict[str, torch.Tensor]) -> list[Event]:
        self.global_step += 1
        self._epoch_batches += 1
        for k, v in losses.items():
            self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + v.float()
        n_batches = len(self.train_loader)
        if self._epoch_batches % self.config.log_every and self._epoch_batches != n_batches:
            return []
        values = {k: float(v) for k, v in losses.items()}
        total = values.pop("loss")
        return [
            BatchEnd(
                epoch=self.epoch + 1,
                step=self.global_step,
                loss=total,
                lr=self.lr,
                losses=values,
                batch=self._epoch_batches,
                batches=n_batches,
            )
        ]

    def on_train_epoch_end(self) -> list[Event]:
        """Epoch means of the loss terms (over all ranks); BatchNorm statistics synced."""
        self.dist.sync_buffers(self.model)
        keys = sorted(self._epoch_sums)
        sums = self.dist.all_reduce_sum(
            [float(self._epoch_sums[k]) for k in keys] + [float(self._epoch_batches)]
        )
        count = max(sums[-1], 1.0)
        means = {k: s / count for k, s in zip(keys, sums[:-1], strict=True)}
        total = means.pop("loss", float("nan"))
        seconds = time.perf_counter() - self._epoch_t0
        self._epoch_summary = {
            "train_loss": total,
            "losses": means,
            "lr": self.lr,
            "seconds": seconds,
        }
        return [
            EpochEnd(
                epoch=self.epoch + 1, train_loss=total, losses=means, lr=self.lr, seconds=seconds
            )
        ]

    def validation_due(self, epoch: int) -> bool:
        if self.val_loader is None:
            return False
        return epoch % self.config.val_every == 0 or epoch >= self.config.epochs

    @torch.no_grad()
    def validate(self) -> list[Event]:
        """Mean per-image Dice/IoU on the validation set (over all ranks); tracks the best."""
        epoch = self.epoch + 1
        if not self.validation_due(epoch):
            return []
        model = self.model  # unwrapped: ranks may run different numbers of batches
        model.eval()
        sums = [0.0, 0.0, 0.0]
        try:
            for _, dice, iou, labelled in iter_scores(
                model,
                self.val_loader,
                self.device,
                self.text_encoder,
                self.use_text,
                self.config.threshold,
                self.amp,
            ):
                sums[0] += float(dice[labelled].sum())
                sums[1] += float(iou[labelled].sum())
                sums[2] += int(labelled.sum())
        finally:
            model.train()
        total_dice, total_iou, n = self.dist.all_reduce_sum(sums)
        dice = total_dice / n if n else float("nan")
        iou = total_iou / n if n else float("nan")
        self._last_val = {"dice": dice, "iou": iou}
        self._improved = self.best_dice is None or dice > self.best_dice
        if self._improved:
            self.best_dice, self.best_epoch = dice, epoch
            self.epochs_since_best = 0
        else:
            self.epochs_since_best += self.config.val_every
        return [
            ValidationEnd(
                epoch=epoch,
                dice=dice,
                iou=iou,
                best=self.best_dice,
                improved=self._improved,
                n=int(n),
            )
        ]

    def on_epoch_end(self) -> list[Event]:
        """Scheduler step, history, early stopping, hooks, checkpoints."""
        epoch = self.epoch + 1
        self.scheduler.step()
        self.epoch = epoch
        self.epochs_run += 1
        record = {"epoch": epoch, **self._epoch_summary}
        if self._last_val is not None:
            record.update(val_dice=self._last_val["dice"], val_iou=self._last_val["iou"])
        self.history.append(record)
        if self.epoch >= self.config.epochs:
            self.should_stop = True
        elif self.val_loader is not None and self.epochs_since_best >= self.config.patience:
            self.should_stop = self.stopped_early = True
        for hook in self.hooks:
            hook.on_epoch_end(self, epoch)
        return self.save_checkpoints()

    def save_checkpoints(self) -> list[Event]:
        """Rank 0: the best (or, without validation, the latest) weights to ``config.out``;
        the latest with its training state to ``<stem>.last.*``. Saved last in the epoch, after
        everything that uses random numbers, so that a resumed run continues exactly."""
        out = self.config.out
        if out is None or not self.is_main:
            return []
        events: list[Event] = []
        dice = None if self._last_val is None else self._last_val["dice"]
        if self.val_loader is None or self._improved:
            path = save_checkpoint(out, self.model, self.checkpoint_meta("best"))
            events.append(CheckpointSaved(str(path), self.epoch, dice, kind="best"))
        if self.config.save_last:
            last = last_checkpoint_path(out)
            save_train_state(train_state_path(last), self.state_dict())
            path = save_checkpoint(last, self.model, self.checkpoint_meta("last"))
            events.append(CheckpointSaved(str(path), self.epoch, dice, kind="last"))
        return events

    def on_fit_end(self) -> None:
        for hook in self.hooks:
            hook.on_fit_end(self)
        self.dist.release(self.model)
        self.model.eval()
        # Ranks meet before leaving the group only after a normal end: after an error on one
        # rank the others would wait at that barrier for the collective timeout.
        self.dist.teardown(synchronize=getattr(self, "_fit_completed", False))

    # ----------------------------------------------------------------- state for exact resume

    def checkpoint_meta(self, kind: str) -> dict[str, Any]:
        """Metadata stored with a checkpoint (see :func:`~src_models.engine.save_checkpoint`);
        ``working_resolution`` when the training set has one (how images reached the model:
        :class:`~src_models.data.patches.WorkingResolution`, which prediction then follows),
        and ``window`` (level, width in HU) when its images went through one CT window (the
        Predictor's default then)."""
        res = getattr(self.train_set, "resolution", None)
        extra = {"working_resolution": res.to_dict()} if hasattr(res, "to_dict") else {}
        window = getattr(self.train_set, "window", None)
        if window is not None:
            extra["window"] = [float(window[0]), float(window[1])]
        return {
            **extra,
            "text_encoder": getattr(self.text_encoder, "id", None) if self.use_text else None,
            # a text model trained with --no-text reads no text: its checkpoint says so
            "uses_text": bool(getattr(unwrap(self.model), "uses_text", False)) and self.use_text,
            "threshold": self.config.threshold,
            "training": {
                "kind": kind,
                "epoch": self.epoch,
                "global_step": self.global_step,
                "best_epoch": self.best_epoch,
                "best_dice": self.best_dice,
                "metrics": dict(self._last_val or {}),
                "data": {
                    "n_train": len(self.train_set),
                    "n_val": 0 if self.val_set is None else len(self.val_set),
                    "world_size": self.dist.world_size,
                },
                # the output path is local to this machine: not part of a shared checkpoint
                "config": {k: v for k, v in self.config.to_dict().items() if k != "out"},
                "history": self.history,
            },
        }

    def extra_state(self) -> dict[str, Any]:
        """Subclass state to resume exactly (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state`."""

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights needed to continue exactly (weights_only-safe)."""
        return to_weights_only(
            {
                "epoch": self.epoch,
                "global_step": self.global_step,
                "best_dice": self.best_dice,
                "best_epoch": self.best_epoch,
                "epochs_since_best": self.epochs_since_best,
                "history": self.history,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": capture_rng_state(),
                "config": self.config.to_dict(),
                "extra": self.extra_state(),
            }
        )

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after the weights, optimizer and loaders exist)."""
        old_seed = state.get("config", {}).get("seed", self.config.seed)
        if old_seed != self.config.seed:
            warnings.warn(
                f"resuming with seed {self.config.seed}, but the run was started with seed "
                f"{old_seed}: the data order will differ from an uninterrupted run",
                stacklevel=2,
            )
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:  # other parameter groups: a state from another version
            raise CheckpointError(
                f"the training state does not fit this model's optimizer ({err}); it was "
                "written by another version: start a new run from the checkpoint's weights"
            ) from err
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_dice = state["best_dice"]
        self.best_epoch = state["best_epoch"]
        self.epochs_since_best = int(state["epochs_since_best"])
        self.history = list(state.get("history", []))
        self.load_extra_state(state.get("extra", {}))
        if self.epoch >= self.config.epochs:
            self.should_stop = True
        elif self.val_loader is not None and self.epochs_since_best >= self.config.patience:
            self.should_stop = self.stopped_early = True
        restore_rng_state(state["rng"])  # last: nothing may draw random numbers after it

    # ------------------------------------------------------------------------------ helpers

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _agreed_stop(self) -> bool:
        # Early stopping agrees by itself (the validation metrics are reduced), but a caller
        # may set should_stop on one rank only (a time budget measured on rank 0's clock).
        return self.dist.any(self.should_stop)

    def _stop_requested(self) -> bool:
        # Collective in distributed runs, so that every rank stops at the same batch.
        if self.dist.any(self._cancel.is_set()):
            self._stopped_by_cancel = True
        return self._stopped_by_cancel

    def _emit(self, events: Iterable[Event]) -> Iterator[Event]:
        for event in events:
            for hook in self.hooks:
                hook.on_event(self, event)
            if self.is_main:
                yield event

    def _fit_start_event(self) -> FitStart:
        return FitStart(
            epochs=self.config.epochs,
            start_epoch=self.epoch + 1,
            steps_per_epoch=len(self.train_loader),
            n_train=len(self.train_set),
            n_val=0 if self.val_set is None else len(self.val_set),
            device=str(self.device),
            world_size=self.dist.world_size,
        )

    def _done_event(self) -> TrainingDone:
        out = self.config.out
        checkpoint = out if out is not None and Path(out).is_file() else None
        return TrainingDone(
            epochs_run=self.epochs_run,
            best_dice=self.best_dice,
            stopped_early=self.stopped_early,
            cancelled=self._stopped_by_cancel,
            best_epoch=self.best_epoch,
            last_epoch=self.epoch,
            checkpoint=checkpoint,
        )


#: Batch entries that stay on their rank in :meth:`Trainer.loss_rows` (the model's inputs).
_MODEL_INPUTS = frozenset({"image", "text_tokens", "text_mask"})


class _IndexedSampler(Sampler):
    """Draws positions from a (seed, epoch)-shuffled sampler and maps them through ``index``."""

    def __init__(self, inner: Any, index: Sequence[int]) -> None:
        self.inner = inner
        self.index = [int(i) for i in index]

    def __iter__(self):
        return (self.index[i] for i in self.inner)

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


__all__ = ["Callback", "TrainConfig", "Trainer"]

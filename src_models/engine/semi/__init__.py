"""Semi-supervised retraining in rounds: EPI pseudo labels + the LV loss around the Trainer.

::

    semi = SemiTrainer(model, train_set, val_set, text_encoder,
                       TrainConfig(epochs=20, out="run/model.safetensors"),
                       SemiConfig(rounds=3, round_epochs=8, lv_weight=0.1))
    for event in semi.fit():         # RoundStart, PseudoLabelProgress, the inner trainer's
        print(format_semi_event(event))  # events, RoundEnd, ..., SemiDone
    semi.cancel()                    # from anywhere: stops at the next event

``train_set`` is one :class:`~src_models.data.SegmentationDataset` in which the items with
``has_mask`` False are the unlabeled images (e.g. built from records whose ``mask_path`` is
``None``, see :func:`split_labeled`). The rounds:

- **round 0** trains on the labeled images only (``SemiConfig.round0_epochs``; 0 skips it when
  the model is already trained, e.g. a GUI retrain that starts from the current checkpoint);
- **round r >= 1**: the model predicts every unlabeled image (no augmentation, model size);
  each pseudo label is EPI-updated in the :class:`~src_models.engine.semi.bank.PseudoLabelBank`
  (``P_t = beta_t P_(t-1) + (1 - beta_t) Phat_t``, bias-corrected schedule by default: see
  that module for why ``beta = 0.99`` needs it with a handful of rounds); the LV references
  (most text-similar labeled image or template) are matched once; then the model trains
  ``round_epochs`` epochs on labeled + pseudo-labeled images.

Every round is one ordinary :class:`~src_models.engine.Trainer` run (:class:`EPIRoundTrainer`,
a subclass that only overrides hooks): same optimizer recipe (fresh Adam + cosine schedule per
round, i.e. a warm restart; ``t0`` is capped at the round's length and rounds >= 1 may use a
lower ``SemiConfig.round_lr``), validation, early stopping, checkpoints and exact resume. Between
rounds the model keeps the round's best weights by validation Dice (``carry_best``); the best
model of all rounds is saved to ``TrainConfig.out`` and left in ``model`` at the end.

The loss of a round r >= 1 (terms as logged in ``BatchEnd.losses``):

- ``dice``, ``bce``: the supervised loss (``loss_fn``, default 0.5 Dice + 0.5 balanced BCE) on
  the labeled rows of the batch;
- ``unl_dice``, ``unl_bce``: ``ramp * unlabeled_weight * 0.5 * (Dice + balanced BCE)`` against
  the pseudo label, over the pixels whose pseudo label is confident, ``|P - 0.5| >= margin``
  (the margin drops the pixels where the rounds disagree: the averaged label sits near 0.5
  there). Defaults: soft targets (``hard=False``), ``margin=0.1``, ``unlabeled_weight=0.5``.
  Soft targets keep the EPI average's uncertainty instead of turning it into confident errors;
  on the synthetic benchmark hardening at 0.5 with ``margin=0.2`` and weight 1 was not better
  (within the noise, see ``benchmarks/bench_semi.py``). ``hard=True`` hardens at 0.5.
- ``lv``: ``ramp * lv_weight * (1 - cos(sigmoid(logits), reference mask))`` for unlabeled rows
  with a reference (:mod:`src_models.losses.lv`).

``ramp`` is the sigmoid ramp-up ``exp(-5 (1 - x)^2)``, ``x`` = semi-supervised epochs so far /
``ramp_epochs`` (counted across rounds, so it ramps in once, during the first EPI round).

Pseudo labels and the LV reference are geometrically augmented together with their image (as
extra image channels, so the same random draw moves all of them), which keeps targets aligned
with augmented inputs. Images flagged "no lesion" (``no_lesion`` names) get an all-zero pseudo
label (every pixel confident background) and no LV term.

With ``SemiConfig.clcc`` set (a :class:`~src_models.engine.clcc.CLCCConfig`), every round's
trainer also adds CLCC's terms (``clcc_contrast`` during the first third of all rounds' epochs,
``clcc_consistency`` after; see :mod:`src_models.engine.clcc`).

Restart: with ``TrainConfig.out`` set, ``<stem>.semi.json`` records finished rounds and the
bank records its updates, so ``SemiTrainer(..., resume=True)`` continues with the next round (a
round interrupted mid-way resumes exactly from its last epoch via the Trainer's own resume; a
bank update interrupted mid-way is discarded and redone).

Under ``torchrun --nproc_per_node=N`` (gloo on the CPU, NCCL on GPUs) every rank runs the same
rounds: each round's steps are those of one process with N times the batch (BatchNorm and the
loss over the global batch, gradients averaged: :mod:`src_models.engine.sync`), the pseudo-label
pass is sharded over the ranks and gathered on rank 0, which alone writes the bank (the others
open it read-only and reload it after each update), the checkpoints and ``.semi.json``; events
come from rank 0. The bank folder, ``out`` and the data must be on a filesystem every rank
sees. A rank that dies ends the others with a one-line
:class:`~src_models.engine.distributed.RankLostError`; the files stay whole, and ``resume=True``
continues.

The modules: :mod:`~.config` (:class:`SemiConfig`), :mod:`~.events` (the round events,
:func:`format_semi_event`), :mod:`~.data` (:func:`split_labeled`, the round datasets),
:mod:`~.bank` (the EPI pseudo-label bank), :mod:`~.pseudo` (the EPI update, LV references),
:mod:`~.round_trainer` (:class:`EPIRoundTrainer`, :class:`CLCCRoundTrainer`), :mod:`~.run` (a
run's state and files) and :mod:`~.rounds` (:class:`SemiTrainer`, the rounds loop).
"""

from src_models.engine.semi.bank import SCHEDULES, BankUpdate, PseudoLabelBank, epi_beta, epi_update
from src_models.engine.semi.config import SemiConfig
from src_models.engine.semi.data import LabeledUnlabeledSet, bank_keys, semi_collate, split_labeled
from src_models.engine.semi.events import (
    PseudoLabelProgress,
    RoundEnd,
    RoundStart,
    SemiDone,
    SemiEvent,
    format_semi_event,
)
from src_models.engine.semi.round_trainer import CLCCRoundTrainer, EPIRoundTrainer, sigmoid_rampup
from src_models.engine.semi.rounds import SemiTrainer

__all__ = [
    "SCHEDULES",
    "BankUpdate",
    "CLCCRoundTrainer",
    "EPIRoundTrainer",
    "LabeledUnlabeledSet",
    "PseudoLabelBank",
    "PseudoLabelProgress",
    "RoundEnd",
    "RoundStart",
    "SemiConfig",
    "SemiDone",
    "SemiEvent",
    "SemiTrainer",
    "bank_keys",
    "epi_beta",
    "epi_update",
    "format_semi_event",
    "semi_collate",
    "sigmoid_rampup",
    "split_labeled",
]

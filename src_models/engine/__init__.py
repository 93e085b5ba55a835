"""Training engine: the event-driven trainer, evaluation, checkpoints, distributed helpers.

Pure PyTorch; never imports napari or Qt.
"""

from src_models.engine.callbacks import KeepBest
from src_models.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_train_state,
    load_weights_into,
    read_checkpoint_meta,
    save_checkpoint,
    save_train_state,
)
from src_models.engine.distributed import (
    DistEnv,
    Distributed,
    RankLostError,
    detect_env,
    unwrap,
)
from src_models.engine.evaluate import evaluate, evaluate_native
from src_models.engine.events import (
    BatchEnd,
    CheckpointSaved,
    EpochEnd,
    Event,
    FitStart,
    TrainingDone,
    ValidationEnd,
    format_event,
)
from src_models.engine.trainer import Callback, TrainConfig, Trainer

__all__ = [
    "BatchEnd",
    "Callback",
    "CheckpointError",
    "CheckpointSaved",
    "DistEnv",
    "Distributed",
    "EpochEnd",
    "Event",
    "FitStart",
    "KeepBest",
    "RankLostError",
    "TrainConfig",
    "Trainer",
    "TrainingDone",
    "ValidationEnd",
    "detect_env",
    "evaluate",
    "evaluate_native",
    "format_event",
    "load_checkpoint",
    "load_train_state",
    "load_weights_into",
    "read_checkpoint_meta",
    "save_checkpoint",
    "save_train_state",
    "unwrap",
]

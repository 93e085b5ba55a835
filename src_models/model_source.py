"""What a model source names, resolved in one place: ``"default"`` (the shipped checkpoint),
``"auto"`` (``default`` if shipped, else a new ``lvit_s`` at 128 px), a checkpoint file, or a
registry name (a new, untrained model, with overrides such as ``img_size``).

Used by :func:`src_models.inference.load_model` (Predict), the project's retraining rounds
(:mod:`src_models.project.retrain`) and ``napari-lvit train``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AUTO_IMG_SIZE",
    "AUTO_MODEL",
    "DEFAULT_CHECKPOINT",
    "OpenedModel",
    "open_model",
    "resolve_checkpoint",
]

DEFAULT_CHECKPOINT = Path(__file__).parent / "weights" / "default.safetensors"
#: Registry model and size of ``"auto"`` when no checkpoint is shipped.
AUTO_MODEL = "lvit_s"
AUTO_IMG_SIZE = 128
KINDS = ("checkpoint", "registry")


def resolve_checkpoint(source: str | Path) -> Path | None:
    """The checkpoint file that ``source`` names, or None if it names a registry model."""
    if str(source) == "default":
        if not DEFAULT_CHECKPOINT.is_file():
            raise FileNotFoundError(
                f"the default checkpoint is missing from the installation ({DEFAULT_CHECKPOINT})"
            )
        return DEFAULT_CHECKPOINT
    path = Path(source).expanduser()
    if path.suffix == ".safetensors" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return path
    return None


@dataclass
class OpenedModel:
    """A model and its metadata; ``checkpoint`` is the file it was loaded from (None: a new
    registry model, then ``text_encoder`` is the encoder whose width it was built for)."""

    model: Any
    meta: dict[str, Any]
    checkpoint: Path | None
    text_encoder: Any = None

    @property
    def new(self) -> bool:
        return self.checkpoint is None


def open_model(
    source: str | Path,
    *,
    text_encoder: Any = None,
    img_size: int | None = None,
    kinds: tuple[str, ...] = KINDS,
) -> OpenedModel:
    """The model ``source`` names, on the CPU (see the module docstring).

    A new registry model gets ``text_dim`` from ``text_encoder`` (a
    :class:`~src_models.text.TextEncoder`, or an encoder id built only when needed) and
    ``img_size`` when given (``"auto"`` defaults it to :data:`AUTO_IMG_SIZE`). ``kinds``
    narrows what ``source`` may name: ``("checkpoint",)`` or ``("registry",)``.
    """
    from src_models.engine.checkpoint import load_checkpoint
    from src_models.models import create_model, is_model, list_models

    if str(source) == "auto":
        source = "default" if DEFAULT_CHECKPOINT.is_file() else AUTO_MODEL
        if source == AUTO_MODEL and img_size is None:
            img_size = AUTO_IMG_SIZE
    path = resolve_checkpoint(source) if "checkpoint" in kinds else None
    if path is not None:
        model, meta = load_checkpoint(path, device="cpu")
        return OpenedModel(model, meta, path)
    name = str(source)
    if "registry" not in kinds:
        raise FileNotFoundError(f"checkpoint not found: {source}")
    if "checkpoint" in kinds and not is_model(name):
        raise ValueError(
            f"{name!r} is neither a checkpoint file nor a registered model "
            f"({', '.join(list_models())})"
        )
    if isinstance(text_encoder, str):
        from src_models.text import TextEncoder

        text_encoder = TextEncoder(text_encoder)
    overrides: dict[str, Any] = {}
    if text_encoder is not None:
        overrides["text_dim"] = text_encoder.dim
    if img_size is not None:
        overrides["img_size"] = int(img_size)
    model = create_model(name, **overrides)
    meta = {"model_name": name, "model_config": model.model_config, "threshold": 0.5}
    if text_encoder is not None and getattr(model, "uses_text", False):
        meta["text_encoder"] = text_encoder.id
    return OpenedModel(model, meta, None, text_encoder)

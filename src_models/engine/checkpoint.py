"""Checkpoints: one ``.safetensors`` file that rebuilds its own model, plus an optional sidecar
``<stem>.train_state.pt`` that resumes training exactly.

The weights file holds the model's tensors and, in the safetensors header metadata under the key
``"napari_lvit"``, a JSON object::

    {"format": "napari-lvit-checkpoint", "format_version": 1,
     "model_name": "lvit_tiny", "model_config": {...}, "uses_text": true,
     "text_encoder": "all-MiniLM-L6-v2" | null, "text_dim": 384,
     "img_size": 64, "in_chans": 3, "normalisation": "scale01", "threshold": 0.5,
     "reads_prompts": false,
     "training": {...}, "versions": {"torch": ..., "src_models": ...}, "created": "<ISO time>"}

Loading never unpickles anything: safetensors holds only tensors and strings, and the training
state is read with ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts).

A model with prompt inputs (clicks, box, previous mask: :mod:`src_models.models.prompts`) has
``"prompts": true`` in its ``model_config`` and ``"reads_prompts": true``; checkpoints written
before prompts existed have neither and load as the plain model they always were. The weights of
such a checkpoint also load into a prompted model (:func:`load_weights_into`): its adapter keeps
its zero start, so the prompted model predicts what the checkpoint did.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import src_models
from src_models.engine.distributed import unwrap
from src_models.errors import UserError

META_KEY = "napari_lvit"
#: The state-dict prefix of a prompted model's adapter (:mod:`src_models.models.prompts`).
ADAPTER_PREFIX = "prompt_adapter."
FORMAT = "napari-lvit-checkpoint"
FORMAT_VERSION = 1
TRAIN_STATE_SUFFIX = ".train_state.pt"
TRAIN_STATE_VERSION = 1


class CheckpointError(UserError, ValueError):
    """A file that cannot be used as a napari-lvit checkpoint; the message says why."""


# ---------------------------------------------------------------------------------------------
# paths and atomic writes


def train_state_path(path: str | os.PathLike) -> Path:
    """``runs/model.safetensors`` -> ``runs/model.train_state.pt``."""
    p = Path(path)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.stem
    return p.with_name(stem + TRAIN_STATE_SUFFIX)


def last_checkpoint_path(path: str | os.PathLike) -> Path:
    """``runs/model.safetensors`` -> ``runs/model.last.safetensors`` (the latest epoch)."""
    p = Path(path)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.stem
    return p.with_name(stem + ".last.safetensors")


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder (so os.replace is atomic), created with default
    # permissions (mkstemp would make it private to the user).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _jsonable(obj: Any) -> Any:
    """Plain JSON types from configs (paths, tuples, numpy scalars, dataclasses)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.device | torch.dtype):
        return str(obj)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in checkpoint metadata: {obj!r}")


# ---------------------------------------------------------------------------------------------
# weights + metadata (.safetensors)


def build_meta(model: nn.Module, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full metadata of ``model``: what the model says about itself, updated by ``meta``."""
    model = unwrap(model)
    name = getattr(model, "model_name", None)
    if not name:
        raise CheckpointError(
            "the model has no model_name: build it with src_models.models.create_model() so "
            "that the checkpoint can rebuild it"
        )
    uses_text = bool(getattr(model, "uses_text", False))
    base: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": name,
        "model_config": dict(getattr(model, "model_config", {}) or {}),
        "uses_text": uses_text,
        "text_encoder": None,
        "text_dim": getattr(model, "text_dim", None),
        "img_size": getattr(model, "img_size", None),
        "in_chans": getattr(model, "in_chans", None),
        "normalisation": "scale01",
        "threshold": 0.5,
        "reads_prompts": hasattr(model, ADAPTER_PREFIX[:-1]),
        "training": {},
        "versions": {"torch": torch.__version__, "src_models": src_models.__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    fixed = {
        k: base[k]
        for k in ("format", "format_version", "model_name", "model_config", "reads_prompts")
    }
    base.update(meta or {})
    base.update(fixed)  # what rebuilds the model always comes from the model itself
    return _jsonable(base)


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors; tensors sharing memory are cloned (safetensors refuses sharing)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in unwrap(model).state_dict().items():
        t = value.detach().cpu().contiguous()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.numel() and ident in seen:
            t = t.clone()
        seen.add(ident)
        out[key] = t
    return out


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s weights and metadata to ``path`` atomically; returns the path.

    ``meta`` entries (``text_encoder``, ``threshold``, ``training``, ...) update the defaults of
    :func:`build_meta`. A DDP-wrapped model is unwrapped.
    """
    from safetensors.torch import save_file

    full = build_meta(model, meta)
    tensors = _plain_state_dict(model)
    header = {META_KEY: json.dumps(full), "format": "pt"}
    return _atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=header))


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"checkpoint is not a file: {p}")
    return p


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a checkpoint without loading its weights."""
    from safetensors import safe_open

    p = _check_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise CheckpointError(
            f"{p} is not a safetensors file or it is corrupt ({type(exc).__name__}: {exc})",
            hint="copy it again, or give another checkpoint",
        ) from exc
    raw = header.get(META_KEY)
    if raw is None:
        raise CheckpointError(
            f"{p} is a safetensors file but not a napari-lvit checkpoint (no '{META_KEY}' "
            "metadata); napari-lvit can only load checkpoints that it wrote"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p}: the napari-lvit metadata is corrupt ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a napari-lvit checkpoint (unknown metadata format)")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p} was written by a newer napari-lvit (checkpoint format {version}, this version "
            f"reads up to {FORMAT_VERSION}); update napari-lvit"
        )
    for key in ("model_name", "model_config"):
        if key not in meta:
            raise CheckpointError(f"{p}: the checkpoint metadata has no '{key}'")
    _check_meta_values(p, meta)
    return meta


def _check_meta_values(p: Path, meta: dict[str, Any]) -> None:
    """The stored values a prediction uses as they are: a threshold strictly between 0 and 1
    (0, 1, NaN, -1 or 1e9 would give a full or an empty mask without a word), ``uses_text`` a
    boolean."""
    import math

    threshold = meta.get("threshold", 0.5)
    ok = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    if not (ok and math.isfinite(threshold) and 0.0 < threshold < 1.0):
        raise CheckpointError(
            f"{p}: its stored threshold must be a number from 0 to 1 (exclusive), got "
            f"{threshold!r}; the checkpoint is damaged",
            hint="pass --threshold to override it, or use another checkpoint",
        )
    if not isinstance(meta.get("uses_text", False), bool):
        raise CheckpointError(
            f"{p}: its stored 'uses_text' must be true or false, got {meta['uses_text']!r}"
        )


#: The most parameters a checkpoint's model may have (4 GB of float32 weights).
MAX_PARAMS = 1_000_000_000


def _check_finite_weights(p: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse weights holding NaN or infinite values (a training run that diverged)."""
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(
            f"{p}: {len(bad)} of its {len(tensors)} weight tensors hold NaN or infinite values "
            f"(e.g. {', '.join(bad[:3])}): the training run that wrote it diverged",
            hint="use another checkpoint, or retrain with a lower learning rate",
        )


def _build_checked(p: Path, name: str, config: dict[str, Any]) -> nn.Module:
    """``create_model(name, **config)`` after the config passed the registry's limits and a
    build on the meta device (no memory) counted at most :data:`MAX_PARAMS` parameters."""
    from src_models.models import create_model

    try:
        with torch.device("meta"):
            probe = create_model(name, **config)
        n_params = sum(t.numel() for t in probe.parameters())
        del probe
        if n_params > MAX_PARAMS:
            raise CheckpointError(
                f"{p}: its stored configuration describes a model of {n_params} parameters "
                f"(more than {MAX_PARAMS}, {4 * n_params / 1e9:.0f} GB); the checkpoint is "
                "damaged or not meant for napari-lvit"
            )
        return create_model(name, **config)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(
            f"{p}: model {name!r} cannot be built from the stored configuration ({exc})"
        ) from exc


def _read_tensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except Exception as exc:
        raise CheckpointError(
            f"{p}: the weights cannot be read, the file is corrupt or truncated "
            f"({type(exc).__name__}: {exc})",
            hint="copy it again, or give another checkpoint",
        ) from exc


def _check_weights_fit(
    model: nn.Module, tensors: dict[str, torch.Tensor], p: Path, name: str
) -> None:
    expected = unwrap(model).state_dict()
    if not any(k.startswith(ADAPTER_PREFIX) for k in tensors):
        # weights of a model without prompt inputs: a prompted model keeps its zero adapter
        expected = {k: v for k, v in expected.items() if not k.startswith(ADAPTER_PREFIX)}
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} weights of another shape (e.g. {'; '.join(shapes[:2])})")
    raise CheckpointError(
        f"{p}: the weights do not match model {name!r}: {', '.join(parts)}. "
        "Is this a checkpoint of another model or configuration?"
    )


def load_weights_into(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint's weights into an existing model (strictly); returns the metadata.

    The checkpoint must be of the same registered model as ``model``.
    """
    p = _check_file(path)
    meta = read_checkpoint_meta(p)
    target = unwrap(model)
    name = getattr(target, "model_name", None)
    if name is not None and name != meta["model_name"]:
        raise CheckpointError(f"{p} holds a {meta['model_name']!r} model, not a {name!r} model")
    tensors = _read_tensors(p)
    _check_weights_fit(target, tensors, p, meta["model_name"])
    _check_finite_weights(p, tensors)
    adapter = getattr(target, ADAPTER_PREFIX[:-1], None)
    if adapter is not None and not any(k.startswith(ADAPTER_PREFIX) for k in tensors):
        target.load_state_dict(tensors, strict=False)  # only the adapter's keys are absent
        with torch.no_grad():  # back to the zero start: the checkpoint's own masks
            adapter.project.weight.zero_()
    else:
        target.load_state_dict(tensors, strict=True)
    return meta


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device | None = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, load its weights; returns ``(model, meta)``.

    The model is in eval mode on ``device`` (``"auto"`` picks CUDA when available).
    """
    from src_models.device import resolve_device
    from src_models.models import is_model, list_models

    p = _check_file(path)
    meta = read_checkpoint_meta(p)
    name = meta["model_name"]
    if not is_model(name):
        raise CheckpointError(
            f"{p} needs model {name!r}, which this version of napari-lvit does not know "
            f"(known models: {', '.join(list_models())})"
        )
    model = _build_checked(p, name, meta["model_config"])
    tensors = _read_tensors(p)
    _check_weights_fit(model, tensors, p, name)
    _check_finite_weights(p, tensors)
    model.load_state_dict(tensors, strict=True)
    if meta.get("uses_text") is False and getattr(model, "uses_text", False):
        model.uses_text = False  # a text model trained with --no-text: it reads no text
    model.to(resolve_device(device)).eval()
    return model, meta


# ---------------------------------------------------------------------------------------------
# training state (sidecar, torch.save / torch.load(weights_only=True))


def capture_rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy (global) / Python ``random`` states as weights_only-safe objects."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": str(np_state["bit_generator"]),
            "key": [int(v) for v in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))


def to_weights_only(obj: Any) -> Any:
    """Convert numpy arrays/scalars, tuples, sets and paths to what ``weights_only`` loads."""
    if isinstance(obj, dict):
        return {k: to_weights_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_weights_only(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def save_train_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a training-state dict atomically (``torch.save``); returns the path."""
    payload = dict(state)
    payload["train_state_version"] = TRAIN_STATE_VERSION
    return _atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training state with ``torch.load(weights_only=True)`` on the CPU."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"training state not found: {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{p}: the training state cannot be read ({exc})") from exc
    if not isinstance(state, dict) or "train_state_version" not in state:
        raise CheckpointError(f"{p} is not a napari-lvit training state")
    if state["train_state_version"] > TRAIN_STATE_VERSION:
        raise CheckpointError(f"{p} was written by a newer napari-lvit; update napari-lvit")
    return state


def resolve_resume(path: str | os.PathLike) -> tuple[Path, Path]:
    """The (weights, training state) pair to resume from ``path``.

    ``path`` may be a checkpoint with its own sidecar, or the best checkpoint ``out`` of a run,
    in which case the run's latest epoch (``<stem>.last.safetensors``) is used.
    """
    p = _check_file(path)
    state = train_state_path(p)
    if state.is_file():
        return p, state
    last = last_checkpoint_path(p)
    if last.is_file() and train_state_path(last).is_file():
        return last, train_state_path(last)
    raise CheckpointError(
        f"cannot resume from {p}: no training state ({state.name}) next to it. The checkpoint "
        "can still initialise a new training run (fine-tuning), but not continue the old one"
    )

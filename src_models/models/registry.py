"""Model registry: ``@register_model``, ``create_model(name, **overrides)``, ``list_models()``.

Each registered function builds a model from keyword overrides of its family's config. The
model it returns carries ``model_name`` and ``model_config`` (a JSON-serialisable dict), so a
checkpoint can rebuild it with ``create_model(model_name, **model_config)``.

This module imports no model family (the family modules import it to register); the package
``src_models.models`` imports every family after it, as timm's ``__init__`` does, so any import
of this module (which imports the package first) sees every model registered.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
ConfigT = TypeVar("ConfigT")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model builder under its function name."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered models matching a glob pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _REGISTRY


#: The largest value a config field may take, by the end of its name: what any real model
#: stays far below, so that a stored config that is absurd (a width of 65536, a depth of 10^6)
#: is refused before anything is allocated.
CONFIG_LIMITS: dict[str, float] = {
    "img_size": 4096,
    "in_chans": 4,
    "width": 1024,
    "dim": 8192,
    "text_len": 1024,
    "heads": 64,
    "depth": 48,
    "ratio": 16.0,
}


def check_config(name: str, config: Any, where: str = "") -> None:
    """Refuse a config (a dict of fields, nested dicts allowed) with a value that is not a
    finite number where a number belongs, below 0, or above :data:`CONFIG_LIMITS`."""
    if not isinstance(config, dict):
        raise ValueError(f"the config of model {name!r} must be a mapping, got {config!r}")
    for key, value in config.items():
        field = f"{where}{key}"
        if isinstance(value, dict):
            check_config(name, value, f"{field}.")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        limit = next((v for k, v in CONFIG_LIMITS.items() if str(key).endswith(k)), None)
        if not math.isfinite(value) or value < 0 or (limit is not None and value > limit):
            bound = f" (at most {limit:g})" if limit is not None else ""
            raise ValueError(f"model {name!r}: {field} = {value!r} is not a sane value{bound}")


def create_model(name: str, prompts: bool = False, **overrides: Any) -> nn.Module:
    """Build the registered model ``name`` with config fields replaced by ``overrides``
    (checked against :data:`CONFIG_LIMITS` first).

    ``prompts=True`` adds click, box and previous-mask inputs
    (:func:`~src_models.models.prompts.add_prompt_inputs`; ``model_config["prompts"]`` then
    records it, so a checkpoint rebuilds the same model)."""
    if not isinstance(prompts, bool):
        raise ValueError(f"model {name!r}: prompts must be true or false, got {prompts!r}")
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    check_config(name, overrides)
    model = _REGISTRY[name](**overrides)
    model.model_name = name
    cfg = getattr(model, "config", None)
    model.model_config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
    if prompts:
        from src_models.models.prompts import add_prompt_inputs

        add_prompt_inputs(model)
    return model


def build_config(
    config_cls: type[ConfigT], defaults: dict[str, Any], overrides: dict[str, Any], family: str
) -> ConfigT:
    """A family's config dataclass from its variant's ``defaults`` replaced by ``overrides``;
    an unknown field is a TypeError that lists the valid ones."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(
            f"unknown {family} config field(s) {sorted(unknown)}; valid fields: {sorted(known)}"
        )
    return config_cls(**{**defaults, **overrides})

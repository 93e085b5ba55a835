"""Checks the commands run on their arguments before any work starts, so that a bad path fails
in a second with a clear message instead of after a model load or a training run, and no
command ever writes over one of its own inputs, the shipped model or a file it did not make."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from pathlib import Path

from src_models.errors import UserError

__all__ = [
    "check_model_source",
    "check_new_checkpoint",
    "check_output",
    "check_read_file",
    "positive_int",
    "probability",
    "same_file",
]


def probability(text: str) -> float:
    """argparse ``type``: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def add_mask_threshold(parser: argparse.ArgumentParser) -> None:
    """``--mask-threshold`` of the commands that read masks (``train``, ``evaluate``)."""
    parser.add_argument(
        "--mask-threshold",
        type=float,
        default=None,
        help="a mask value above this is lesion (default: masks must be 0/1, 0/255 or boolean)",
    )


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file (links and relative paths resolved)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


def check_read_file(path: str | os.PathLike, flag: str, what: str) -> Path:
    """``path`` must be an existing file (``flag`` and ``what`` name it in the message)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{flag} {p}: no such file", hint=f"give the path of {what}")
    if not p.is_file():
        raise UserError(f"{flag} {p}: not a file", hint=f"give the path of {what}")
    return p


Uses = Mapping[str, "str | os.PathLike | None"]


def check_output(
    path: str | os.PathLike,
    flag: str,
    suffixes: tuple[str, ...],
    uses: Uses | None = None,
) -> Path:
    """A file the command will write: one of ``suffixes``, not a folder, not one of the other
    files the command reads or writes (``uses``: what each is called -> its path, or None), and
    in a folder that exists or can be made."""
    from src_models.data.io import image_suffix

    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{flag} {p} is a folder", hint=f"give a file name ending in {suffixes[0]}")
    suffix = image_suffix(p)
    if suffix not in suffixes:
        raise UserError(
            f"{flag} {p}: unsupported file type '{suffix or '(no suffix)'}'",
            hint=f"use a name ending in {' or '.join(suffixes)}",
        )
    for what, other in (uses or {}).items():
        if other is not None and same_file(p, other):
            raise UserError(
                f"{flag} {p} is {what} of this command ({other}): it would be overwritten",
                hint=f"give {flag} another file name",
            )
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(
            f"{flag} {p}: cannot make its folder, '{folder}' is a file",
            hint="choose another place",
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {p}: '{folder}' is not writable", hint="choose another place")
    return p


def check_new_checkpoint(
    path: str | os.PathLike, flag: str = "--out", uses: Uses | None = None
) -> Path:
    """A checkpoint a command will write: a ``.safetensors`` file that is none of ``uses``
    (see :func:`check_output`) and not a shipped model; an existing file there must be a
    napari-lvit checkpoint (a run writes over its own earlier result, never anything else)."""
    from src_models import model_source
    from src_models.engine.checkpoint import CheckpointError, read_checkpoint_meta

    p = Path(path).expanduser()
    shipped = model_source.DEFAULT_CHECKPOINT
    if same_file(p, shipped) or p.resolve().parent == shipped.resolve().parent:
        raise UserError(
            f"{flag} {p} is inside the installed package (the shipped models live there)",
            hint="write the new checkpoint somewhere else",
        )
    check_output(p, flag, (".safetensors",), uses)
    if p.is_file():
        try:
            read_checkpoint_meta(p)
        except CheckpointError as exc:
            raise UserError(
                f"{flag} {p} exists and is not a napari-lvit checkpoint: it would be overwritten",
                hint="give a new file name, or move that file away",
            ) from exc
    return p


def check_model_source(source: str, flag: str = "--model") -> None:
    """``source`` names a model :func:`~src_models.model_source.open_model` can open: an
    existing napari-lvit checkpoint (its header is read, not its weights), ``default``,
    ``auto`` or a registered model."""
    from src_models.engine.checkpoint import read_checkpoint_meta
    from src_models.model_source import resolve_checkpoint

    path = resolve_checkpoint(source)
    if path is not None:
        read_checkpoint_meta(path)
        return
    if str(source) == "auto":
        return
    from src_models.models import is_model, list_models

    if not is_model(str(source)):
        raise UserError(
            f"{flag} {source!r} is neither a checkpoint file nor a registered model",
            hint=f"give a .safetensors file, 'default' or one of {', '.join(list_models())}",
        )

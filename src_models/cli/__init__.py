"""``napari-lvit``: every GUI action has a command-line twin.

    napari-lvit synth OUT --kind qata --n 200 --size 224 --seed 0
    napari-lvit train DATA --val VAL --model lvit_s --epochs 20 --out model.safetensors
    napari-lvit train DATA --val VAL --labeled-fraction 0.25 --semi epi --out semi.safetensors
    napari-lvit predict CKPT IMAGE --text "..." --out mask.tif
    napari-lvit predict CKPT IMAGES_OR_FOLDERS... --out-dir masks --texts text.csv
    napari-lvit evaluate CKPT DATA --json
    napari-lvit retrain PROJECT --rounds 1 --epochs 5 --jsonl
    napari-lvit retrain PROJECT --config - --jsonl < config.json   # RetrainConfig.to_json()
    napari-lvit export PROJECT --format nifti|dicom-seg|lvit OUT
    napari-lvit pseudo PROJECT --export DIR --accept-above 0.95   # EPI's pseudo labels
    napari-lvit pretrain DATA --out pre.safetensors --epochs 20 --model lvit_s
    napari-lvit train DATA --init pre.safetensors --labeled-fraction 0.1 --semi epi --clcc ...

The GUI commands (``demo``, ...) are added by ``napari_lvit._cli``, the console script.

Errors: :func:`main` is the command line's one error boundary. A bad input (any
:class:`~src_models.errors.UserError`, and the ``ValueError`` / ``OSError`` kinds that
:func:`~src_models.errors.describe` counts as the user's) ends as one line
``napari-lvit CMD: error: ...`` on stderr with exit code 2; usage errors too; anything else
is one line with exit code 1 and a hint to rerun with ``--debug`` (prints the traceback).

One module per command group: :mod:`.data` (``synth``), :mod:`.train` (``train``,
``pretrain``), :mod:`.predict` (``predict``, ``evaluate``, ``models``), :mod:`.retrain`
(``retrain``), :mod:`.export` (``export``) and :mod:`.pseudo` (``pseudo``);
``python -m src_models.cli`` runs :func:`main`
(:mod:`.__main__`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence

from .data import _add_synth, cmd_synth
from .export import _add_export, cmd_export
from .predict import _add_evaluate, _add_models, _add_predict, cmd_evaluate, cmd_models, cmd_predict
from .pseudo import _add_pseudo, cmd_pseudo
from .retrain import _add_retrain, cmd_retrain, retrain_config
from .train import _add_pretrain, _add_train, cmd_pretrain, cmd_train

__all__ = [
    "COMMANDS",
    "build_parser",
    "cmd_evaluate",
    "cmd_export",
    "cmd_models",
    "cmd_predict",
    "cmd_pretrain",
    "cmd_pseudo",
    "cmd_retrain",
    "cmd_synth",
    "cmd_train",
    "main",
    "retrain_config",
]


COMMANDS = (
    _add_synth,
    _add_train,
    _add_predict,
    _add_evaluate,
    _add_models,
    _add_retrain,
    _add_pretrain,
    _add_export,
    _add_pseudo,
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


DEBUG_HELP = "on an error, show the full traceback (for a bug report)"


def build_parser(extra_commands: Sequence[Callable] = ()) -> argparse.ArgumentParser:
    """The parser; ``extra_commands`` add subcommands (the napari side adds its GUI ones)."""
    parser = _Parser(prog="napari-lvit", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (*COMMANDS, *extra_commands):
        add(sub)
    parser.commands = sub.choices  # name -> the command's parser
    for command in sub.choices.values():  # `napari-lvit CMD ... --debug` works too
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
    return parser


def main(argv: list[str] | None = None, extra_commands: Sequence[Callable] = ()) -> int:
    """Run one command. The one error boundary of the command line: an error the user can act
    on (:func:`src_models.errors.describe`) is one line ``napari-lvit CMD: error: ...`` on
    stderr and exit code 2; any other exception is one line too, with a hint to rerun with
    ``--debug`` (which prints the traceback), and exit code 1."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser(extra_commands)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's own parser, which names the command
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        with _one_line_warnings(args.command), _rank_zero_speaks():
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from src_models.errors import describe

        if args.debug:
            traceback.print_exc()
        message, user_error = describe(exc)
        if not user_error and not args.debug:
            message += " (rerun with --debug to see the traceback, and report it)"
        print(f"napari-lvit {args.command}: error: {message}", file=sys.stderr)
        return 2 if user_error else 1


@contextlib.contextmanager
def _rank_zero_speaks():
    """Under torchrun only rank 0 prints to stdout (progress, results): the other ranks' stdout
    is dropped; every rank's errors still go to stderr."""
    try:
        rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except ValueError:
        rank = 0
    if rank == 0:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Warnings print as ``napari-lvit CMD: warning: ...`` (without the source line)."""
    saved = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None) -> str:
        return f"napari-lvit {command}: warning: {message}\n"

    warnings.formatwarning = formatwarning
    try:
        yield
    finally:
        warnings.formatwarning = saved

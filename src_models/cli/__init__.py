"""``napari-lvit``: every GUI action has a command-line twin.

    napari-lvit synth OUT --kind qata --n 200 --size 224 --seed 0
    napari-lvit train DATA --val VAL --model lvit_s --epochs 20 --out model.safetensors
    napari-lvit train DATA --val VAL --labeled-fraction 0.25 --semi epi --out semi.safetensors
    napari-lvit predict CKPT IMAGE --text "..." --out mask.tif
    napari-lvit evaluate CKPT DATA --json
    napari-lvit retrain PROJECT --rounds 1 --epochs 5 --jsonl
    napari-lvit retrain PROJECT --config - --jsonl < config.json   # RetrainConfig.to_json()
    napari-lvit pretrain DATA --out pre.safetensors --epochs 20 --model lvit_s
    napari-lvit train DATA --init pre.safetensors --labeled-fraction 0.1 --semi epi --clcc ...

The GUI commands (``demo``, ...) are added by ``napari_lvit._cli``, the console script.

One module per command group: :mod:`.data` (``synth``), :mod:`.train` (``train``,
``pretrain``), :mod:`.predict` (``predict``, ``evaluate``, ``models``) and :mod:`.retrain`
(``retrain``); ``python -m src_models.cli`` runs :func:`main` (:mod:`.__main__`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from .data import _add_synth, cmd_synth
from .predict import _add_evaluate, _add_models, _add_predict, cmd_evaluate, cmd_models, cmd_predict
from .retrain import _add_retrain, cmd_retrain, retrain_config
from .train import _add_pretrain, _add_train, cmd_pretrain, cmd_train

__all__ = [
    "COMMANDS",
    "build_parser",
    "cmd_evaluate",
    "cmd_models",
    "cmd_predict",
    "cmd_pretrain",
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
)


def build_parser(extra_commands: Sequence[Callable] = ()) -> argparse.ArgumentParser:
    """The parser; ``extra_commands`` add subcommands (the napari side adds its GUI ones)."""
    parser = argparse.ArgumentParser(prog="napari-lvit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (*COMMANDS, *extra_commands):
        add(sub)
    return parser


def main(argv: list[str] | None = None, extra_commands: Sequence[Callable] = ()) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser(extra_commands).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"napari-lvit {args.command}: error: {exc}", file=sys.stderr)
        return 2

"""``napari-lvit retrain``: retraining rounds on an annotation project.

Its flags are generated from :class:`~src_models.project.retrain_config.RetrainConfig`
(:mod:`src_models.dataclass_io`); with ``--jsonl`` stdout carries one JSON event per line and
nothing else (the napari widget reads it).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path


def _add_retrain(sub) -> None:
    from src_models.dataclass_io import add_arguments
    from src_models.project.retrain_config import RetrainConfig

    p = sub.add_parser(
        "retrain",
        help="retraining rounds on an annotation project (its commits and unlabelled images)",
        description="Settings come from --config (a RetrainConfig as JSON) and then from the "
        "flags given, which override it.",
    )
    p.add_argument("project", type=Path, help="project folder (holds project.sqlite)")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a RetrainConfig as JSON (RetrainConfig.to_json()); '-' reads it from stdin",
    )
    p.add_argument(
        "--jsonl",
        action="store_true",
        help="print one JSON object per event per line on stdout (for the napari widget)",
    )
    add_arguments(p.add_argument_group("settings (RetrainConfig fields)"), RetrainConfig)
    p.set_defaults(func=cmd_retrain)


def retrain_config(args):
    """The :class:`RetrainConfig` of ``retrain`` arguments: ``--config`` (a file, or ``-`` for
    stdin), then the flags given on the command line."""
    from src_models.dataclass_io import overrides_from_args
    from src_models.project.retrain_config import RetrainConfig

    base: dict = {}
    if args.config is not None:
        if args.config == "-":
            text = sys.stdin.read()
        else:
            from src_models.cli._checks import check_read_file

            path = check_read_file(args.config, "--config", "a RetrainConfig JSON file (or '-')")
            text = path.read_text(encoding="utf-8")
        base = RetrainConfig.from_json(text).to_dict()
    return RetrainConfig.from_dict({**base, **overrides_from_args(args, RetrainConfig)})


def cmd_retrain(args) -> int:
    """Run rounds; SIGTERM/SIGINT cancel between events (the round is recorded as cancelled)
    and the exit code is 128 + the signal number (143 / 130); a failed round exits with 1."""
    with _event_lines(args.jsonl) as emit:
        return _run_retrain(args, emit)


@contextlib.contextmanager
def _event_lines(jsonl: bool):
    """``emit(obj)``: with ``jsonl``, one JSON line on stdout, which carries nothing else while
    the block runs (everything else printed goes to stderr); without, nothing."""
    if not jsonl:
        yield lambda obj: None
        return
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    saved = sys.stdout
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), saved.fileno())
    sys.stdout = sys.stderr

    def emit(obj: dict) -> None:
        out.write(json.dumps(obj, allow_nan=False) + "\n")
        out.flush()

    try:
        yield emit
    finally:
        out.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), saved.fileno())
        sys.stdout = saved
        out.close()


def _error_event(exc: Exception) -> dict:
    """The ``Error`` event of ``--jsonl``: the same one line the command prints."""
    from src_models.errors import describe

    return {"type": "Error", "message": describe(exc)[0]}


def _run_retrain(args, emit) -> int:
    import signal

    from src_models.engine.distributed import detect_env
    from src_models.project.retrain import (
        RetrainDone,
        RetrainRoundEnd,
        event_to_dict,
        format_retrain_event,
        retrain,
    )

    say = print
    if not detect_env().is_main:  # under torchrun rank 0 alone reports (and records)
        emit = say = lambda *args, **kwargs: None
    try:
        run = retrain(args.project, config=retrain_config(args))
    except Exception as exc:
        emit(_error_event(exc))
        raise  # printed by the command line's error boundary (src_models.cli.main)
    received: list[int] = []

    def on_signal(signum, frame) -> None:
        received.append(signum)
        run.cancel()
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    last = None
    try:
        for event in run:
            last = event
            if args.jsonl:
                emit(event_to_dict(event))
            elif type(event).__name__ != "BatchEnd":
                say(format_retrain_event(event), flush=True)
    except Exception as exc:
        emit(_error_event(exc))
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        return 128 + int(received[0])
    if isinstance(last, RetrainDone) and last.status == "done":
        return 0
    if isinstance(last, (RetrainDone, RetrainRoundEnd)) and last.status == "cancelled":
        return 130
    return 1

"""Retraining events as the widget reads and words them: JSON lines from the training process
(``napari-lvit retrain --jsonl``) and the texts shown for them. No Qt here."""

from __future__ import annotations

import json
from typing import Any


class JsonLines:
    """Splits a byte stream into JSON objects, one a line; other lines are skipped."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        events = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # not an event line
            if isinstance(event, dict):
                events.append(event)
        return events


class Tail:
    """The last ``limit`` characters of a text stream (the training's stderr)."""

    def __init__(self, limit: int = 4000) -> None:
        self.limit = limit
        self.text = ""

    def add(self, text: str) -> None:
        self.text = (self.text + text)[-self.limit :]

    def last_lines(self, n: int = 3) -> str:
        """The last ``n`` lines joined with " / " (empty when there are none)."""
        return " / ".join(self.text.strip().splitlines()[-n:])


def round_start_text(event: dict[str, Any]) -> str:
    text = (
        f"Round {event['round_id']} ({event['index']}/{event['rounds']}, "
        f"{event['engine']}): {event['n_labeled']} labelled"
    )
    if event.get("n_unlabeled"):
        text += f", {event['n_unlabeled']} unlabelled"
    return text


def start_probe_text(event: dict[str, Any]) -> str:
    """What a ``RetrainStartProbe`` says: which start a new project's first round is trying,
    or what it scored."""
    head = f"trying start {event['index']}/{event['total']} ({event['base']})"
    if not event.get("done", True):
        return head
    dice = event.get("dice")
    return head + (": no validation" if dice is None else f": val Dice {dice:.3f}")


def round_end_text(event: dict[str, Any]) -> str:
    """What a ``RetrainRoundEnd`` says: done (and whether its model became current), failed,
    cancelled."""
    status = event["status"]
    metrics = event.get("metrics") or {}
    dice = metrics.get("best_dice")
    dice_text = "" if dice is None else f", val Dice {dice:.3f}"
    if status == "done" and event.get("checkpoint"):
        if event.get("current", True):
            return f"Round {event['round_id']} done{dice_text}."
        return (
            f"Round {event['round_id']} done{dice_text}: below the current model's "
            f"{metrics['start_dice']:.3f}, so the current model stays."
        )
    if status == "failed":
        return f"Round {event['round_id']} failed."
    return f"Round {event['round_id']} {status}."


def new_checkpoint(event: dict[str, Any]) -> str | None:
    """The checkpoint a ``RetrainRoundEnd`` made current, or ``None``."""
    done = event.get("status") == "done" and event.get("checkpoint")
    return str(event["checkpoint"]) if done and event.get("current", True) else None


def failure(
    exit_code: int | None, crashed: bool, tail: str, last: dict[str, Any] | None
) -> str | None:
    """Why the training ended badly, when no event said so already: a crash, or a non-zero
    exit without a finished run (``last``: the last round or run event); else ``None``."""
    if crashed:
        return "the training process stopped unexpectedly" + (f": {tail}" if tail else "")
    if exit_code not in (None, 0) and (last is None or last.get("status") == "failed"):
        return f"exit code {exit_code}" + (f": {tail}" if tail else "")
    return None

"""Retraining rounds of a project: in process, from the CLI (--jsonl), cancelled by SIGTERM,
and killed by SIGKILL mid-round while another process commits."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from retrain_cases import make_project  # (tests/ is on sys.path)

from src_models.cli import main as cli_main
from src_models.data.synthetic import write_dataset
from src_models.engine.checkpoint import read_checkpoint_meta
from src_models.project import Project
from src_models.project.retrain import (
    RetrainDone,
    RetrainError,
    RetrainRoundEnd,
    RetrainRoundStart,
    event_to_dict,
    format_retrain_event,
    recover_stale_rounds,
    retrain,
)
from src_models.project.workspace import open_workspace

REPO = Path(__file__).resolve().parents[2]
TINY = {"model": "lvit_tiny", "img_size": None, "device": "cpu", "num_threads": 1}
CLI_TINY = ["--model", "lvit_tiny", "--img-size", "64", "--device", "cpu", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_round_trains_records_and_makes_the_checkpoint_current(tmp_path):
    folder = make_project(tmp_path)
    events = list(retrain(folder, epochs=1, **TINY))
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "RetrainRoundStart" and kinds[-1] == "RetrainDone"
    start = events[0]
    assert (start.n_labeled, start.n_no_lesion, start.engine) == (3, 1, "epi")
    end = next(e for e in events if isinstance(e, RetrainRoundEnd))
    assert end.status == "done" and events[-1].status == "done"
    ckpt = Path(end.checkpoint)
    assert ckpt.name == f"round-{end.round_id:04d}.safetensors"
    assert read_checkpoint_meta(ckpt)["model_name"] == "lvit_tiny"
    for e in events:  # every event serialises to strict JSON
        json.dumps(event_to_dict(e), allow_nan=False)
    with Project.open(folder) as p:
        assert p.current_checkpoint == ckpt
        (r,) = p.rounds()
        assert r.status == "done" and r.checkpoint_path == ckpt
        assert r.metrics["epochs"] and "train_loss" in r.metrics["epochs"][0]
        assert r.metrics["best_dice"] is not None
        assert p.check() == []
        leftovers = [x.name for x in p.checkpoint_dir.iterdir() if ".work" in x.name]
        assert leftovers == []
        # the next round starts from the current checkpoint
    second = list(retrain(folder, epochs=1, semi="off", **TINY))
    assert second[0].base == f"checkpoints/{ckpt.name}" and second[0].engine == "supervised"


@pytest.mark.parametrize(("semi", "engine"), [("auto", "epi+clcc"), ("off", "supervised+clcc")])
def test_clcc_round_trains_on_the_unlabelled_images_too(tmp_path, semi, engine):
    from src_models.engine.events import BatchEnd

    folder = make_project(tmp_path)
    events = list(retrain(folder, epochs=1, semi=semi, clcc=True, **TINY))
    start = events[0]
    assert start.engine == engine and start.n_unlabeled == 2  # 5 images: 2 + 1 committed
    contrast = [e.losses["clcc_contrast"] for e in events if isinstance(e, BatchEnd)]
    assert contrast and max(contrast) > 0  # the contrast phase ran
    assert events[-1].status == "done"
    with pytest.raises(ValueError, match="clcc_grid"):
        retrain(folder, clcc=True, clcc_grid=1, **TINY)


def test_a_round_that_scores_below_its_starting_model_leaves_that_model_current(tmp_path):
    folder = make_project(tmp_path)
    good = list(retrain(folder, epochs=30, semi="off", lr=3e-3, **TINY))[-1].checkpoint
    assert good is not None
    # lr 1 wrecks the trained weights within one epoch
    events = list(retrain(folder, epochs=1, semi="off", lr=1.0, **TINY))
    end = next(e for e in events if isinstance(e, RetrainRoundEnd))
    assert end.status == "done" and events[-1].status == "done"
    assert end.metrics["best_dice"] < end.metrics["start_dice"]  # the premise: it got worse
    assert not end.current and Path(end.checkpoint).is_file()  # kept, for the record
    assert events[-1].checkpoint == good
    assert "the current model stays" in format_retrain_event(end)
    with Project.open(folder) as p:
        assert str(p.current_checkpoint) == good
        assert p.rounds()[-1].metrics["made_current"] is False and p.check() == []
    # asked to (here from the command line), the new model replaces the current one
    args = ["retrain", str(folder), "--epochs", "1", "--semi", "off", "--lr", "1"]
    assert cli_main([*args, *CLI_TINY, "--replace-if-worse"]) == 0
    with Project.open(folder) as p:
        last = p.rounds()[-1]
        assert last.metrics["made_current"] is True and p.current_checkpoint == last.checkpoint_path
        assert str(p.current_checkpoint) != good


def test_cancel_and_failure_never_touch_the_current_checkpoint(tmp_path):
    folder = make_project(tmp_path)
    run = retrain(folder, epochs=50, semi="off", **TINY)
    for event in run:
        if type(event).__name__ == "BatchEnd":
            run.cancel()
    assert isinstance(event, RetrainDone) and event.status == "cancelled"
    with Project.open(folder) as p:
        assert [r.status for r in p.rounds()] == ["cancelled"]
        assert p.current_checkpoint is None
        assert not any(".work" in x.name for x in p.checkpoint_dir.iterdir())

    failed = list(retrain(folder, epochs=1, model="no_such_model", device="cpu"))
    end = next(e for e in failed if isinstance(e, RetrainRoundEnd))
    assert end.status == "failed" and "no_such_model" in end.error
    assert failed[-1].status == "failed"
    with Project.open(folder) as p:
        assert [r.status for r in p.rounds()] == ["cancelled", "failed"]
        assert "no_such_model" in p.rounds()[-1].metrics["error"]
        assert p.current_checkpoint is None and p.check() == []


def test_nothing_labelled_is_an_error(tmp_path):
    data = write_dataset(tmp_path / "data", kind="qata", n=2, size=64)
    project, _ = open_workspace(data / "img")
    project.close()
    with pytest.raises(RetrainError, match="commit at least one"):
        list(retrain(project.folder, **TINY))


# --------------------------------------------------------------------------- CLI processes


def _start_cli(folder: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "src_models.cli", "retrain", str(folder), "--jsonl", *CLI_TINY]
    return subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _read_until(proc: subprocess.Popen, kind: str, timeout: float = 60.0) -> list[dict]:
    """Parse JSON lines until an event of type ``kind`` arrives."""
    events: list[dict] = []
    buf = b""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"no {kind} event; stderr: {proc.stderr.read().decode()[-2000:]}")
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        buf += os.read(fd, 65536)
        *lines, buf = buf.split(b"\n")
        for line in lines:
            events.append(json.loads(line))
            if events[-1]["type"] == kind:
                return events


pytestmark_posix = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")


@pytestmark_posix
def test_cli_jsonl_events_and_sigterm_cancels_the_round(tmp_path):
    folder = make_project(tmp_path)
    list(retrain(folder, epochs=1, semi="off", **TINY))
    with Project.open(folder) as p:
        first = p.current_checkpoint
    proc = _start_cli(folder, "--epochs", "500")
    try:
        head = _read_until(proc, "EpochEnd")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    events = head + [json.loads(line) for line in out.decode().splitlines()]  # every line parses
    types = [e["type"] for e in events]
    assert types[0] == "RetrainRoundStart" and types[-1] == "RetrainDone"
    assert {"FitStart", "BatchEnd", "EpochEnd", "ValidationEnd", "RetrainRoundEnd"} <= set(types)
    assert events[0]["base"] == f"checkpoints/{first.name}" and events[0]["engine"] == "epi"
    end = next(e for e in events if e["type"] == "RetrainRoundEnd")
    assert end["status"] == "cancelled" and end["checkpoint"] is None
    assert events[-1]["status"] == "cancelled"
    assert events[-1]["checkpoint"] == str(first)
    with Project.open(folder) as p:
        assert [r.status for r in p.rounds()] == ["done", "cancelled"]
        assert p.rounds()[-1].metrics["epochs"]  # the curve so far is kept
        assert p.current_checkpoint == first
        assert p.check() == []


@pytestmark_posix
def test_sigkill_mid_round_loses_no_commit(tmp_path):
    folder = make_project(tmp_path, n=6, labeled=2)
    list(retrain(folder, epochs=1, semi="off", **TINY))  # a current checkpoint to protect
    with Project.open(folder) as p:
        before = p.current_checkpoint
        before_bytes = before.read_bytes()
    proc = _start_cli(folder, "--epochs", "500")
    committed: dict[int, np.ndarray] = {}
    try:
        _read_until(proc, "BatchEnd")
        # the user keeps committing while the training process runs
        with Project.open(folder) as p:
            rng = np.random.default_rng(1)
            for rec in p.images("unlabeled")[:2]:
                mask = rng.random(rec.shape) < 0.3
                committed[p.commit(rec, mask, text="painted while training").id] = mask
        _read_until(proc, "BatchEnd")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL

    with Project.open(folder) as p:
        assert p.check(deep=True) == []
        assert p.integrity_check() == ["ok"]
        commits = [c for r in p.images() for c in p.history(r)]
        assert len(commits) == 3 + len(committed)
        for c in commits:
            mask = c.load_mask()
            if c.id in committed:
                np.testing.assert_array_equal(mask, committed[c.id])
        assert p.current_checkpoint == before and before.read_bytes() == before_bytes
        read_checkpoint_meta(before)
        assert p.rounds()[-1].status == "running"  # the killed round, until recovered
        assert recover_stale_rounds(p) == [p.rounds()[-1].id]
        assert p.rounds()[-1].status == "failed"
        assert not any(".work" in x.name for x in p.checkpoint_dir.iterdir())
    # and retraining works again, now with the new commits
    events = list(retrain(folder, epochs=1, semi="off", **TINY))
    assert isinstance(events[0], RetrainRoundStart) and events[0].n_labeled == 5
    assert events[-1].status == "done"


def test_rounds_train_clicks_when_asked_and_a_model_that_reads_them_keeps_them(tmp_path):
    """``clicks``: the round's model gets prompt inputs and learns from simulated clicks, in an
    EPI round too (the pseudo-labelled images get clicks from their pseudo labels). By default
    a round simulates none, and a model that reads clicks keeps its prompt inputs."""
    from src_models.data.io import read_image
    from src_models.inference import Predictor

    folder = make_project(tmp_path, n=6, labeled=2)
    events = list(retrain(folder, epochs=1, clicks=2, start="model", **TINY))
    end = next(e for e in events if isinstance(e, RetrainRoundEnd))
    assert end.status == "done" and end.metrics["engine"] == "epi"
    assert end.metrics["trainer"]["train"]["clicks"] == 2
    assert read_checkpoint_meta(end.checkpoint)["reads_prompts"]
    # the next round starts from that model and, by default, simulates no clicks
    again = next(
        e for e in retrain(folder, epochs=1, semi="off", **TINY) if isinstance(e, RetrainRoundEnd)
    )
    assert again.status == "done" and again.metrics["trainer"]["train"]["clicks"] == 0
    assert read_checkpoint_meta(again.checkpoint)["reads_prompts"]
    predictor = Predictor(again.checkpoint, device="cpu")
    with Project.open(folder) as p:
        rec = p.images()[0]
    image = read_image(rec.path)
    plain = predictor.predict(image, rec.text).prob
    clicked = predictor.predict(image, rec.text, clicks=[(10, 10, 1)]).prob
    assert plain.shape == clicked.shape and not np.allclose(plain, clicked)
    # and a plain model trains without clicks (the default)
    other = make_project(tmp_path / "other", n=6, labeled=2)
    plain_round = next(
        e for e in retrain(other, epochs=1, **TINY) if isinstance(e, RetrainRoundEnd)
    )
    assert plain_round.metrics["trainer"]["train"]["clicks"] == 0
    assert not read_checkpoint_meta(plain_round.checkpoint)["reads_prompts"]

"""``napari-lvit retrain`` under torchrun (2 CPU processes, gloo) on a project folder both ranks
see: the round of one process with the same global batch, recorded once and reported once; a
rank that dies fails the round with its reason and leaves the project as it was."""

from __future__ import annotations

import dataclasses

import numpy as np
from _torchrun import torchrun
from retrain_cases import make_project  # (tests/ is on sys.path)
from safetensors.numpy import load_file

from src_models.cli import main as cli_main
from src_models.project import Project
from src_models.project.retrain import RetrainConfig

#: Settings as a --config file: torchrun's own parser would take "--start" for its --start-method.
SETTINGS = RetrainConfig(
    model="lvit_tiny", img_size=64, device="cpu", num_threads=1, epochs=3, start="model",
    seed=0, min_val=2, val_fraction=0.34, augment=False,  # 4 + 2 labelled, 4 unlabelled
)  # fmt: skip


def _args(tmp_path, folder, batch_size: int) -> list[str]:
    config = tmp_path / f"retrain-b{batch_size}.json"
    config.write_text(dataclasses.replace(SETTINGS, batch_size=batch_size).to_json())
    return ["retrain", str(folder), "--config", str(config)]


def _relative(a: dict, b: dict) -> float:
    keys = [k for k in b if b[k].dtype.kind == "f"]
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in keys)
    return (num / sum(float((b[k] ** 2).sum()) for k in keys)) ** 0.5


def _round(folder):
    with Project.open(folder) as p:
        assert p.check() == []
        return p.rounds(), p.current_checkpoint


def test_two_ranks_train_the_round_of_one_process_and_rank_zero_records_it(tmp_path, capsys):
    one = make_project(tmp_path / "one", n=10, labeled=5)
    two = make_project(tmp_path / "two", n=10, labeled=5)
    assert cli_main(_args(tmp_path, one, 4)) == 0
    printed_one = capsys.readouterr().out
    proc = torchrun("cli", "", "", *_args(tmp_path, two, 2))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    (r1,), current1 = _round(one)
    rounds, current2 = _round(two)
    assert [r.status for r in rounds] == ["done"]  # one round, recorded once (by rank 0)
    r2 = rounds[0]
    assert current2 == r2.checkpoint_path and current2.is_file()
    assert r2.metrics["engine"] == r1.metrics["engine"] == "epi"  # unlabelled images too
    assert len(r2.metrics["epochs"]) == len(r1.metrics["epochs"])
    # the same training: EPI's pseudo-label pass sharded, gradients and BatchNorm over both
    # ranks (tolerance: tests/engine/test_semi_distributed.py measures 0.35% after 3 rounds)
    a, b = load_file(current2), load_file(current1)
    assert set(a) == set(b) and _relative(a, b) < 0.01
    np.testing.assert_allclose(r2.metrics["best_dice"], r1.metrics["best_dice"], atol=0.02)
    # rank 0 alone reports: each line once, as one process prints them
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("round ")]
    assert len(lines) == len([ln for ln in printed_one.splitlines() if ln.startswith("round ")])
    assert len(lines) == len(set(lines)) > 0


def test_a_killed_rank_fails_the_round_and_the_project_stays_as_it_was(tmp_path):
    folder = make_project(tmp_path, n=10, labeled=5)
    args = _args(tmp_path, folder, 2)
    proc = torchrun("cli_killed_at_step", "3", *args, timeout=180)
    assert proc.returncode != 0
    rounds, current = _round(folder)
    assert [r.status for r in rounds] == ["failed"] and current is None
    assert "RankLostError" in rounds[0].metrics["error"]
    assert "src_models" not in proc.stderr  # no traceback of ours
    with Project.open(folder) as p:
        assert not [x.name for x in p.checkpoint_dir.iterdir() if ".work" in x.name]
    # the lock went with the job: the next retraining runs, in one process
    assert cli_main(args) == 0
    rounds, current = _round(folder)
    assert [r.status for r in rounds] == ["failed", "done"] and current.is_file()

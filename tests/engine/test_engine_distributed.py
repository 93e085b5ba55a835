"""torchrun with 2 CPU processes (gloo): both ranks' models stay identical."""

import json

import pytest
from _torchrun import torchrun

from src_models.data.synthetic import write_dataset
from src_models.engine import detect_env, load_checkpoint


def test_detect_env_reads_torchrun_variables():
    env = detect_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert (env.world_size, env.rank, env.local_rank, env.is_main) == (4, 2, 0, False)
    assert detect_env({}).world_size == 1
    with pytest.raises(ValueError, match="bad torchrun"):
        detect_env({"WORLD_SIZE": "2", "RANK": "5"})


def test_torchrun_two_cpu_processes_end_with_identical_weights(tmp_path):
    train = write_dataset(tmp_path / "train", kind="qata", n=8, size=64, seed=0)
    val = write_dataset(tmp_path / "val", kind="qata", n=5, size=64, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    proc = torchrun("plain", train, val, out, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["hash"] == r1["hash"]  # parameters and BatchNorm statistics agree
    assert r0["best_dice"] == r1["best_dice"]  # validation metrics were all-reduced
    assert r0["steps"] == r1["steps"] == 2 * 2  # 8 images / 2 ranks / batch 2, 2 epochs
    assert r0["events"][0] == "FitStart" and "ValidationEnd" in r0["events"]
    assert r1["events"] == ["TrainingDone"]  # only rank 0 reports progress
    assert r0["group_left"] and r1["group_left"]
    model, meta = load_checkpoint(out / "model.safetensors")  # written once, by rank 0
    assert meta["training"]["data"]["world_size"] == 2


def test_sync_helpers_compute_the_global_batch(tmp_path):
    """gather_rows (unequal and empty shares, ints, bools, gradients) and synchronised
    BatchNorm (outputs, input and weight gradients, running statistics) on 2 ranks against the
    one-process computation on the whole batch."""
    proc = torchrun("primitives", tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in (0, 1):
        rep = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert rep["gathered"] == 0 and rep["index"] == [0, 1, 2, 3, 4]
        assert rep["bool"] == [False, False, True, True, True]
        assert rep["empty"] == ([3, 3, 4, 4] if r == 1 else None)
        assert rep["grad"] < 1e-6
        for key in ("bn_out", "bn_grad_x", "bn_grad_w", "bn_running"):
            assert rep[key] < 1e-5, (r, key, rep[key])
        assert rep["released"]

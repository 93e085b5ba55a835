"""Pretraining under torchrun (2 CPU processes): Barlow Twins and InfoNCE over the global batch,
so 2 ranks with batches of 2 take the steps of one process with batches of 4."""

import json

import numpy as np
import pytest
from _torchrun import epi_data, pretrain, torchrun


def test_pretrain_two_ranks_match_one_process(tmp_path):
    epi_data(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    proc = torchrun("pretrain", tmp_path, two, 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pretrain(str(tmp_path), str(one), "4")
    r0, r1 = (json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1))
    ref = json.loads((one / "rank0.json").read_text())
    assert r0["hash"] == r1["hash"]
    assert r0["n_events"] == 2 and r1["n_events"] == 0  # epochs are reported by rank 0
    assert (two / "pre.safetensors").is_file()
    for mine, theirs in zip(r0["history"], ref["history"], strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-3)
        assert mine["barlow"] == pytest.approx(theirs["barlow"], rel=1e-3)
    a, b = np.load(two / "rank0.npz"), np.load(one / "rank0.npz")
    keys = [k for k in b.files if b[k].dtype.kind == "f"]
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in keys)
    assert (num / sum(float((b[k] ** 2).sum()) for k in keys)) ** 0.5 < 1e-3

"""SKS stage 1 under torchrun (2 CPU processes): 2 ranks with batches of 2 train the lesion
classifier as one process with batches of 4."""

import json

import numpy as np
import pytest
from _torchrun import epi_data, sks, torchrun


def test_sks_stage1_two_ranks_match_one_process(tmp_path):
    epi_data(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    proc = torchrun("sks", tmp_path, two, 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sks(str(tmp_path), str(one), "4")
    r0, r1 = (json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1))
    ref = json.loads((one / "rank0.json").read_text())
    assert r0["hash"] == r1["hash"]
    assert r0["n_events"] == 2 and r1["n_events"] == 0
    assert r0["epochs"] == pytest.approx(ref["epochs"], rel=1e-3)
    a, b = np.load(two / "rank0.npz"), np.load(one / "rank0.npz")
    keys = [k for k in b.files if b[k].dtype.kind == "f"]
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in keys)
    assert (num / sum(float((b[k] ** 2).sum()) for k in keys)) ** 0.5 < 1e-3

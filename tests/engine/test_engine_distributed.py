"""torchrun with 2 CPU processes (gloo): DDP keeps both ranks' models identical."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from src_models.data.synthetic import write_dataset
from src_models.engine import detect_env, load_checkpoint

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys, zlib

    import torch

    from src_models.data import SegmentationDataset
    from src_models.engine import TrainConfig, Trainer
    from src_models.models import create_model
    from src_models.text import TextFeatures


    class HashEncoder:  # the TextEncoder interface, without loading a transformer
        dim, id = 384, "fake-hash-384"

        def encode(self, texts):
            feats = []
            for t in texts:
                rows = []
                for w in t.lower().split():
                    g = torch.Generator().manual_seed(zlib.crc32(w.encode()))
                    rows.append(torch.randn(self.dim, generator=g))
                feats.append(torch.stack(rows))
            n = max(len(f) for f in feats)
            tokens = torch.zeros(len(feats), n, self.dim)
            mask = torch.zeros(len(feats), n, dtype=torch.bool)
            for i, f in enumerate(feats):
                tokens[i, : len(f)] = f
                mask[i, : len(f)] = True
            return TextFeatures(tokens, mask)


    train_dir, val_dir, out_dir = sys.argv[1:4]
    rank = int(os.environ["RANK"])
    torch.manual_seed(100 + rank)  # different initial weights: DDP must broadcast rank 0's
    model = create_model("lvit_tiny")
    cfg = TrainConfig(epochs=2, batch_size=2, device="cpu", seed=0,
                      out=os.path.join(out_dir, "model.safetensors"))
    trainer = Trainer(
        model,
        SegmentationDataset(train_dir, img_size=64, augment=True, seed=0),
        SegmentationDataset(val_dir, img_size=64),
        HashEncoder(),
        cfg,
    )
    events = list(trainer.fit())
    digest = hashlib.sha256()
    for key, value in sorted(trainer.model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    done = events[-1]
    report = {
        "hash": digest.hexdigest(),
        "events": [type(e).__name__ for e in events],
        "best_dice": done.best_dice,
        "steps": trainer.global_step,
        "world_size": trainer.dist.world_size,
        "group_left": not torch.distributed.is_initialized(),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_detect_env_reads_torchrun_variables():
    env = detect_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert (env.world_size, env.rank, env.local_rank, env.is_main) == (4, 2, 0, False)
    assert detect_env({}).world_size == 1
    with pytest.raises(ValueError, match="bad torchrun"):
        detect_env({"WORLD_SIZE": "2", "RANK": "5"})


def test_torchrun_two_cpu_processes_end_with_identical_weights(tmp_path):
    train = write_dataset(tmp_path / "train", kind="qata", n=8, size=64, seed=0)
    val = write_dataset(tmp_path / "val", kind="qata", n=5, size=64, seed=1)
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(script),
        str(train),
        str(val),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
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
    from _torchrun import torchrun

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

"""Jobs for the torchrun tests (CPU, gloo): each runs in-process as the one-process reference and
under ``torchrun --nproc_per_node=2`` as ``python _torchrun.py JOB ARGS...``.

Every job writes its results into its output folder: ``rank<r>.json`` per rank and, from rank 0,
``rank0.npz`` with the arrays to compare.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from src_models.engine import Callback

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


class HashEncoder:
    """The TextEncoder interface without a transformer: a fixed random vector per word."""

    dim, id = 384, "fake-hash-384"

    def encode(self, texts):
        from src_models.text import TextFeatures

        if isinstance(texts, str):
            texts = [texts]
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


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def digest(state: dict) -> str:
    h = hashlib.sha256()
    for key, value in sorted(state.items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _write(out: Path, report: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    rank = _rank()
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    if arrays is not None and rank == 0:
        np.savez(out / "rank0.npz", **arrays)


# --------------------------------------------------------------------------- jobs


def epi_data(root: Path) -> tuple[Path, Path]:
    """12 training images (4 labeled after the split), 4 validation images, 64 px."""
    from src_models.data.synthetic import write_dataset

    train = write_dataset(root / "train", kind="qata", n=12, size=64, seed=0)
    val = write_dataset(root / "val", kind="qata", n=4, size=64, seed=1)
    return Path(train), Path(val)


def plain(train: str, val: str, out: str) -> None:
    """Supervised training (2 epochs, per-rank batch 2) from different initial weights per rank
    (rank 0's must win); writes each rank's weights hash, events and steps."""
    from src_models.data import SegmentationDataset
    from src_models.engine import TrainConfig, Trainer
    from src_models.models import create_model

    torch.manual_seed(100 + _rank())
    model = create_model("lvit_tiny")
    cfg = TrainConfig(
        epochs=2, batch_size=2, device="cpu", seed=0, out=str(Path(out) / "model.safetensors")
    )
    trainer = Trainer(
        model,
        SegmentationDataset(train, img_size=64, augment=True, seed=0),
        SegmentationDataset(val, img_size=64),
        HashEncoder(),
        cfg,
    )
    events = list(trainer.fit())
    report = {
        "hash": digest(trainer.model.state_dict()),
        "events": [type(e).__name__ for e in events],
        "best_dice": events[-1].best_dice,
        "steps": trainer.global_step,
        "world_size": trainer.dist.world_size,
        "group_left": not torch.distributed.is_initialized(),
    }
    _write(Path(out), report)


def epi(data: str, out: str, batch: str, kill_after: str = "") -> None:
    """EPI (2 rounds after round 0, LV on, no dropout, Adam at lr 1e-4) with per-rank batch
    ``batch``; ranks start from different weights (rank 0's must win). With ``kill_after``
    rank 1 kills itself (SIGKILL) once the bank holds that many updates."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("JOB_THREADS", "1")))
    try:
        _epi(Path(data), Path(out), int(batch), kill_after)
    finally:
        torch.set_num_threads(threads)


class _RoundWeights(Callback):
    """Keeps each round's weights at the end of its training (on every rank)."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[str, np.ndarray]] = {}

    def on_fit_end(self, trainer) -> None:
        state = trainer.model.state_dict()
        self.rounds[trainer.round_index] = {k: v.detach().numpy().copy() for k, v in state.items()}


def _epi(data_root: Path, out_dir: Path, batch: int, kill_after: str) -> None:
    from src_models.data import SegmentationDataset, scan_split
    from src_models.engine import TrainConfig
    from src_models.engine.semi import (
        PseudoLabelBank,
        SemiConfig,
        SemiDone,
        SemiTrainer,
        split_labeled,
    )
    from src_models.models import create_model

    rank = _rank()
    labeled, unlabeled = split_labeled(scan_split(data_root / "train"), 1 / 3, seed=0)
    train_set = SegmentationDataset(labeled + unlabeled, 64, augment=True, seed=0)
    val_set = SegmentationDataset(data_root / "val", 64)
    torch.manual_seed(100 + rank)
    model = create_model("lvit_tiny", vit_dropout=0.0)
    cfg = TrainConfig(
        epochs=2, batch_size=batch, lr=1e-4, device="cpu", seed=0, val_batch_size=2,
        out=str(out_dir / "run" / "m.safetensors"),
    )  # fmt: skip
    semi = SemiConfig(
        rounds=2, round0_epochs=2, round_epochs=1, ramp_epochs=0.5,
        bank_fsync=False, pseudo_dir=str(out_dir / "bank"), predict_batch_size=2,
        carry_best=False,
    )  # fmt: skip
    if kill_after:
        _kill_when(out_dir / "bank" / "index.json", int(kill_after))
    weights = _RoundWeights()
    trainer = SemiTrainer(model, train_set, val_set, HashEncoder(), cfg, semi, hooks=[weights])
    events = list(trainer.fit())
    done = events[-1]
    assert isinstance(done, SemiDone)
    bank = PseudoLabelBank(out_dir / "bank", read_only=True)
    names = [n for n, h in zip(train_set.names, train_set.has_mask, strict=True) if not h]
    arrays = {f"w:{k}": v.numpy() for k, v in model.state_dict().items()}
    for r, state in weights.rounds.items():
        arrays.update({f"round{r}:{k}": v for k, v in state.items()})
    for n in names:
        arrays[f"bank:{n}"] = bank.get(n)
        arrays[f"prev:{n}"] = bank.previous(n)
    report = {
        "hash": digest(model.state_dict()),
        "events": sorted({type(e).__name__ for e in events}),
        "n_events": len(events),
        "best_round": done.best_round,
        "best_dice": done.best_dice,
        "history": done.history,
        "bank_t": trainer.bank.t,
        "bank_read_only": trainer.bank.read_only,
        "group_left": not torch.distributed.is_initialized(),
        "unlabeled": names,
    }
    _write(out_dir, report, arrays)


def clcc(data: str, out: str, batch: str) -> None:
    """CLCC without EPI (labeled + unlabeled images, both phases), per-rank batch ``batch``,
    every row of a batch run as patches; writes the final weights."""
    from src_models.data import SegmentationDataset, scan_split
    from src_models.engine import TrainConfig
    from src_models.engine.clcc import CLCCConfig, CLCCTrainer
    from src_models.engine.semi import split_labeled
    from src_models.models import create_model

    torch.set_num_threads(1)
    labeled, unlabeled = split_labeled(scan_split(Path(data) / "train"), 1 / 3, seed=0)
    train_set = SegmentationDataset(labeled + unlabeled, 64, augment=True, seed=0)
    val_set = SegmentationDataset(Path(data) / "val", 64)
    torch.manual_seed(100 + _rank())
    model = create_model("lvit_tiny", vit_dropout=0.0)
    cfg = TrainConfig(epochs=3, batch_size=int(batch), lr=1e-4, device="cpu", val_batch_size=2)
    clcc = CLCCConfig(grid=2, images=int(batch))
    trainer = CLCCTrainer(model, train_set, val_set, HashEncoder(), cfg, clcc=clcc)
    events = list(trainer.fit())
    arrays = {f"w:{k}": v.numpy() for k, v in model.state_dict().items()}
    losses = [h["losses"] for h in trainer.history]
    report = {"hash": digest(model.state_dict()), "losses": losses, "n_events": len(events)}
    _write(Path(out), report, arrays)


def pretrain(data: str, out: str, batch: str) -> None:
    """GTGM-style pretraining (Barlow Twins + image-text InfoNCE) of ``lvit_tiny``'s encoder on
    the 12 training images, per-rank batch ``batch``; writes the encoder's final weights."""
    from src_models.engine.pretrain import PretrainConfig, Pretrainer, pretrain_dataset
    from src_models.models import create_model

    torch.set_num_threads(1)
    dataset = pretrain_dataset(Path(data) / "train", img_size=64)
    torch.manual_seed(100 + _rank())
    model = create_model("lvit_tiny", vit_dropout=0.0)
    cfg = PretrainConfig(epochs=2, batch_size=int(batch), lr=1e-4, proj_dim=32, device="cpu")
    pre = Pretrainer(model, dataset, HashEncoder(), cfg)
    epochs = list(pre.fit())
    pre.save(Path(out) / "pre.safetensors")
    state = model.encoder.state_dict()
    arrays = {f"w:{k}": v.numpy() for k, v in state.items()}
    report = {"hash": digest(state), "history": pre.history, "n_events": len(epochs)}
    _write(Path(out), report, arrays)


def sks(data: str, out: str, batch: str) -> None:
    """SKS stage 1 (the lesion classifier of ``sks_unet_tiny``) on the 12 training images with
    image-level labels 0/1, per-rank batch ``batch``; writes the classifier's weights."""
    from src_models.data import SegmentationDataset
    from src_models.engine.sks import ClassifierConfig, train_classifier
    from src_models.models import create_model

    torch.set_num_threads(1)
    dataset = SegmentationDataset(Path(data) / "train", 64, augment=True, seed=0)
    labels = np.array([0 if i % 3 == 0 else 1 for i in range(len(dataset))], np.int8)
    torch.manual_seed(100 + _rank())
    model = create_model("sks_unet_tiny", img_size=64)
    cfg = ClassifierConfig(epochs=2, batch_size=int(batch), lr=1e-4, device="cpu")
    epochs = list(train_classifier(model, dataset, cfg, labels=labels))
    state = model.classifier.state_dict()
    arrays = {f"w:{k}": v.numpy() for k, v in state.items()}
    report = {"hash": digest(state), "epochs": [e.loss for e in epochs], "n_events": len(epochs)}
    _write(Path(out), report, arrays)


def primitives(out: str) -> None:
    """Rank r checks the sync helpers against the one-process computation on the global batch
    and writes ``rank<r>.json`` with the largest differences."""
    from src_models.engine.distributed import Distributed
    from src_models.engine.sync import gather_rows, release_norms, sync_norms

    torch.set_num_threads(1)
    d = Distributed()
    d.setup("cpu")
    rank = d.rank
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 4, generator=g)
    idx = torch.arange(5)
    share = slice(0, 3) if rank == 0 else slice(3, 5)  # unequal shares
    # rows: rank 0 gives 3, rank 1 gives 0 (an empty share) and 2 in a second call
    mine = x[share].clone().requires_grad_(True)
    empty = gather_rows({"x": x[:0], "i": idx[:0]}) if rank == 1 else None
    if rank == 0:
        gather_rows({"x": x[:3], "i": idx[:3]})  # meets rank 1's empty call
    rows = gather_rows({"x": mine, "i": idx[share], "b": idx[share] > 1})
    weight = torch.arange(5.0).reshape(5, 1, 1, 1)
    (rows["x"] * weight).sum().backward()
    report = {
        "gathered": float((rows["x"] - x).abs().max()),
        "index": rows["i"].tolist(),
        "bool": rows["b"].tolist(),
        "empty": None if empty is None else list(empty["x"].shape),
        # the global gradient is weight; each rank gets world x its share (averaging fixes it)
        "grad": float((mine.grad - 2 * weight[share].expand_as(mine)).abs().max()),
    }
    # synchronised BatchNorm on the shares == plain BatchNorm on the whole batch
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    ref = torch.nn.BatchNorm2d(3)
    ref.load_state_dict(bn.state_dict())
    sync_norms(bn)
    xs = x[share].clone().requires_grad_(True)
    y = bn(xs)
    xr = x.clone().requires_grad_(True)
    yr = ref(xr)
    (yr * weight).sum().backward()
    loss = (gather_rows({"y": y})["y"] * weight).sum()
    loss.backward()
    d.average_gradients(bn.parameters())
    report["bn_out"] = float((y - yr[share]).abs().max())
    report["bn_grad_x"] = float((xs.grad / 2 - xr.grad[share]).abs().max())
    report["bn_grad_w"] = float((bn.weight.grad - ref.weight.grad).abs().max())
    report["bn_running"] = float((bn.running_var - ref.running_var).abs().max())
    report["released"] = release_norms(bn) == 1 and type(bn) is torch.nn.BatchNorm2d
    d.teardown()
    _write(Path(out), report)


def _kill_when(index: Path, t: int) -> None:
    """Rank 1 only: SIGKILL this process once ``index`` records ``t`` updates."""
    if _rank() != 1:
        return

    def watch():
        while True:
            try:
                if json.loads(index.read_text())["t"] >= t:
                    time.sleep(0.3)  # into the next round's training
                    os.kill(os.getpid(), signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()


def cli(watch: str, kill_after: str, *argv: str) -> None:
    """``napari-lvit ARGV...``; rank 1 kills itself once the bank index ``watch`` records
    ``kill_after`` updates (nothing is killed for ``kill_after`` "")."""
    from src_models.cli import main

    if kill_after:
        _kill_when(Path(watch), int(kill_after))
    sys.exit(main(list(argv)))


def logged_cli(log_dir: str, *argv: str) -> None:
    """``napari-lvit ARGV...`` with every mask that batch prediction writes logged in
    ``log_dir/writes.rank<r>.txt`` (one output path a line)."""
    import src_models.batch as batch

    log = Path(log_dir) / f"writes.rank{_rank()}.txt"

    def logging(write):
        def wrapper(item_or_path, *args, **kwargs):
            target = getattr(item_or_path, "output", item_or_path)
            with open(log, "a") as f:
                f.write(f"{target}\n")
            return write(item_or_path, *args, **kwargs)

        return wrapper

    originals = batch.write_mask, batch._write_nifti
    batch.write_mask, batch._write_nifti = (logging(f) for f in originals)
    try:
        cli("", "", *argv)
    finally:
        batch.write_mask, batch._write_nifti = originals


def cli_killed_at_step(step: str, *argv: str) -> None:
    """``napari-lvit ARGV...``; rank 1 SIGKILLs itself at the start of its ``step``-th training
    step (counted over the whole job, 1-based)."""
    from src_models.engine import Trainer

    if _rank() == 1:
        original, calls = Trainer.training_step, [0]

        def training_step(self, batch):
            calls[0] += 1
            if calls[0] == int(step):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, batch)

        Trainer.training_step = training_step
    cli("", "", *argv)


JOBS = {
    f.__name__: f
    for f in (plain, epi, cli, logged_cli, cli_killed_at_step, clcc, pretrain, sks, primitives)
}


# --------------------------------------------------------------------------- launching


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(job: str, *args: str, nproc: int = 2, timeout: float = 240):
    """Run ``JOBS[job](*args)`` under torchrun with ``nproc`` CPU processes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(Path(__file__).resolve()),
        job,
        *map(str, args),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


if __name__ == "__main__":
    JOBS[sys.argv[1]](*sys.argv[2:])

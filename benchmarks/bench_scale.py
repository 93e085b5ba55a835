"""Scaling EPI out: the same semi-supervised run in 1 process and in 2 torchrun processes.

One EPI run as in ``bench_semi`` (synthetic QaTa-style chest X-rays, 25% labels: round 0 on the
labeled images, then ``--rounds`` EPI rounds with the LV loss) on the same data and the same
global batch, launched as

- 1 process with 1 torch thread,
- 1 process with 2 torch threads (both cores in one process),
- 2 processes (``torchrun --nproc_per_node=2``, gloo) with 1 thread each, half the batch each.

Printed side by side: wall time of the training (``fit``, rank 0), of the whole launch (with
start-up and the text encoder's load), validation and test Dice (mean per image at 0.5). The
2-process run takes the steps of the 1-process run up to rounding (BatchNorm and the loss over
the global batch, gradients averaged, the pseudo-label pass sharded: ``src_models.engine.sync``),
so its Dice should match and only the time differ. Results go to ``benchmarks/out/scale.json``
(``scale_quick.json``).

    python -m benchmarks.bench_scale             # ~7 min on 2 idle CPU cores
    python -m benchmarks.bench_scale --quick     # a 1-2 minute smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks._common import header, synthetic_splits, train_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: (processes, torch threads per process)
LAUNCHES = ((1, 1), (1, 2), (2, 1))


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_scale", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/out/)")
    p.add_argument("--model", default="lvit_s")
    p.add_argument("--size", type=int, default=80)
    p.add_argument("--n-train", type=int, default=96, help="a multiple of 4 (see --fraction)")
    p.add_argument("--n-val", type=int, default=24)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--contrast", type=float, default=1.0)
    p.add_argument("--fraction", type=float, default=0.25, help="labeled fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round0-epochs", type=int, default=24)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4, help="global batch (split over ranks)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lv-weight", type=float, default=0.1)
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    # one run of a launch (internal: started by the benchmark itself)
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- one run


def worker(args) -> None:
    """One EPI run (every rank of a launch runs this); rank 0 writes ``args.worker``."""
    from src_models.data import SegmentationDataset, scan_split
    from src_models.engine import evaluate
    from src_models.engine.semi import SemiConfig, SemiTrainer, split_labeled
    from src_models.models import create_model
    from src_models.text import TextEncoder

    torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    encoder = TextEncoder("default")
    train = scan_split(args.data / "train")
    labeled, unlabeled = split_labeled(train, args.fraction, seed=args.seed)
    size = args.size
    train_set = SegmentationDataset(labeled + unlabeled, size, augment=True, seed=args.seed)
    val_set = SegmentationDataset(scan_split(args.data / "val"), size)
    test_set = SegmentationDataset(scan_split(args.data / "test"), size)
    torch.manual_seed(args.seed)
    model = create_model(args.model, img_size=size, text_dim=encoder.dim)
    cfg = train_config(args, args.round_epochs, args.seed)
    cfg.batch_size = args.batch_size // world  # the same global batch
    cfg.t0 = max(args.round0_epochs, args.round_epochs)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        bank = os.environ.get("BENCH_SCALE_BANK", tmp)  # one folder for every rank
        semi = SemiConfig(
            rounds=args.rounds,
            round0_epochs=args.round0_epochs,
            round_epochs=args.round_epochs,
            lv_weight=args.lv_weight,
            round_lr=args.lr,
            pseudo_dir=bank,
            bank_fsync=False,
        )
        trainer = SemiTrainer(model, train_set, val_set, encoder, cfg, semi)
        t0 = time.perf_counter()
        done = trainer.run()
        seconds = time.perf_counter() - t0
    if rank != 0:
        return
    test = float(evaluate(model, test_set, encoder, device="cpu", batch_size=8)["dice"])
    result = {
        "processes": world,
        "threads": args.threads,
        "batch_per_process": cfg.batch_size,
        "fit_seconds": round(seconds, 1),
        "val_dice": done.best_dice,
        "best_round": done.best_round,
        "test_dice": test,
        "history": done.history,
    }
    args.worker.write_text(json.dumps(result))


def launch(args, data: Path, procs: int, threads: int, work: Path) -> dict:
    """Run :func:`worker` as ``procs`` processes of ``threads`` threads; its result + wall."""
    result = work / f"result_{procs}x{threads}.json"
    bank = work / f"bank_{procs}x{threads}"
    own = [
        "--worker", str(result), "--data", str(data), "--threads", str(threads),
        "--model", args.model, "--size", str(args.size), "--fraction", str(args.fraction),
        "--seed", str(args.seed), "--round0-epochs", str(args.round0_epochs),
        "--rounds", str(args.rounds), "--round-epochs", str(args.round_epochs),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--lv-weight", str(args.lv_weight),
    ]  # fmt: skip
    if procs == 1:
        cmd = [sys.executable, "-m", "benchmarks.bench_scale", *own]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
            "-m", "benchmarks.bench_scale", *own,
        ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), BENCH_SCALE_BANK=str(bank))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{procs}x{threads} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(result.read_text())
    out["launch_seconds"] = round(wall, 1)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- report


def table(runs: list[dict]) -> str:
    base = runs[0]["fit_seconds"]
    rows = [
        "| processes x threads | batch per process | fit (s) | speed-up | launch (s) | "
        "val Dice | test Dice |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        rows.append(
            f"| {r['processes']} x {r['threads']} | {r['batch_per_process']} | "
            f"{r['fit_seconds']:.1f} | {base / r['fit_seconds']:.2f}x | {r['launch_seconds']:.1f} "
            f"| {r['val_dice']:.4f} | {r['test_dice']:.4f} |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        return 0
    if args.quick:
        args.n_train, args.n_val, args.n_test, args.size = 24, 8, 8, 64
        args.round0_epochs, args.rounds, args.round_epochs = 2, 1, 1
    if args.n_train % args.batch_size or args.batch_size % 2:
        raise SystemExit("--n-train and --batch-size must divide by 4 and 2 (equal shards)")
    if args.out is None:
        args.out = ROOT / "benchmarks" / "out" / f"scale{'_quick' if args.quick else ''}.json"
    head = header("benchmarks.bench_scale", argv)
    results = {"header": head, "config": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        synthetic_splits(args, work / "data")
        for procs, threads in LAUNCHES:
            print(f"running {procs} process(es) x {threads} thread(s) ...", flush=True)
            run = launch(args, work / "data", procs, threads, work)
            results["runs"].append(run)
            print(
                f"  fit {run['fit_seconds']:.1f} s (launch {run['launch_seconds']:.1f} s), "
                f"val Dice {run['val_dice']:.4f}, test Dice {run['test_dice']:.4f}",
                flush=True,
            )
    print()
    print(table(results["runs"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

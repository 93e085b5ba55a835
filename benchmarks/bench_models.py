"""Size and CPU speed of the registered models.

For each model: parameters, GMAC of one forward pass on a batch of one (at the model's own
img_size), median forward latency (batch 1, eval, no_grad) and median training-step latency
(batch 2: forward, 0.5 Dice + 0.5 BCE, backward, Adam step). ``--cpu-bf16`` adds rows under
bf16 autocast (what ``train --cpu-bf16`` uses), ``--compile`` rows under ``torch.compile`` (its
compile time apart, in the JSON). Prints a table and writes JSON.

    python -m benchmarks.bench_models --models lvit_t lvit_s unet unet_s --repeats 5

Before/after a change: ``--against DIR`` (a checkout of another commit, e.g. ``git worktree add
/tmp/before HEAD~1``) times both trees in fresh processes, alternating between them for
``--rounds`` rounds, so that both see the same machine; the medians are over all rounds.

    python -m benchmarks.bench_models --models lvit_t --against /tmp/before --rounds 5 --cpu-bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._common import header
from benchmarks._time_model import time_model
from src_models.models import create_model, list_models
from src_models.models.profile import count_macs, count_parameters

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_time_model.py"
# The official LViT-T (HUANGLIZI/LViT) measured on this machine type at another time (DESIGN.md),
# 224x224, 2 threads: printed beside the table, never divided by (the machine drifts by 1.5x).
REFERENCE = {"model": "official LViT-T", "forward_s": 0.27, "train_step_s": 1.6}


@dataclass(frozen=True)
class Mode:
    """How a model is timed: float32 or bf16 autocast, eager or ``torch.compile``."""

    cpu_bf16: bool = False
    compiled: bool = False

    @property
    def label(self) -> str:
        return ("bf16" if self.cpu_bf16 else "fp32") + ("+compile" if self.compiled else "")

    @property
    def flags(self) -> list[str]:
        return ["--cpu-bf16"] * self.cpu_bf16 + ["--compile"] * self.compiled


def bench_model(name: str, repeats: int, mode: Mode = Mode()) -> dict:
    torch.manual_seed(0)
    model = create_model(name)
    return _describe(name, model, mode) | time_model(model, repeats, mode.cpu_bf16, mode.compiled)


def _describe(name: str, model, mode: Mode) -> dict:
    return {
        "model": name,
        "precision": mode.label,
        "img_size": model.img_size,
        "text_dim": model.text_dim,
        "text_len": model.config.text_len,
        "params": count_parameters(model),
        "macs": count_macs(model),
    }


def _worker(root: Path, name: str, repeats: int, threads: int, mode: Mode) -> dict:
    cmd = [sys.executable, str(WORKER), "--root", str(root), "--model", name]
    cmd += ["--repeats", str(repeats), "--threads", str(threads), *mode.flags]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"timing {name} in {root} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_against(name: str, other: Path, args, mode: Mode) -> list[dict]:
    """Rows for this tree and ``other``, timed in alternating fresh processes."""
    trees = {"this": ROOT, "other": other.resolve()}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for _ in range(args.rounds):
        for key, root in trees.items():
            runs[key].append(_worker(root, name, args.repeats, args.threads, mode))
    torch.manual_seed(0)
    info = _describe(name, create_model(name), mode)
    rows = []
    for key, root in trees.items():
        fwd = [t for r in runs[key] for t in r["forward_all_s"]]
        step = [t for r in runs[key] for t in r["train_step_all_s"]]
        rows.append(
            info
            | {
                "tree": str(root),
                "which": key,
                "src_models": runs[key][0]["src_models"],
                "forward_s": statistics.median(fwd),
                "forward_all_s": fwd,
                "train_step_s": statistics.median(step),
                "train_step_all_s": step,
                "compile_s": statistics.median(r["compile_s"] for r in runs[key]),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_models",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--models", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-bf16", action="store_true", help="add rows under bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="add rows under torch.compile")
    parser.add_argument("--against", type=Path, help="another checkout to time side by side")
    parser.add_argument("--rounds", type=int, default=5, help="with --against: alternations")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/models.json"))
    args = parser.parse_args(argv)
    if args.against is not None and not (args.against / "src_models").is_dir():
        parser.error(f"--against {args.against}: no src_models folder there (not a checkout)")

    torch.set_num_threads(args.threads)
    head = header("benchmarks.bench_models", argv)
    names = args.models or list_models()
    modes = [Mode()] + [Mode(cpu_bf16=True)] * args.cpu_bf16 + [Mode(compiled=True)] * args.compile
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    columns = f"{'model':<12}{'prec':>5}{'img':>5}{'params (M)':>12}{'GMAC':>9}"
    columns += f"{'fwd b1 (ms)':>13}{'step b2 (ms)':>14}"
    print(columns + ("  tree" if args.against else ""))
    for name in names:
        for mode in modes:
            if args.against is None:
                batch = [bench_model(name, args.repeats, mode)]
            else:
                batch = bench_against(name, args.against, args, mode)
            for r in batch:
                rows.append(r)
                print(
                    f"{name:<12}{r['precision']:>5}{r['img_size']:>5}{r['params'] / 1e6:>12.2f}"
                    f"{r['macs'] / 1e9:>9.2f}{r['forward_s'] * 1e3:>13.1f}"
                    f"{r['train_step_s'] * 1e3:>14.1f}"
                    + (f"  {r['tree']}" if args.against else ""),
                    flush=True,
                )
    print(
        f"(official LViT-T, measured at another time on this machine type: forward "
        f"{REFERENCE['forward_s'] * 1e3:.0f} ms, step {REFERENCE['train_step_s'] * 1e3:.0f} ms)"
    )
    result = {
        "header": head,
        "threads": args.threads,
        "repeats": args.repeats,
        "rounds": args.rounds if args.against else None,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "reference": REFERENCE,
        # Timings are only comparable on an otherwise idle machine: record its load.
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "models": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

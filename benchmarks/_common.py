"""What the benchmarks share: the header every one of them writes first (:func:`header`), and
the helpers of the label-efficiency benchmarks (``bench_semi``, ``bench_fewlabels``).

Imported as ``benchmarks._common`` by the benchmarks, which run from the repository root as
``python -m benchmarks.<name>``; not part of the installed package.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shlex
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

from src_models.data import scan_split
from src_models.data.synthetic import write_dataset
from src_models.engine import KeepBest as KeepBest  # re-exported for the benchmarks
from src_models.engine import TrainConfig


def train_config(args, epochs: int, seed: int) -> TrainConfig:
    """One cosine cycle over ``epochs``, no early stopping, nothing written to disk."""
    return TrainConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.lr / 10,
        t0=max(epochs, 1),
        patience=10**6,
        seed=seed,
        device="cpu",
        val_batch_size=8,
        save_last=False,
    )


def labeled_epochs(epochs: int, n_images: int, batch_size: int, min_steps: int) -> int:
    """``epochs``, lengthened to at least ``min_steps`` optimizer steps.

    With few labels an epoch is a handful of steps: a fixed epoch count would leave the model
    (and the EPI teacher it becomes) undertrained.
    """
    steps = -(-n_images // batch_size)
    return max(epochs, -(-min_steps // max(steps, 1)))


def stats(values) -> tuple[float | None, float | None]:
    """(mean, sample sd) of the values that are not None; sd 0 for one value."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def synthetic_splits(args, work: Path, **kw):
    """Train/val/test splits of synthetic QaTa data (``args.n_*``, ``args.contrast``)."""
    size = max(args.size, 64)
    kw["contrast"] = args.contrast
    parts = (("train", args.n_train, 100), ("val", args.n_val, 200), ("test", args.n_test, 300))
    return tuple(
        scan_split(write_dataset(work / name, "qata", n=n, size=size, seed=seed, **kw))
        for name, n, seed in parts
    )


def monuseg_splits(root: Path, seed: int, *, image_label: int | None = None):
    """MoNuSeg (read only): Train_Folder split 4:1 into train/val by seed; Val_Folder is test.

    ``image_label`` sets every training record's image-level label (every MoNuSeg image has
    nuclei).
    """
    records = scan_split(root / "Train_Folder")
    order = np.random.default_rng(1000 + seed).permutation(len(records))
    n_val = max(2, len(records) // 5)
    val = [records[i] for i in order[:n_val]]
    train = [records[i] for i in order[n_val:]]
    if image_label is not None:
        train = [dataclasses.replace(r, label=image_label) for r in train]
    return train, val, scan_split(root / "Val_Folder")


def load_split(folder: Path) -> list[dict]:
    """The images of an LViT split folder as arrays (read only): ``name``, ``image`` (float
    ``[H, W, C]`` in [0, 1]), ``mask`` (bool ``[H, W]``) and ``text`` per image."""
    from src_models.data.io import load_image, mask_from_array, to_float01

    out = []
    for rec in scan_split(folder, require_masks=True, require_text=True):
        img = load_image(rec.image_path)
        msk = load_image(rec.mask_path)
        out.append(
            {
                "name": rec.name,
                "image": to_float01(img.data),
                "mask": mask_from_array(msk.data, rgb=msk.rgb),
                "text": rec.text or "",
            }
        )
    return out


# --------------------------------------------------------------------------- header

REPO = Path(__file__).resolve().parents[1]


def machine_info() -> dict:
    """What a run measured on: python, torch, its intra-op threads, CPU, load average.

    Holds every key of the ``machine`` entries the benchmarks wrote before the shared header,
    so that their JSONs stay comparable. Call it after ``torch.set_num_threads``.
    """
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def _git(*args: str) -> str | None:
    """A git command's output in the repository (``None`` without git or a checkout)."""
    cmd = ["git", "--no-optional-locks", *args]  # no index refresh: reads only
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def header(module: str, argv: list[str] | None = None, *, echo: bool = True) -> dict:
    """The header every benchmark writes first in its JSON (key ``header``) and prints first.

    Date, the command that repeats the run, the git commit (and whether tracked files had
    uncommitted changes) and :func:`machine_info`. ``module``: the benchmark's module, e.g.
    ``"benchmarks.bench_semi"``; ``argv``: the arguments its ``main`` parsed (default
    ``sys.argv[1:]``). Call it after ``torch.set_num_threads``.
    """
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    status = _git("status", "--porcelain", "--untracked-files=no")
    head = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", module, *args]),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "machine": machine_info(),
    }
    if echo:
        print(header_text(head), flush=True)
    return head


def header_text(head: dict) -> str:
    """The printed form of a :func:`header`: three lines."""
    m = head["machine"]
    commit = (head["git_commit"] or "unknown")[:12]
    dirty = " + uncommitted changes" if head["git_dirty"] else ""
    load = " ".join(f"{x:.2f}" for x in m["loadavg"]) if m["loadavg"] else "-"
    return (
        f"# {head['command']}\n"
        f"# {head['date']}, git {commit}{dirty}\n"
        f"# python {m['python']}, torch {m['torch']}, {m['threads']} threads, {m['cpu']} "
        f"({m['cpu_count']} CPUs), load {load}"
    )

"""Size and CPU speed of the registered models.

For each model: parameters, GMAC of one forward pass on a batch of one (at the model's own
img_size), median forward latency (batch 1, eval, no_grad) and median training-step latency
(batch 2: forward, 0.5 Dice + 0.5 BCE, backward, Adam step). Prints a table and writes JSON.

    python -m benchmarks.bench_models --models lvit_t lvit_s unet unet_s --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks._common import header
from src_models.models import create_model, list_models
from src_models.models.profile import count_macs, count_parameters

# The official LViT-T (HUANGLIZI/LViT) measured on this machine type, 224x224, 2 threads.
REFERENCE = {"model": "official LViT-T", "forward_s": 0.27, "train_step_s": 1.6}


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return 0.5 * dice.mean() + 0.5 * F.binary_cross_entropy_with_logits(logits, target)


def _time(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _inputs(model, batch: int, gen: torch.Generator):
    s = model.img_size
    image = torch.rand(batch, model.in_chans, s, s, generator=gen)
    text = torch.randn(batch, model.config.text_len, model.text_dim, generator=gen)
    return image, (text if model.uses_text else None)


def bench_model(name: str, repeats: int) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = create_model(name)
    row = {
        "model": name,
        "img_size": model.img_size,
        "text_dim": model.text_dim,
        "text_len": model.config.text_len,
        "params": count_parameters(model),
        "macs": count_macs(model),
    }

    model.eval()
    image, text = _inputs(model, 1, gen)
    with torch.no_grad():
        fwd = _time(lambda: model(image, text), repeats)

    model.train()
    image, text = _inputs(model, 2, gen)
    target = (torch.rand(2, 1, model.img_size, model.img_size, generator=gen) > 0.7).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        _loss(model(image, text), target).backward()
        opt.step()

    train = _time(step, repeats)
    row.update(
        forward_s=statistics.median(fwd),
        forward_all_s=fwd,
        train_step_s=statistics.median(train),
        train_step_all_s=train,
    )
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_models",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--models", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/models.json"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    head = header("benchmarks.bench_models", argv)
    names = args.models or list_models()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    columns = f"{'model':<12}{'img':>5}{'params (M)':>12}{'GMAC':>9}{'fwd b1 (ms)':>13}"
    columns += f"{'step b2 (ms)':>14}"
    print(columns)
    for name in names:
        r = bench_model(name, args.repeats)
        rows.append(r)
        print(
            f"{name:<12}{r['img_size']:>5}{r['params'] / 1e6:>12.2f}{r['macs'] / 1e9:>9.2f}"
            f"{r['forward_s'] * 1e3:>13.1f}{r['train_step_s'] * 1e3:>14.1f}",
            flush=True,
        )
    print(
        f"{'reference':<12}{224:>5}{'':>12}{'':>9}{REFERENCE['forward_s'] * 1e3:>13.1f}"
        f"{REFERENCE['train_step_s'] * 1e3:>14.1f}   ({REFERENCE['model']})"
    )
    result = {
        "header": head,
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "reference": REFERENCE,
        # Timings are only comparable on an otherwise idle machine: record its load.
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "models": rows,
    }
    for r in rows:
        if r["model"] == "lvit_t":
            ratio = {
                "forward": r["forward_s"] / REFERENCE["forward_s"],
                "train_step": r["train_step_s"] / REFERENCE["train_step_s"],
            }
            result["lvit_t_vs_reference"] = ratio
            print(
                f"lvit_t / official LViT-T time ratio: forward {ratio['forward']:.2f}, "
                f"train step {ratio['train_step']:.2f} (< 1 = faster)"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

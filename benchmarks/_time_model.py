"""Time one registered model's forward and training step; the worker behind ``bench_models``.

It imports only torch and ``src_models.models.create_model``, so it can time the models of
another checkout (``--root``, e.g. a worktree of the previous commit) with the same code:

    python benchmarks/_time_model.py --root /tmp/before --model lvit_t --repeats 5 [--cpu-bf16]

prints one JSON row. ``bench_models --against`` runs it for both trees in turn (interleaved).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
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


def time_model(model, repeats: int, cpu_bf16: bool = False, compiled: bool = False) -> dict:
    """Median forward (batch 1, eval, no_grad) and training step (batch 2: forward, 0.5 Dice +
    0.5 BCE, backward, Adam step) in seconds, with every repeat; ``cpu_bf16``: both under
    ``torch.autocast("cpu", bfloat16)``; ``compiled``: the model under ``torch.compile`` (the
    compilation happens in the warm-up and is timed apart, ``compile_s``)."""
    gen = torch.Generator().manual_seed(0)
    compile_s = 0.0
    if compiled:
        model = torch.compile(model)
    precision = (
        torch.autocast("cpu", dtype=torch.bfloat16) if cpu_bf16 else contextlib.nullcontext()
    )
    model.eval()
    image, text = _inputs(model, 1, gen)

    def forward() -> None:
        with torch.no_grad(), precision:
            model(image, text)

    if compiled:
        t0 = time.perf_counter()
        forward()
        compile_s += time.perf_counter() - t0
    fwd = _time(forward, repeats)

    model.train()
    image2, text2 = _inputs(model, 2, gen)
    target = (torch.rand(2, 1, model.img_size, model.img_size, generator=gen) > 0.7).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with precision:
            logits = model(image2, text2)
        _loss(logits, target).backward()
        opt.step()

    if compiled:
        t0 = time.perf_counter()
        step()
        compile_s += time.perf_counter() - t0
    train = _time(step, repeats)
    return {
        "compile_s": compile_s,
        "forward_s": statistics.median(fwd),
        "forward_all_s": fwd,
        "train_step_s": statistics.median(train),
        "train_step_all_s": train,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="the checkout whose src_models is timed")
    p.add_argument("--model", required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cpu-bf16", action="store_true")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    sys.path.insert(0, args.root)
    import src_models
    from src_models.models import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    row = time_model(create_model(args.model), args.repeats, args.cpu_bf16, args.compile)
    print(json.dumps(row | {"src_models": src_models.__file__}))


if __name__ == "__main__":
    main()

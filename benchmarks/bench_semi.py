"""Semi-supervised retraining benchmark: does EPI (+ the LV loss) make few labels go further?

For each labeled fraction (25% and 10%) and seed, on synthetic QaTa-style chest X-rays (with
``--contrast 0.5`` their lesions are half as bright: a harder task on which 25% of the labels
fall clearly short of all of them) or on MoNuSeg:

- ``supervised``: the labeled images only (round 0, then the same number of further epochs as
  the EPI rounds, on the labeled images; best epoch by validation Dice);
- ``EPI``: round 0, then ``--rounds`` EPI rounds on labeled + pseudo-labeled images (LV off);
- ``EPI + LV``: the same with the LV loss (weight 0.1);
- ``EPI + LV (plain beta)``: the paper's EMA without bias correction (25% only), to show why the
  corrected schedule is the default with few rounds;
- ``100% labels``: every training image labeled, the same number of epochs.

Round 0 is trained once per (fraction, seed) and shared by the variants. Every variant's final
model is the one with the best validation Dice over all its rounds (round 0 included), and is
scored on a held-out test split (mean per-image Dice at threshold 0.5, model size). Results go
to ``benchmarks/out/semi.json`` (``semi_monuseg.json``, ``*_quick.json``); a markdown table
is printed.

    python -m benchmarks.bench_semi --contrast 0.5        # ~35 min on 2 shared CPU cores
    python -m benchmarks.bench_semi --quick               # a 1-minute smoke run
    python -m benchmarks.bench_semi --monuseg /work/shared/datasets/MoNuSeg --size 224 \
        --full-epochs 60                                  # MoNuSeg instead, ~45 min

MoNuSeg (licence CC BY-NC-SA) is only read, never copied: its Train_Folder is split into
train/val by seed, its Val_Folder is the test split.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks._common import (  # noqa: E402
    KeepBest,
    header,
    labeled_epochs,
    monuseg_splits,
    stats,
    synthetic_splits,
    train_config,
)
from src_models.data import SegmentationDataset  # noqa: E402
from src_models.engine import Trainer, evaluate  # noqa: E402
from src_models.engine.semi import SemiConfig, SemiTrainer, split_labeled  # noqa: E402
from src_models.models import create_model  # noqa: E402
from src_models.text import TextEncoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("supervised", "epi", "epi_lv", "epi_lv_plain")
LABELS = {
    "supervised": "supervised only",
    "epi": "+ EPI",
    "epi_lv": "+ EPI + LV",
    "epi_lv_plain": "+ EPI + LV, plain beta (no bias correction)",
    "full": "100% labels",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_semi",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/out/)")
    p.add_argument("--model", default="lvit_s")
    p.add_argument("--size", type=int, default=80)
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-val", type=int, default=24)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument(
        "--contrast",
        type=float,
        default=1.0,
        help="synthetic lesion brightness (below 1: fainter lesions, a harder task)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.1])
    p.add_argument("--plain-fractions", type=float, nargs="*", default=[0.25])
    p.add_argument("--round0-epochs", type=int, default=24)
    p.add_argument(
        "--round0-min-steps",
        type=int,
        default=250,
        help="lengthen round 0 to at least this many optimizer steps (few labels = short "
        "epochs: the EPI teacher would be undertrained)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-epochs", type=int, default=8)
    p.add_argument("--full-epochs", type=int, default=20, help="epochs of the 100%%-label run")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--round-lr",
        type=float,
        default=1e-3,
        help="lr after round 0 (EPI rounds and the supervised continuation alike)",
    )
    p.add_argument("--beta", type=float, default=0.99)
    p.add_argument("--lv-weight", type=float, default=0.1)
    p.add_argument("--unlabeled-weight", type=float, default=0.5)
    p.add_argument("--margin", type=float, default=0.1)
    p.add_argument("--hard", action="store_true", help="harden pseudo labels at 0.5")
    p.add_argument("--jitter", type=float, default=0.0, help="photometric jitter of unlabeled")
    p.add_argument("--labeled-repeat", type=int, default=1)
    p.add_argument(
        "--threads", type=int, default=1, help="1 is fastest when other jobs share the cores"
    )
    p.add_argument("--monuseg", type=Path, default=None, help="MoNuSeg root (read only)")
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    return p.parse_args(argv)


def _test_dice(model, test_set, encoder) -> float:
    return float(evaluate(model, test_set, encoder, device="cpu", batch_size=8)["dice"])


def _semi(args, model, train_set, val_set, encoder, seed, *, round0, rounds, **semi_kw):
    cfg = train_config(args, args.round_epochs, seed)
    cfg.t0 = max(round0, args.round_epochs)  # round 0: one cosine cycle; rounds: one each
    with tempfile.TemporaryDirectory(prefix="bench-semi-") as tmp:
        semi = SemiConfig(
            rounds=rounds,
            round0_epochs=round0,
            round_epochs=args.round_epochs,
            beta=args.beta,
            unlabeled_weight=args.unlabeled_weight,
            margin=args.margin,
            labeled_repeat=args.labeled_repeat,
            hard=args.hard,
            unlabeled_jitter=args.jitter,
            round_lr=args.round_lr,
            pseudo_dir=tmp,
            bank_fsync=False,
            **semi_kw,
        )
        trainer = SemiTrainer(model, train_set, val_set, encoder, cfg, semi)
        done = trainer.run()
    return done


def run_cell(args, encoder, splits, fraction: float, seed: int, log) -> dict:
    """All variants of one (fraction, seed); returns {variant: {"val", "test", ...}}."""
    train_recs, val_recs, test_recs = splits
    size = args.size
    labeled, unlabeled = split_labeled(train_recs, fraction, seed=seed)
    semi_set = SegmentationDataset(labeled + unlabeled, size, augment=True, seed=seed)
    lab_set = SegmentationDataset(labeled, size, augment=True, seed=seed)
    val_set = SegmentationDataset(val_recs, size)
    test_set = SegmentationDataset(test_recs, size)
    out: dict[str, dict] = {}

    torch.manual_seed(seed)
    model = create_model(args.model, img_size=size, text_dim=encoder.dim)
    t0 = time.perf_counter()
    # round 0 (shared): labeled images only, best epoch by validation Dice
    round0 = labeled_epochs(
        args.round0_epochs, len(lab_set), args.batch_size, args.round0_min_steps
    )
    done0 = _semi(args, model, lab_set, val_set, encoder, seed, round0=round0, rounds=0)
    round0_state = copy.deepcopy(model.state_dict())
    val0 = done0.best_dice
    test0 = _test_dice(model, test_set, encoder)
    log(
        f"  round 0 ({round0} epochs): val {val0:.4f} test {test0:.4f} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    extra_epochs = args.rounds * args.round_epochs

    def finish(name, model, val, seconds, history=None):
        # the final model is the best by validation over all rounds, round 0 included
        if val is None or val < val0:
            model.load_state_dict(round0_state)
            val, test, chosen = val0, test0, "round 0"
        else:
            test, chosen = _test_dice(model, test_set, encoder), "later"
        out[name] = {
            "val": val,
            "test": test,
            "chosen": chosen,
            "seconds": seconds,
            "history": history or [],
        }
        log(f"  {name}: val {val:.4f} test {test:.4f} ({chosen}, {seconds:.0f} s)")

    # supervised only: the same number of further epochs on the labeled images
    t = time.perf_counter()
    model.load_state_dict(round0_state)
    cont = train_config(args, extra_epochs, seed + 7)
    cont.lr, cont.min_lr = args.round_lr, args.round_lr / 10
    keep = KeepBest()
    done = Trainer(model, lab_set, val_set, encoder, cont, hooks=[keep]).run()
    keep.restore(model)
    finish("supervised", model, done.best_dice, time.perf_counter() - t)

    variants = [("epi", {"lv_weight": 0.0}), ("epi_lv", {"lv_weight": args.lv_weight})]
    if any(abs(fraction - f) < 1e-9 for f in args.plain_fractions):
        variants.append(("epi_lv_plain", {"lv_weight": args.lv_weight, "schedule": "plain"}))
    for name, kw in variants:
        t = time.perf_counter()
        model.load_state_dict(round0_state)
        done = _semi(
            args, model, semi_set, val_set, encoder, seed, round0=0, rounds=args.rounds, **kw
        )
        finish(name, model, done.best_dice, time.perf_counter() - t, done.history)
    return out


def run_full(args, encoder, splits, seed: int, log) -> dict:
    train_recs, val_recs, test_recs = splits
    size = args.size
    train_set = SegmentationDataset(train_recs, size, augment=True, seed=seed)
    val_set = SegmentationDataset(val_recs, size)
    test_set = SegmentationDataset(test_recs, size)
    torch.manual_seed(seed)
    model = create_model(args.model, img_size=size, text_dim=encoder.dim)
    epochs = args.full_epochs
    t = time.perf_counter()
    keep = KeepBest()
    cfg = train_config(args, epochs, seed)
    done = Trainer(model, train_set, val_set, encoder, cfg, hooks=[keep]).run()
    keep.restore(model)
    test = _test_dice(model, test_set, encoder)
    seconds = time.perf_counter() - t
    log(f"  full: val {done.best_dice:.4f} test {test:.4f} ({seconds:.0f} s)")
    return {"val": done.best_dice, "test": test, "seconds": seconds}


# --------------------------------------------------------------------------- report


def table(results: dict) -> str:
    full_mean, full_sd = stats([r["test"] for r in results["full"].values()])
    rows = [
        "| labels | method | test Dice (mean ± sd over seeds) | min-max | "
        "vs supervised, same seed (mean ± sd) | % of 100%-label Dice |",
        "|---|---|---|---|---|---|",
    ]
    for frac_key, cells in results["fractions"].items():
        frac = float(frac_key)
        for variant in VARIANTS:
            values = [c[variant]["test"] for c in cells.values() if variant in c]
            if not values:
                continue
            mean, sd = stats(values)
            diffs = [
                c[variant]["test"] - c["supervised"]["test"] for c in cells.values() if variant in c
            ]
            dmean, dsd = stats(diffs)
            paired = "-" if variant == "supervised" else f"{dmean:+.4f} ± {dsd:.4f}"
            pct = 100 * mean / full_mean if full_mean else float("nan")
            rows.append(
                f"| {100 * frac:.0f}% | {LABELS[variant]} | {mean:.4f} ± {sd:.4f} | "
                f"{min(values):.4f}-{max(values):.4f} | {paired} | {pct:.1f}% |"
            )
    values = [r["test"] for r in results["full"].values()]
    rows.append(
        f"| 100% | {LABELS['full']} | {full_mean:.4f} ± {full_sd:.4f} | "
        f"{min(values):.4f}-{max(values):.4f} | - | 100.0% |"
    )
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.n_train, args.n_val, args.n_test = 24, 8, 8
        args.seeds, args.fractions = [0], [0.25]
        args.round0_epochs, args.rounds, args.round_epochs, args.full_epochs = 2, 2, 1, 2
        args.size = 64
    if args.out is None:
        name = "semi_monuseg" if args.monuseg else "semi"
        args.out = ROOT / "benchmarks" / "out" / f"{name}{'_quick' if args.quick else ''}.json"
    torch.set_num_threads(args.threads)
    head = header("benchmarks.bench_semi", argv)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    encoder = TextEncoder("default")
    dataset = "monuseg" if args.monuseg else "synthetic-qata"
    results = {
        "header": head,
        "benchmark": "semi",
        "dataset": dataset,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": head["machine"],
        "fractions": {},
        "full": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-semi-data-") as tmp:
        synthetic = None if args.monuseg else synthetic_splits(args, Path(tmp))
        for seed in args.seeds:
            splits = synthetic if synthetic is not None else monuseg_splits(args.monuseg, seed)
            for fraction in args.fractions:
                log(f"fraction {fraction:g}, seed {seed}")
                cell = run_cell(args, encoder, splits, fraction, seed, log)
                results["fractions"].setdefault(f"{fraction:g}", {})[str(seed)] = cell
            log(f"100% labels, seed {seed}")
            results["full"][str(seed)] = run_full(args, encoder, splits, seed, log)
    results["seconds"] = time.perf_counter() - t_start
    md = table(results)
    results["table"] = md
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print()
    print(md)
    print(f"\n{dataset}, wall time {results['seconds'] / 60:.1f} min; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fewer labels still: CLCC, SKS image-level labels, GTGM-style pretraining, each with/without EPI.

For each labeled fraction (10% and 25%) and seed, on synthetic QaTa-style chest X-rays (a
quarter of them without any lesion, so that image-level labels carry information) or on MoNuSeg:

- ``base``: the model trained on the labeled images only;
- ``clcc``: + CLCC (cross-level contrast in the first third, patch consistency after) on all
  training images;
- ``sks``: the SKS variant of the model (``sks_<model>``); stage 1 trains its classifier on
  image-level labels of *all* training images (the table's ``Label`` column), and with EPI those
  labels also force the pseudo label of every "no lesion" image to empty;
- ``pretrain``: the image encoder starts from GTGM-style pretraining (Barlow Twins + image-text
  InfoNCE) on all training images (no masks), done once per seed;
- ``all``: all three together.

"without EPI" trains on the labeled images for ``round0 + rounds * round_epochs`` epochs (the
same number of epochs as the EPI runs), except CLCC, which trains on all images (it needs the
unlabeled ones; the labeled ones repeated to half of each epoch) for as many optimizer steps as
an EPI run takes; "with EPI" trains ``round0``
epochs on the labeled images, then ``rounds`` EPI rounds (LV weight ``--lv-weight``) on labeled
+ pseudo-labeled images. Every run keeps its best epoch by
validation Dice and is scored on a held-out test split (mean per-image Dice at 0.5, model size),
also split into the Dice on lesion images and the share of lesion-free images left clean.
Results: ``benchmarks/out/fewlabels.json`` and ``fewlabels.md`` (``fewlabels_quick.*`` with
``--quick``).

    python -m benchmarks.bench_fewlabels                  # hours on 2 shared CPU cores
    python -m benchmarks.bench_fewlabels --quick          # a ~5-minute smoke run (1 seed)
    python -m benchmarks.bench_fewlabels --monuseg /work/shared/datasets/MoNuSeg
    # one process per seed, then one table:
    python -m benchmarks.bench_fewlabels --seeds 0 --out benchmarks/out/fewlabels_s0.json  # etc.
    python -m benchmarks.bench_fewlabels --merge benchmarks/out/fewlabels_s*.json

MoNuSeg (licence CC BY-NC-SA) is only read, never copied: its Train_Folder is split into
train/val by seed, its Val_Folder is the test split. Every MoNuSeg image has nuclei, so there
the image-level labels are all 1 and SKS's classifier learns nothing useful (reported as is).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
from src_models.engine import evaluate  # noqa: E402
from src_models.engine.clcc import CLCCConfig, balanced_index  # noqa: E402
from src_models.engine.pretrain import PretrainConfig, Pretrainer, image_encoder  # noqa: E402
from src_models.engine.recipe import (  # noqa: E402
    TrainingRecipe,
    build_trainer,
    no_lesion_names,
    sks_stage1,
)
from src_models.engine.semi import SemiConfig, split_labeled  # noqa: E402
from src_models.engine.sks import ClassifierConfig, image_labels  # noqa: E402
from src_models.models import create_model  # noqa: E402
from src_models.text import TextEncoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("base", "clcc", "sks", "pretrain", "all")
LABELS = {
    "base": "base",
    "clcc": "+ CLCC",
    "sks": "+ SKS (image-level labels, all images)",
    "pretrain": "+ pretraining (Barlow Twins + InfoNCE)",
    "all": "+ all three",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_fewlabels",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/out/)")
    p.add_argument("--model", default="lvit_s")
    p.add_argument("--size", type=int, default=80)
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-val", type=int, default=24)
    p.add_argument("--n-test", type=int, default=200, help="synthetic test images")
    p.add_argument("--empty-fraction", type=float, default=0.25, help="synthetic: no-lesion share")
    p.add_argument(
        "--contrast",
        type=float,
        default=1.0,
        help="synthetic lesion brightness (below 1: fainter lesions, a harder task)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--round0-epochs", type=int, default=24)
    p.add_argument(
        "--min-steps",
        type=int,
        default=250,
        help="lengthen training on the labeled images alone to at least this many steps",
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--round-epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--round-lr", type=float, default=None, help="lr of the EPI rounds (default --lr)"
    )
    p.add_argument("--lv-weight", type=float, default=0.1)
    p.add_argument(
        "--hard-pseudo",
        action="store_true",
        help="EPI: harden pseudo labels at 0.5 (default: soft targets)",
    )
    p.add_argument("--clcc-grid", type=int, default=2)
    p.add_argument("--clcc-images", type=int, default=2)
    p.add_argument("--sks-epochs", type=int, default=10)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--monuseg", type=Path, default=None, help="MoNuSeg root (read only)")
    p.add_argument(
        "--threads", type=int, default=1, help="1 is fastest when other jobs share the cores"
    )
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration, 1 seed")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="only combine the results of earlier runs (JSON files, e.g. one per seed)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.model = "lvit_tiny" if args.model == "lvit_s" else args.model
        args.size, args.n_train, args.n_val, args.n_test = 64, 40, 8, 12
        args.seeds = args.seeds[:1]
        args.round0_epochs, args.rounds, args.round_epochs = 10, 1, 4
        args.sks_epochs, args.pretrain_epochs, args.clcc_images = 3, 3, 1
        args.batch_size, args.lr, args.min_steps = 2, 3e-3, 60
    if args.out is None:
        name = "fewlabels_quick.json" if args.quick else "fewlabels.json"
        if args.monuseg is not None:
            name = name.replace("fewlabels", "fewlabels_monuseg")
        args.out = ROOT / "benchmarks" / "out" / name
    return args


# --------------------------------------------------------------------------- runs


def pretrain_encoder(args, encoder, train_recs, seed: int, log) -> dict:
    """GTGM-style pretraining on all training images (masks dropped); the encoder's weights."""
    t = time.perf_counter()
    recs = [dataclasses.replace(r, mask_path=None) for r in train_recs]
    data = SegmentationDataset(recs, args.size, require_masks=False)
    torch.manual_seed(seed)
    model = create_model(args.model, img_size=args.size, text_dim=encoder.dim)
    cfg = PretrainConfig(
        epochs=args.pretrain_epochs, batch_size=max(4, args.batch_size), seed=seed, device="cpu"
    )
    epochs = Pretrainer(model, data, encoder, cfg).run()
    last = epochs[-1]
    log(
        f"  pretraining ({len(epochs)} epochs, {len(data)} images): loss {last.loss:.4f} "
        f"(barlow {last.barlow:.4f}, infonce {last.nce:.4f}), {time.perf_counter() - t:.0f} s"
    )
    return copy.deepcopy(image_encoder(model).state_dict())


def run_variant(args, encoder, sets, method: str, epi: bool, seed: int, pre_state) -> dict:
    lab_set, semi_set, val_set, test_set = sets
    t = time.perf_counter()
    sks = method in ("sks", "all")
    clcc = method in ("clcc", "all")
    pre = method in ("pretrain", "all")
    torch.manual_seed(seed)
    name = f"sks_{args.model}" if sks else args.model
    model = create_model(name, img_size=args.size, text_dim=encoder.dim)
    if pre:
        image_encoder(model).load_state_dict(pre_state)
    info: dict = {}
    clcc_cfg = CLCCConfig(grid=args.clcc_grid, images=args.clcc_images) if clcc else None
    # SKS: stage 1 on the table's image-level labels of all training images
    stage1 = ClassifierConfig(epochs=args.sks_epochs, batch_size=8, seed=seed, device="cpu")
    n_labeled = int(semi_set.has_mask.sum())
    round0 = labeled_epochs(args.round0_epochs, n_labeled, args.batch_size, args.min_steps)
    total = round0 + args.rounds * args.round_epochs
    with tempfile.TemporaryDirectory(prefix="bench-few-") as tmp:
        if epi:
            cfg = train_config(args, args.round_epochs, seed)
            cfg.t0 = max(round0, args.round_epochs)
            semi = SemiConfig(
                rounds=args.rounds,
                round0_epochs=round0,
                round_epochs=args.round_epochs,
                lv_weight=args.lv_weight,
                hard=args.hard_pseudo,
                round_lr=args.round_lr,
                pseudo_dir=tmp,
                bank_fsync=False,
            )
        else:
            semi, epochs = None, total
            if clcc:  # on all images (labeled ones repeated): the optimizer steps of an EPI run
                steps = -(-n_labeled // args.batch_size) * round0
                steps += -(-len(semi_set) // args.batch_size) * args.rounds * args.round_epochs
                per_epoch = -(-len(balanced_index(semi_set.has_mask)) // args.batch_size)
                epochs = -(-steps // per_epoch)
            cfg = train_config(args, epochs, seed)
        recipe = TrainingRecipe(cfg, semi=semi, clcc=clcc_cfg, classifier=stage1 if sks else None)
        labels = image_labels(semi_set)
        hist = list(sks_stage1(model, semi_set, recipe, labels=labels))
        if hist:
            info["classifier_accuracy"] = hist[-1].accuracy
        no_lesion = no_lesion_names(semi_set, labels) if sks else []
        keep = KeepBest()
        train_set = semi_set if epi or clcc else lab_set
        hooks = [] if epi else [keep]
        trainer = build_trainer(
            model, train_set, val_set, encoder, recipe, no_lesion=no_lesion, hooks=hooks
        )
        done = trainer.run()
    val = done.best_dice
    if epi:
        # round 0 is the labeled-only model: when no EPI round beats it, EPI scores round 0
        info["best_round"] = done.best_round
        info["round_val"] = [h.get("val_dice") for h in done.history]
    else:
        keep.restore(model)
    report = evaluate(model, test_set, encoder, device="cpu", batch_size=8)
    scores = {"test": float(report["dice"]), **split_scores(report, test_set)}
    return {"val": val, **scores, "seconds": time.perf_counter() - t, **info}


def split_scores(report: dict, test_set) -> dict:
    """The test Dice on images with a lesion, and the share of lesion-free images (image-level
    label 0) left clean: there an image scores 1 with nothing predicted, 0 with any pixel."""
    labels = test_set.labels
    rows = report["per_image"]
    lesion = [r["dice"] for r in rows if labels[r["index"]] != 0]
    empty = [r["dice"] for r in rows if labels[r["index"]] == 0]
    return {
        "test_lesion": stats(lesion)[0],
        "test_empty_clean": stats(empty)[0],
    }


def run_cell(args, encoder, splits, fraction: float, seed: int, pre_state, log) -> dict:
    train_recs, val_recs, test_recs = splits
    size = args.size
    labeled, unlabeled = split_labeled(train_recs, fraction, seed=seed)
    sets = (
        SegmentationDataset(labeled, size, augment=True, seed=seed),
        SegmentationDataset(labeled + unlabeled, size, augment=True, seed=seed),
        SegmentationDataset(val_recs, size),
        SegmentationDataset(test_recs, size),
    )
    out: dict[str, dict] = {}
    for method in args.methods:
        for epi in (False, True):
            key = f"{method}{'+epi' if epi else ''}"
            res = run_variant(args, encoder, sets, method, epi, seed, pre_state)
            out[key] = res
            chosen = f", best round {res['best_round']}" if "best_round" in res else ""
            log(
                f"  {key}: val {res['val']:.4f} test {res['test']:.4f}{chosen} "
                f"({res['seconds']:.0f} s)"
            )
    return out


# --------------------------------------------------------------------------- report


METRICS = {
    "test": "Test Dice (%), mean ± sd over seeds. An image without lesion scores 1 when nothing"
    " is predicted, so a model that predicts nothing scores the share of such test images.",
    "test_lesion": "Test Dice (%) on the images with a lesion only, mean ± sd over seeds.",
    "test_empty_clean": "Lesion-free test images with no pixel predicted (%), mean ± sd over"
    " seeds.",
}


def summarise(results: dict, methods, metric: str = "test") -> dict:
    summary: dict = {}
    for frac, per_seed in results.items():
        summary[frac] = {}
        for method in methods:
            for epi in (False, True):
                key = f"{method}{'+epi' if epi else ''}"
                tests = [cell[key].get(metric) for cell in per_seed.values() if key in cell]
                mean, sd = stats(tests)
                summary[frac][key] = {"mean": mean, "sd": sd, "n": len(tests)}
    return summary


def table(summary: dict, methods, quick: bool, metric: str = "test") -> str:
    fracs = list(summary)
    head = "| method | " + " | ".join(
        f"{float(f):.0%} labels, no EPI | {float(f):.0%} labels, EPI" for f in fracs
    )
    lines = [head + " |", "|---" * (1 + 2 * len(fracs)) + "|"]

    def cell(s):
        if s["mean"] is None:
            return "-"
        return f"{100 * s['mean']:.2f} ± {100 * s['sd']:.2f}"

    for method in methods:
        row = [LABELS[method]]
        for f in fracs:
            row += [cell(summary[f][method]), cell(summary[f][f"{method}+epi"])]
        lines.append("| " + " | ".join(row) + " |")
    note = "QUICK smoke run (tiny data and model, a few epochs, 1 seed): not a result. "
    note = note if quick else ""
    lines.append("")
    lines.append(note + METRICS[metric])
    return "\n".join(lines)


def write_report(args, results: dict, seconds: float, head: dict) -> str:
    """Write the JSON and markdown reports of ``results`` (also the partial ones); the table."""
    summary = summarise(results, args.methods)
    md = table(summary, args.methods, args.quick)
    for metric in ("test_lesion", "test_empty_clean"):  # absent in runs before they existed
        part = summarise(results, args.methods, metric)
        if any(s["mean"] is not None for per in part.values() for s in per.values()):
            md += "\n\n" + table(part, args.methods, args.quick, metric)
    report = {
        "header": head,
        "benchmark": "fewlabels",
        "quick": bool(args.quick),
        "data": "MoNuSeg" if args.monuseg is not None else "synthetic qata",
        "args": json.loads(json.dumps(vars(args), default=str)),
        "machine": head["machine"],
        "seconds": seconds,
        "summary": summary,
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(md + "\n")
    return md


def merge(args) -> dict:
    """Per-seed results of earlier runs (``--merge``), e.g. one process per seed."""
    results: dict = {str(f): {} for f in args.fractions}
    for path in args.merge:
        for frac, per_seed in json.loads(Path(path).read_text())["results"].items():
            results.setdefault(frac, {}).update(per_seed)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    head = header("benchmarks.bench_fewlabels", argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_all:7.0f} s] {msg}", flush=True)

    if args.merge:
        md = write_report(args, merge(args), 0.0, head)
        print(md)
        print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
        return 0
    encoder = TextEncoder()
    results: dict = {str(f): {} for f in args.fractions}
    with tempfile.TemporaryDirectory(prefix="bench-few-data-") as work:
        fixed = None
        if args.monuseg is None:
            fixed = synthetic_splits(args, Path(work), empty_fraction=args.empty_fraction)
        for seed in args.seeds:
            splits = fixed or monuseg_splits(args.monuseg, seed, image_label=1)
            n_train, n_val, n_test = (len(s) for s in splits)
            log(f"seed {seed}: {n_train} train / {n_val} val / {n_test} test")
            pre_state = None
            if {"pretrain", "all"} & set(args.methods):
                pre_state = pretrain_encoder(args, encoder, splits[0], seed, log)
            for frac in args.fractions:
                log(f" {frac:.0%} labels, seed {seed}")
                results[str(frac)][str(seed)] = run_cell(
                    args, encoder, splits, frac, seed, pre_state, log
                )
                write_report(args, results, time.perf_counter() - t_all, head)  # partial results
    md = write_report(args, results, time.perf_counter() - t_all, head)
    print(md)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pseudo labels in review: how many of EPI's pseudo labels need no correction, how good are
those a confidence rule accepts, and does a round trained with the accepted ones do better?

A project is made over a training split (synthetic QaTa-style chest X-rays, or MoNuSeg's
Train_Folder with ``--monuseg``). The true masks of a seeded 10% (then 25%) of its images are
committed; two retraining rounds with EPI follow (whole images: EPI works on whole images; a
new model's first round is its supervised round 0 and EPI round 1, the second round EPI round
2). Then, for every unlabelled image, its pseudo label's cut (at the image's size and the
model's threshold, as the widget shows and Accept commits it) is scored against the truth:

- ``Dice >= 0.9``: the share of pseudo labels that need no correction;
- ``accepted``: how many the rule ``confidence >= --accept-above`` accepts (confidence: the
  share of pixels with ``|p - 0.5| > 0.4``, :mod:`src_models.project.pseudo_review`), their mean
  Dice and their share with Dice >= 0.9;
- one more round from there, without and with the accepted ones committed (commit kind
  ``accepted_pseudo``), each scored on the held-out split at the images' own size through the
  :class:`~src_models.inference.Predictor` (mean per-image Dice at the checkpoint's threshold);
  the model after the two rounds is scored too.

    python -m benchmarks.bench_pseudo                       # synthetic, seeds 0 1
    python -m benchmarks.bench_pseudo --monuseg /work/shared/datasets/MoNuSeg --size 224
    python -m benchmarks.bench_pseudo --quick               # a 1-minute smoke run

MoNuSeg (licence CC BY-NC-SA) is only read, never copied: the project lives in a temporary
folder and refers to the images where they are. Results: ``benchmarks/out/pseudo_<data>.json``
(``*_quick.json``) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import header, stats

OUT = Path(__file__).resolve().parent / "out"
FRACTIONS = (0.10, 0.25)
RULE_CURVE = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)


def splits(args, work: Path):
    """(training split folder, held-out records)."""
    from src_models.data import scan_split
    from src_models.data.synthetic import write_dataset

    if args.monuseg:
        root = Path(args.monuseg)
        return root / "Train_Folder", scan_split(root / "Val_Folder")
    train = write_dataset(work / "train", kind="qata", n=args.n_train, size=args.size, seed=100)
    test = write_dataset(work / "test", kind="qata", n=args.n_test, size=args.size, seed=200)
    return train, scan_split(test)


def round_config(args, seed: int):
    """The RetrainConfig of one round: EPI on whole images, a fixed number of epochs; the
    round's checkpoint always becomes current (the comparison scores every round)."""
    from src_models.project.retrain import RetrainConfig

    return RetrainConfig(
        rounds=1,
        epochs=args.epochs,
        model=args.model,
        img_size=args.size,
        device="cpu",
        seed=seed,
        semi="epi",
        start="model",  # no start probe: the pseudo labels of the configured model
        resolution="whole",
        num_threads=args.threads,
        replace_if_worse=True,
    )


def run_round(folder: Path, cfg) -> tuple[str, dict]:
    """One round on the project in ``folder``: (its checkpoint, its metrics)."""
    from src_models.project.retrain import RetrainRoundEnd, retrain

    end = None
    for event in retrain(folder, config=cfg):
        if isinstance(event, RetrainRoundEnd):
            end = event
    if end is None or end.status != "done":
        raise RuntimeError(f"round failed: {end}")
    return end.checkpoint, end.metrics


def held_out_dice(checkpoint: str, records) -> float:
    """Mean per-image Dice of ``checkpoint`` on ``records`` at their own size."""
    from src_models.data.io import read_image, read_mask
    from src_models.inference import Predictor
    from src_models.metrics import dice_per_image

    predictor = Predictor(checkpoint, device="cpu")
    dices = []
    for rec in records:
        pred = predictor.predict(read_image(rec.image_path), rec.text)
        dices.append(float(dice_per_image(pred.mask[None], read_mask(rec.mask_path)[None])[0]))
    return float(np.mean(dices))


def pseudo_quality(folder: Path, train_dir: Path, accept_above: float) -> dict:
    """Each unlabelled image's pseudo label against its true mask, and the rule's picks."""
    from src_models.data.io import read_mask
    from src_models.metrics import dice_per_image
    from src_models.project import Project
    from src_models.project.pseudo_review import PseudoReview

    rows = []
    with Project.open(folder) as project:
        review = PseudoReview(project)
        for label in review.labels():
            truth = read_mask(train_dir / "labelcol" / f"{label.summary.name}.png")
            dice = float(dice_per_image(label.mask()[None], truth[None])[0])
            s = label.summary
            rows.append(
                {
                    "image": s.name,
                    "dice": dice,
                    "confidence": s.confidence,
                    "rounds": s.rounds,
                    "change": s.change,
                    "dice_previous": s.dice_previous,
                }
            )
    good = [r for r in rows if r["dice"] >= 0.9]
    picked = [r for r in rows if r["confidence"] >= accept_above]
    return {
        "bank_rounds": review.rounds,
        "n_pseudo": len(rows),
        "share_dice_09": len(good) / len(rows) if rows else None,
        "mean_dice": stats(r["dice"] for r in rows)[0],
        "n_accepted": len(picked),
        "accepted_dice": stats(r["dice"] for r in picked)[0],
        "accepted_share_dice_09": (
            sum(r["dice"] >= 0.9 for r in picked) / len(picked) if picked else None
        ),
        # the rule at other thresholds, to choose one: (threshold, n accepted, their mean Dice)
        "rule_curve": [
            (c, len(sel), stats(r["dice"] for r in sel)[0])
            for c in RULE_CURVE
            for sel in [[r for r in rows if r["confidence"] >= c]]
        ],
        "per_image": rows,
    }


def run_one(args, fraction: float, seed: int, train_dir: Path, test) -> dict:
    from src_models.data.io import read_mask
    from src_models.project import Project
    from src_models.project.pseudo_review import accept_above
    from src_models.project.workspace import open_workspace

    cfg = round_config(args, seed)
    with tempfile.TemporaryDirectory(prefix="bench-pseudo-") as tmp:
        folder = Path(tmp) / "project"
        project, _ = open_workspace(train_dir, folder, with_masks=False)
        with project:
            records = project.images()
            order = np.random.default_rng(seed).permutation(len(records))
            n_labeled = max(1, round(fraction * len(records)))
            for i in order[:n_labeled]:
                rec = records[int(i)]
                mask = read_mask(train_dir / "labelcol" / f"{rec.name}.png")
                project.commit(rec, mask, model_version="bench_pseudo")
        t0 = time.perf_counter()
        for _ in range(2):
            checkpoint, _ = run_round(folder, cfg)
        two_rounds_s = time.perf_counter() - t0
        quality = pseudo_quality(folder, train_dir, args.accept_above)
        after_two = held_out_dice(checkpoint, test)
        # one more round from the same state: without, then (on a copy) with the accepted ones
        with_folder = Path(tmp) / "with_accepted"
        shutil.copytree(folder, with_folder)
        without, _ = run_round(folder, cfg)
        with Project.open(with_folder) as project:
            accepted = accept_above(project, args.accept_above)
        with_accepted, _ = run_round(with_folder, cfg)
        row = {
            "fraction": fraction,
            "seed": seed,
            "n_images": len(records),
            "n_labeled": n_labeled,
            **quality,
            "n_committed_accepted": len(accepted),
            "test_dice_after_2": after_two,
            "test_dice_without": held_out_dice(without, test),
            "test_dice_with_accepted": held_out_dice(with_accepted, test),
            "two_rounds_seconds": two_rounds_s,
        }
    print(
        f"  {100 * fraction:.0f}% labels, seed {seed}: {row['n_pseudo']} pseudo labels, "
        f"{_pct(row['share_dice_09'])} with Dice >= 0.9; accepted {row['n_accepted']} "
        f"(Dice {_num(row['accepted_dice'])}); test Dice {row['test_dice_after_2']:.3f} -> "
        f"without {row['test_dice_without']:.3f}, with {row['test_dice_with_accepted']:.3f}",
        flush=True,
    )
    return row


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _cell(rows: list[dict], key: str, fmt=_num) -> str:
    m, sd = stats(r[key] for r in rows)
    if m is None:
        return "-"
    return fmt(m) if len(rows) == 1 else f"{fmt(m)} ± {fmt(sd)}"


def table(rows: list[dict], accept_above: float) -> str:
    lines = [
        "| labels | pseudo labels | Dice >= 0.9 | mean Dice | accepted (conf >= "
        f"{accept_above:g}) | Dice of accepted | accepted with Dice >= 0.9 | test Dice after 2 "
        "rounds | + 1 round without | + 1 round with the accepted |",
        "|---|" + "---|" * 9,
    ]
    for fraction in sorted({r["fraction"] for r in rows}):
        chosen = [r for r in rows if r["fraction"] == fraction]
        cells = [
            _cell(chosen, "n_pseudo", lambda v: f"{v:.1f}"),
            _cell(chosen, "share_dice_09", _pct),
            _cell(chosen, "mean_dice"),
            _cell(chosen, "n_accepted", lambda v: f"{v:.1f}"),
            _cell(chosen, "accepted_dice"),
            _cell(chosen, "accepted_share_dice_09", _pct),
            _cell(chosen, "test_dice_after_2"),
            _cell(chosen, "test_dice_without"),
            _cell(chosen, "test_dice_with_accepted"),
        ]
        lines.append(f"| {100 * fraction:.0f}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pseudo", description=__doc__)
    parser.add_argument("--monuseg", type=Path, help="MoNuSeg root (Train_Folder, Val_Folder)")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--model", default="lvit_s")
    parser.add_argument("--size", type=int, default=80, help="model (and synthetic image) size")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per round")
    parser.add_argument("--n-train", type=int, default=40, help="synthetic training images")
    parser.add_argument("--n-test", type=int, default=40, help="synthetic held-out images")
    parser.add_argument(
        "--accept-above", type=float, default=0.95, help="the confidence rule's threshold"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="small synthetic smoke run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.model, args.size, args.epochs = args.seeds[:1], "lvit_tiny", 64, 12
        args.n_train, args.n_test = 12, 6
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    head = header("benchmarks.bench_pseudo", argv)
    name = "monuseg" if args.monuseg else "synthetic"
    out = args.out or OUT / f"pseudo_{name}{'_quick' if args.quick else ''}.json"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pseudo-data-") as tmp:
        train_dir, test = splits(args, Path(tmp))
        for fraction in args.fractions:
            for seed in args.seeds:
                rows.append(run_one(args, fraction, seed, train_dir, test))
    text = table(rows, args.accept_above)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"header": head, "data": name, "args": vars(args), "rows": rows, "table": text}
    out.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

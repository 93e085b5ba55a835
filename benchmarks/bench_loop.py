"""The annotation loop as a user drives it: commit a few corrections, press Retrain, look.

A project is made over a training split (MoNuSeg's Train_Folder, or synthetic QaTa-style chest
X-rays). In a seeded order, the true masks of 1, then 3, 5 and 10 images are committed (as a
clinician's corrections would be), and after each batch of commits one press of Retrain runs
with exactly the settings the annotation widget's Retrain button uses by default (the widget's
own :func:`~napari_lvit._annotate.session.button_retrain_config`, no options). The project's
current model is then scored on the held-out split at the images' own size, through the same
:class:`~src_models.inference.Predictor` the widget uses for proposals: mean per-image Dice at
the checkpoint's threshold. Also scored: the shipped default before any correction.

``--old`` also runs each seed with the settings the button had before rounds were sized by work
(5 epochs per round, whole images resized to the model, always from the configured model), and
``--no-epi`` with EPI's pseudo labels off, ``--clicks`` with 3 simulated correction clicks per
batch (``retrain --clicks 3``), side by side in the same run.

    python -m benchmarks.bench_loop --monuseg /work/shared/datasets/MoNuSeg --seeds 0 1 2
    python -m benchmarks.bench_loop --synthetic --seeds 0 1 2
    python -m benchmarks.bench_loop --synthetic --quick            # a 1-minute smoke run

MoNuSeg (licence CC BY-NC-SA) is only read, never copied: the project lives in a temporary
folder and refers to the images where they are. Results: ``benchmarks/out/loop_<data>.json``
and a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import header, stats

OUT = Path(__file__).resolve().parent / "out"
STEPS = (1, 3, 5, 10)


#: What each compared setting changes in the button's config.
SETTINGS = {
    "new": {},
    # the button before rounds were sized by work: 5 epochs, whole images, from the model
    "old": {"epochs": 5, "resolution": "whole", "start": "model"},
    # the button without EPI's pseudo labels on the uncorrected images
    "no_epi": {"semi": "off"},
    # the button with 3 simulated clicks per batch (at 2107df4 the default for a model that
    # reads clicks, as the shipped default does; they cost steps in a round limited in time)
    "clicks": {"clicks": 3},
}
NAMES = {
    "new": "Retrain button (defaults)",
    "old": "before (5 epochs, whole)",
    "no_epi": "Retrain button, EPI off",
    "clicks": "Retrain button, 3 simulated clicks",
}


def button_config(settings: str = "new"):
    """The RetrainConfig of one press of the widget's Retrain button with its defaults (and
    the changes of ``settings``)."""
    from napari_lvit._annotate.session import button_retrain_config

    return dataclasses.replace(button_retrain_config(), **SETTINGS[settings])


def score(checkpoint: str | Path, records, threads: int) -> tuple[float, list[float], float]:
    """Mean per-image Dice of ``checkpoint`` on ``records`` at full size, per-image, seconds."""
    import torch

    from src_models.data.io import read_image, read_mask
    from src_models.inference import Predictor
    from src_models.metrics import dice_per_image

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    predictor = Predictor(checkpoint, device="cpu")
    dices = []
    for rec in records:
        pred = predictor.predict(read_image(rec.image_path), rec.text)
        truth = read_mask(rec.mask_path)
        dices.append(float(dice_per_image(pred.mask[None], truth[None])[0]))
    return float(np.mean(dices)), dices, time.perf_counter() - t0


def splits(args, work: Path):
    """(training split folder, held-out records)."""
    from src_models.data import scan_split
    from src_models.data.synthetic import write_dataset

    if args.monuseg:
        root = Path(args.monuseg)
        return root / "Train_Folder", scan_split(root / "Val_Folder")
    n_train, n_test = (12, 8) if args.quick else (40, 60)
    train = write_dataset(work / "train", kind="qata", n=n_train, size=args.size, seed=100)
    test = write_dataset(work / "test", kind="qata", n=n_test, size=args.size, seed=200)
    return train, scan_split(test)


def run_seed(args, seed: int, train_dir: Path, test, settings: str) -> dict:
    from src_models.data.io import read_mask
    from src_models.project.retrain import RetrainRoundEnd, retrain
    from src_models.project.workspace import open_workspace

    cfg = button_config(settings)
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        project, how = open_workspace(train_dir, Path(tmp) / "project", with_masks=False)
        with project:
            records = project.images()
            order = np.random.default_rng(seed).permutation(len(records))
            rows = []
            committed = 0
            for k in args.steps:
                for i in order[committed:k]:
                    rec = records[int(i)]
                    mask = read_mask(train_dir / "labelcol" / f"{rec.name}.png")
                    project.commit(rec, mask, model_version="bench_loop")
                committed = k
                t0 = time.perf_counter()
                end = None
                for event in retrain(project, config=cfg):
                    if isinstance(event, RetrainRoundEnd):
                        end = event
                seconds = time.perf_counter() - t0
                if end is None or end.status != "done":
                    raise RuntimeError(f"round failed: {end}")
                dice, per_image, score_s = score(project.current_checkpoint, test, args.threads)
                m = end.metrics
                row = {
                    "k": k,
                    "dice": dice,
                    "per_image": per_image,
                    "round_seconds": seconds,
                    "score_seconds": score_s,
                    "steps": m.get("steps"),
                    "engine": m.get("engine"),
                    "working_resolution": m.get("working_resolution"),
                    "best_val_dice": m.get("best_dice"),
                    "made_current": m.get("made_current"),
                    "start_probe": m.get("start_probe"),
                }
                rows.append(row)
                probe = row["start_probe"]
                chose = "" if not probe else f", start: {probe['chosen']}"
                print(
                    f"  seed {seed} {settings} k={k}: Dice {dice:.3f} "
                    f"(round {seconds:.0f} s, {row['steps']} steps, {row['engine']}, "
                    f"{row['working_resolution']}{chose})",
                    flush=True,
                )
    return {
        "seed": seed,
        "settings": settings,
        "config": cfg.to_dict(),
        "rows": rows,
    }


def table(runs: list[dict], before: float, steps) -> str:
    lines = [
        "| settings | " + " | ".join(f"{k} corrected" for k in steps) + " | s per round |",
        "|---|" + "---|" * (len(steps) + 1),
    ]
    for settings in SETTINGS:
        chosen = [r for r in runs if r["settings"] == settings]
        if not chosen:
            continue
        cells = []
        for k in steps:
            m, sd = stats([row["dice"] for r in chosen for row in r["rows"] if row["k"] == k])
            cells.append(f"{m:.3f} ± {sd:.3f}")
        secs = [row["round_seconds"] for r in chosen for row in r["rows"]]
        seconds = f"{np.median(secs):.0f} (max {max(secs):.0f})"
        lines.append(f"| {NAMES[settings]} | " + " | ".join(cells) + f" | {seconds} |")
    lines.append(f"\nShipped default before any correction: Dice {before:.3f}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_loop", description=__doc__)
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--monuseg", type=Path, help="MoNuSeg root (Train_Folder, Val_Folder)")
    data.add_argument("--synthetic", action="store_true", help="synthetic QaTa-style X-rays")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--size", type=int, default=224, help="synthetic image size")
    parser.add_argument("--old", action="store_true", help="also run the settings of before")
    parser.add_argument(
        "--no-epi", action="store_true", help="also run the button's settings with EPI off"
    )
    parser.add_argument(
        "--clicks", action="store_true", help="also run the button's settings with 3 clicks"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads for scoring")
    parser.add_argument("--quick", action="store_true", help="small synthetic smoke run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps = args.seeds[:1], [1, 3]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    head = header("benchmarks.bench_loop", argv)
    name = "monuseg" if args.monuseg else "synthetic"
    out = args.out or OUT / f"loop_{name}{'_quick' if args.quick else ''}.json"
    with tempfile.TemporaryDirectory(prefix="bench-loop-data-") as tmp:
        train_dir, test = splits(args, Path(tmp))
        before, _, _ = score("default", test, args.threads)
        print(f"shipped default before any correction: Dice {before:.3f}", flush=True)
        runs = []
        for seed in args.seeds:
            compared = (
                ["new"] + ["old"] * args.old + ["no_epi"] * args.no_epi + ["clicks"] * args.clicks
            )
            for settings in compared:
                runs.append(run_seed(args, seed, train_dir, test, settings))
                result = {"header": head, "data": name, "default_dice": before, "runs": runs}
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=1))
    print(table(runs, before, args.steps))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Interactive segmentation on held-out synthetic chest X-rays or on MoNuSeg: clicks needed, IoU
per click, and the latency of one click.

The model: the shipped default (it reads clicks), another prompted checkpoint (``--checkpoint``),
or a checkpoint fine-tuned here with simulated clicks (``--base``, ``--steps``: the click stage of
``benchmarks.train_default``, on its recipe data or, with ``--monuseg``, on MoNuSeg).

MoNuSeg (``--monuseg ROOT``; read only, never copied): ``--base`` (default: the shipped default)
is fine-tuned with clicks on random patches of Train_Folder at the working resolution that
:func:`~src_models.data.resolution.choose_resolution` picks for it (as a project would), with
the colour augmentation of retraining rounds; the checkpoint records that resolution, so it
predicts tile by tile as in napari. Val_Folder's 1000 px tiles are then cut into a grid of
crops of one model tile each (256 px at the default's 128 px and scale 2: 16 a tile). That is
the field of view at which one corrects nuclei: a whole tile holds hundreds of them, and a
click fixes one. Every crop is one evaluation image, with its tile's text, at its own pixels.

Clicks are placed by the protocol of :mod:`src_models.engine.clicks` (first click at the
interior point of the largest object component farthest from its boundary, then at the middle of
the largest error region, positive or negative), at most ``--max-clicks``, each prediction fed
back as the previous mask. Four modes:

- ``text``: the text alone (no click);
- ``clicks``: clicks alone, no text;
- ``text+clicks``: the text's proposal first, then correction clicks (with the text);
- ``text>clicks``: the text's proposal first, then correction clicks without the text (the
  proposal reaches the model only as the previous mask).

Two reference rows count perfect clicks (:func:`~src_models.engine.clicks.perfect_click`: each
click sets exactly the error region it points at to the truth, and the model is not called
again): ``perfect`` from an empty mask, ``text+perfect`` from the text's proposal. They tell
what the text's proposal is worth in clicks to a corrector that fixes what it is pointed at.

Metrics (per image at the image's own size, then means): NoC@85 / NoC@90, the clicks needed to
reach IoU 0.85 / 0.90 (0 when the text alone reaches it; ``--max-clicks`` when never reached,
the usual convention), the share of images that never reach it, mean IoU after 1, 3 and 5
clicks. Evaluation images: half QaTa-style (the text names every lesion), half referring (the
text names some of the lesions, so clicks alone must find which).

Latency (one CPU thread, ``--latency-size`` square image, median of ``--repeats``): the first
prompt on a new image (text only, as the Segment button) and a later click on the same image
(clicks plus the previous mask; text features and the resized image cached). With
``--tiled-size``, the same on a larger image predicted tile by tile (``tile=True``).

    python -m benchmarks.bench_clicks                      # the shipped default, ~3 min, 2 cores
    python -m benchmarks.bench_clicks --checkpoint runs/clicks.safetensors --n-eval 100
    python -m benchmarks.bench_clicks --base text_only.safetensors   # fine-tune first, ~10 min
    python -m benchmarks.bench_clicks --monuseg /work/shared/datasets/MoNuSeg  # ~20 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import header, load_split
from src_models.data.synthetic import make_qata_sample, make_referring_sample
from src_models.engine.clicks import first_click, next_click, perfect_click

ROOT = Path(__file__).resolve().parent
MODES = ("text", "clicks", "text+clicks", "text>clicks", "perfect", "text+perfect")
THRESHOLDS = (0.80, 0.85, 0.90)  # 85 and 90: the standard; 80 shows the regime below


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum() / union)


def fine_tune(args) -> Path:
    """``--base`` with prompt inputs, trained ``--steps`` steps with clicks (the click stage of
    ``benchmarks.train_default``): on its recipe data, or with ``--monuseg`` on MoNuSeg's
    Train_Folder (:func:`monuseg_train_set`)."""
    from benchmarks.train_default import make_data, train_clicks
    from src_models.data.dataset import SegmentationDataset
    from src_models.engine.checkpoint import read_checkpoint_meta
    from src_models.model_source import resolve_checkpoint

    base = resolve_checkpoint(args.base)
    meta = read_checkpoint_meta(base)
    size = int(meta["img_size"])
    if args.monuseg:
        train = load_split(args.monuseg / "Train_Folder")
        train_set = monuseg_train_set(train, size, int(meta.get("in_chans", 3)), args)
        print(f"MoNuSeg: {len(train)} training tiles, {train_set.resolution}", flush=True)
    else:
        records = make_data(args.work / "train", args.n_train, args.data_size, args.seed)
        train_set = SegmentationDataset(records, size, augment=True, seed=args.seed)
    return train_clicks(
        base,
        train_set,
        args.work / "clicks.safetensors",
        steps=args.steps,
        clicks=args.clicks,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
    )


def monuseg_train_set(train: list[dict], img_size: int, in_chans: int, args):
    """Random patches of the training tiles at their working resolution (half centred on a
    nucleus, flips and colour augmentation as in a retraining round); ``args.batch_size * 25``
    patches an epoch."""
    from src_models.data.patches import PatchDataset, choose_resolution

    images = [t["image"] for t in train]
    masks = [t["mask"] for t in train]
    texts = [t["text"] for t in train]
    res = choose_resolution([im.shape for im in images], texts, img_size, masks)
    return PatchDataset(
        images,
        masks,
        texts,
        res,
        samples_per_epoch=25 * args.batch_size,
        fg_fraction=0.5,
        augment=True,
        color=1.0,
        seed=args.seed,
        in_chans=in_chans,
        names=[t["name"] for t in train],
    )


def monuseg_crops(tiles: list[dict], side: int) -> list[tuple[np.ndarray, np.ndarray, str, str]]:
    """``(image, mask, text, "monuseg")`` for every ``side x side`` crop of a grid over each
    tile (the fewest crops that cover it, spread evenly: neighbours overlap where ``side``
    does not divide the tile); crops without a nucleus are left out."""
    from src_models.tiling import tile_starts

    out = []
    for tile in tiles:
        image, mask = tile["image"], tile["mask"]
        for y in tile_starts(mask.shape[0], side, 0.0):
            for x in tile_starts(mask.shape[1], side, 0.0):
                crop = mask[y : y + side, x : x + side]
                if crop.any():
                    out.append((image[y : y + side, x : x + side], crop, tile["text"], "monuseg"))
    return out


def eval_samples(n: int, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, str, str]]:
    """``(image, mask, text, kind)`` held out from training (own seed), half of each kind."""
    rng = np.random.default_rng([seed, 14])
    out = []
    for i in range(n):
        if i % 2 == 0:
            image, mask, text = make_qata_sample(rng, size)
            kind = "qata"
        else:
            image, mask, text = make_referring_sample(rng, size)
            kind = "referring"
        if mask.any():
            out.append((image, mask, text, kind))
    return out


def run_mode(
    predictor, image, mask, text, proposal: np.ndarray, mode: str, max_clicks: int
) -> list[float]:
    """IoU after 0..max_clicks clicks (index = clicks; index 0 is nan without text);
    ``proposal``: the text's mask of the image (computed once for every mode)."""
    ious = [float("nan")]
    clicks: list = []
    pred = None
    if mode.startswith("text"):
        pred = proposal
        ious[0] = iou(pred, mask)
        if mode == "text":
            return ious
    if mode.endswith("perfect"):
        pred = np.zeros(mask.shape, bool) if pred is None else pred
        for _ in range(max_clicks):
            pred = perfect_click(pred, mask)
            ious.append(iou(pred, mask))
        return ious
    use_text = text if mode == "text+clicks" else None
    for _ in range(max_clicks):
        click = first_click(mask) if pred is None else next_click(pred, mask)
        if click is None:  # perfect: stays perfect
            ious.append(ious[-1])
            continue
        clicks.append(click)
        pred = predictor.predict(image, use_text, clicks=clicks, previous=pred).mask
        ious.append(iou(pred, mask))
    return ious


def noc(ious: list[float], threshold: float, max_clicks: int) -> int:
    for k, value in enumerate(ious):
        if value == value and value >= threshold:  # (nan: no prediction at 0 clicks)
            return k
    return max_clicks


def summarise(curves: list[list[float]], mode: str, max_clicks: int) -> dict:
    row: dict = {"mode": mode, "n": len(curves)}
    for t in THRESHOLDS:
        counts = [noc(c, t, max_clicks) for c in curves]
        row[f"noc@{round(100 * t)}"] = statistics.fmean(counts)
        row[f"failed@{round(100 * t)}"] = statistics.fmean(
            [not any(v == v and v >= t for v in c) for c in curves]
        )
    for k in (0, 1, 3, 5):  # (text alone: only after 0 clicks)
        values = [c[k] for c in curves if k < len(c) and c[k] == c[k]]
        row[f"iou@{k}"] = statistics.fmean(values) if values else None
    return row


def noc_ratios(rows: list[dict]) -> dict[str, float | None]:
    """NoC@85 with the text's proposal first over NoC@85 from nothing, on all images: for the
    model's clicks (the target: at most 0.7) and for perfect clicks (``None`` where a mode was
    not run or needs no click)."""
    noc85 = {r["mode"]: r["noc@85"] for r in rows if r["data"] == "all"}
    out = {}
    for name, with_text, alone in (
        ("text+clicks / clicks", "text+clicks", "clicks"),
        ("text+perfect / perfect", "text+perfect", "perfect"),
    ):
        ok = noc85.get(alone) and with_text in noc85
        out[name] = noc85[with_text] / noc85[alone] if ok else None
    return out


def latency(predictor, size: int, repeats: int, seed: int) -> dict:
    """Median ms of a first prompt (text, new image) and of a later click on the same image."""
    rng = np.random.default_rng([seed, 512])
    first, later = [], []
    for _ in range(repeats):
        image, mask, text = make_qata_sample(rng, size)
        t0 = time.perf_counter()
        pred = predictor.predict(image, text).mask
        first.append(1000 * (time.perf_counter() - t0))
        click = next_click(pred, mask) or first_click(mask) or (size // 2, size // 2, 1)
        # the first click; the second starts from its mask, as in click mode
        after = predictor.predict(image, text, clicks=[click], previous=pred).mask
        clicks = [click, ((click[0] + 7) % size, (click[1] + 5) % size, -1)]
        t0 = time.perf_counter()
        predictor.predict(image, text, clicks=clicks, previous=after)
        later.append(1000 * (time.perf_counter() - t0))
    return {
        "first_prompt_ms": statistics.median(first),
        "later_click_ms": statistics.median(later),
        "repeats": repeats,
        "size": size,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_clicks", description=__doc__)
    p.add_argument(
        "--checkpoint",
        help="a prompted checkpoint (default: the shipped one; with --monuseg, none: the "
        "shipped one is fine-tuned on MoNuSeg first)",
    )
    p.add_argument(
        "--base", help="instead, fine-tune this checkpoint with clicks and measure the result"
    )
    p.add_argument(
        "--monuseg",
        type=Path,
        help="MoNuSeg root (Train_Folder, Val_Folder): train on its Train_Folder, measure on "
        "crops of its Val_Folder, instead of synthetic X-rays",
    )
    p.add_argument("--steps", type=int, default=1000, help="fine-tuning steps (with --base)")
    p.add_argument("--clicks", type=int, default=3, help="simulated correction passes per batch")
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--data-size", type=int, default=224)
    p.add_argument(
        "--n-eval",
        type=int,
        help="evaluation images (default 40; MoNuSeg: every crop, or the first N); 0: latency only",
    )
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--latency-size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument(
        "--tiled-size",
        type=int,
        default=0,
        help="also time prompts and clicks on an image of this side predicted tile by tile "
        "(tile=True: native tiles of the model's size at a half-tile stride; 0: not)",
    )
    p.add_argument("--tiled-repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="for fine-tuning and the metrics")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=ROOT / "out" / "clicks")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "clicks.json")
    args = p.parse_args(argv)
    if args.tiled_size < 0 or args.tiled_repeats < 1:
        p.error("--tiled-size must be >= 0 and --tiled-repeats >= 1")
    if args.n_eval is not None and args.n_eval < 0:
        p.error("--n-eval must be >= 0")
    if args.base and args.checkpoint:
        p.error("give --checkpoint (measure it) or --base (fine-tune it first), not both")
    for split in ("Train_Folder", "Val_Folder") if args.monuseg else ():
        if not (args.monuseg / split).is_dir():
            p.error(f"--monuseg: no {split} in {args.monuseg}")
    if args.monuseg and not args.checkpoint and not args.base:
        args.base = "default"  # trained on its train split, as the protocol asks
    if args.base and (args.steps < 1 or args.clicks < 1 or args.lr <= 0):
        p.error("with --base, --steps and --clicks must be >= 1 and --lr > 0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    head = header("benchmarks.bench_clicks", argv)
    from src_models.inference import Predictor

    t0 = time.perf_counter()
    checkpoint = fine_tune(args) if args.base else (args.checkpoint or "default")
    train_seconds = time.perf_counter() - t0
    predictor = Predictor(checkpoint, device="cpu")
    if args.monuseg:
        res = predictor.resolution  # None: a model of whole images, one crop its input size
        side = predictor.img_size if res is None else round(res.patch * res.scale)
        samples = monuseg_crops(load_split(args.monuseg / "Val_Folder"), side)[: args.n_eval]
    else:
        samples = eval_samples(
            40 if args.n_eval is None else args.n_eval, args.data_size, 1000 + args.seed
        )
    kinds = sorted({s[3] for s in samples})
    rows = []
    t1 = time.perf_counter()
    proposals = [predictor.predict(im, t).mask for im, _, t, _ in samples]
    for mode in MODES if samples else ():
        curves = [
            run_mode(predictor, im, m, t, proposal, mode, args.max_clicks)
            for (im, m, t, _), proposal in zip(samples, proposals, strict=True)
        ]
        for kind in ["all", *kinds] if len(kinds) > 1 else ["all"]:
            chosen = [c for c, s in zip(curves, samples, strict=True) if kind in ("all", s[3])]
            row = summarise(chosen, mode, args.max_clicks)
            row["data"] = kind
            rows.append(row)
    metric_seconds = time.perf_counter() - t1
    print(
        f"{'mode':<13}{'data':<11}{'NoC@80':>8}{'NoC@85':>8}{'NoC@90':>8}"
        f"{'IoU@0':>7}{'@1':>7}{'@3':>7}{'@5':>7}"
    )
    for r in rows:
        cells = [
            f"{r[k]:7.3f}" if r[k] is not None else "      -"
            for k in ("iou@0", "iou@1", "iou@3", "iou@5")
        ]
        nocs = "".join(f"{r[f'noc@{t}']:8.2f}" for t in (80, 85, 90))
        print(f"{r['mode']:<13}{r['data']:<11}{nocs}{''.join(cells)}")
    ratios = noc_ratios(rows)
    for name, value in ratios.items():
        print(f"NoC@85 {name}: {value:.2f}x" if value is not None else f"NoC@85 {name}: -")
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    lat = latency(predictor, args.latency_size, args.repeats, args.seed)
    lat["loadavg_before"], lat["loadavg_after"] = load_before, os.getloadavg()
    print(
        f"latency on 1 thread, {args.latency_size} px: first prompt "
        f"{lat['first_prompt_ms']:.1f} ms, later click {lat['later_click_ms']:.1f} ms "
        f"(median of {args.repeats})"
    )
    if args.tiled_size:
        tiled = Predictor(checkpoint, device="cpu", tile=True, tile_min_side=predictor.img_size)
        lat["tiled"] = latency(tiled, args.tiled_size, args.tiled_repeats, args.seed)
        print(
            f"tile by tile, {args.tiled_size} px in tiles of {tiled.img_size} px: "
            f"first prompt {lat['tiled']['first_prompt_ms']:.0f} ms, "
            f"later click {lat['tiled']['later_click_ms']:.0f} ms "
            f"(median of {args.tiled_repeats})"
        )
    result = {
        "header": head,
        "checkpoint": str(checkpoint),
        "data": "monuseg" if args.monuseg else "synthetic",
        "n_eval": len(samples),
        "fine_tune": None
        if args.base is None
        else {"base": args.base, "steps": args.steps, "clicks": args.clicks, "lr": args.lr},
        "train_seconds": round(train_seconds, 1),
        "metric_seconds": round(metric_seconds, 1),
        "max_clicks": args.max_clicks,
        "rows": rows,
        "noc85_ratios": ratios,
        "latency": lat,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

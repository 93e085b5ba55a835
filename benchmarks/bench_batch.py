"""Batch prediction throughput: ``napari-lvit predict MODEL INPUT --out-dir DIR`` against the
ways a user would otherwise script it.

Four ways to segment the same synthetic images with the shipped ``default`` model on the CPU,
side by side (images, or slices, per second; the end-to-end wall time of each, reading, process
start and model load included):

- ``batch CLI, folder``: one ``napari-lvit predict default FOLDER --out-dir DIR`` over ``--n``
  images (each with its own text from ``text.csv``: ``--texts``);
- ``batch CLI, volume``: the same over a ``--slices``-slice 3D TIFF (one text), a NIfTI out;
- ``single-image CLI``: ``napari-lvit predict default IMAGE --out FILE``, one process per image
  as a shell loop would run it; ``--single-calls`` of them are timed and the rate is scaled to
  ``--n`` (each call costs the same: start, model load, one image);
- ``Predictor.predict`` in one process, ``--n`` calls, the model loaded once (not counted);
- ``run_batch`` (the library under the batch CLI) in that process, over the folder and the
  volume: the batch CLI less its process start and model load.

The batch runs are repeated ``--repeats`` times (median). Results go to
``benchmarks/out/batch.json``; a markdown table is printed.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_batch        # ~4.5 min on one CPU thread
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import header  # noqa: E402
from src_models.data.io import read_image  # noqa: E402
from src_models.data.synthetic import write_dataset  # noqa: E402
from src_models.data.tables import read_text_table  # noqa: E402

ROOT = Path(__file__).resolve().parent
TEXT = "Unilateral pulmonary infection, one infected area, lower left lung."


def _cli(*args) -> float:
    """Seconds one ``napari-lvit`` process takes, start to exit."""
    cmd = [sys.executable, "-m", "src_models.cli", *map(str, args)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="images in the folder")
    p.add_argument("--slices", type=int, default=64, help="slices of the volume")
    p.add_argument("--size", type=int, default=224, help="image side")
    p.add_argument("--single-calls", type=int, default=20, help="single-image CLI calls timed")
    p.add_argument("--repeats", type=int, default=3, help="runs of each batch command")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, default=ROOT / "out" / "batch.json")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    head = header("benchmarks.bench_batch", argv)
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        data = write_dataset(work / "data", "qata", args.n, size=args.size, seed=0)
        images = sorted((data / "img").iterdir())
        volume = np.stack([read_image(images[i % len(images)]) for i in range(args.slices)])
        import tifffile

        tifffile.imwrite(work / "volume.tif", volume)
        texts = read_text_table(data / "text.csv")
        common = ["--device", "cpu", "--batch-size", args.batch_size]
        rows = []

        folder = []
        for r in range(args.repeats):
            out = work / f"out_folder_{r}"
            texts_flag = ["--texts", data / "text.csv"]
            folder.append(
                _cli("predict", "default", data / "img", "--out-dir", out, *texts_flag, *common)
            )
            assert len(list(out.iterdir())) == args.n
        rows.append(("batch CLI, folder", args.n, statistics.median(folder), "median", folder))

        vol = []
        for r in range(args.repeats):
            out = work / f"out_volume_{r}"
            vol.append(
                _cli(
                    "predict",
                    "default",
                    work / "volume.tif",
                    "--out-dir",
                    out,
                    "--text",
                    TEXT,
                    *common,
                )
            )
            assert (out / "volume.nii.gz").is_file()
        rows.append(("batch CLI, volume", args.slices, statistics.median(vol), "median", vol))

        single = []
        for i, image in enumerate(images[: args.single_calls]):
            text = texts[image.name]
            out = ["--out", work / "single" / f"{i}.png", "--device", "cpu"]
            single.append(_cli("predict", "default", image, "--text", text, *out))
        scaled = statistics.fmean(single) * args.n
        note = f"{len(single)} timed, x{args.n / len(single):g}"
        rows.append(("single-image CLI, one process each", args.n, scaled, note, single))

        from src_models.inference import Predictor

        predictor = Predictor("default", device="cpu")
        t0 = time.perf_counter()
        for image in images:
            predictor.predict(read_image(image), texts[image.name])
        in_process = time.perf_counter() - t0
        rows.append(("Predictor.predict, one process", args.n, in_process, "model loaded once", []))

        from src_models.batch import plan_batch, run_batch

        for name, inputs, count, plan in (
            ("run_batch, folder, one process", [data / "img"], args.n, {"texts": texts}),
            ("run_batch, volume, one process", [work / "volume.tif"], args.slices, {"text": TEXT}),
        ):
            runs = []
            for r in range(args.repeats):
                items = plan_batch(inputs, work / f"lib_{len(rows)}_{r}", **plan)
                runs.append(run_batch(predictor, items, batch_size=args.batch_size).seconds)
            rows.append((name, count, statistics.median(runs), "median, model loaded once", runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.n} images / {args.slices} slices of {args.size} x {args.size}, default model")
    print("| how | images | seconds | images/s | note |")
    print("|---|---:|---:|---:|---|")
    results = []
    for name, count, seconds, note, runs in rows:
        print(f"| {name} | {count} | {seconds:.1f} | {count / seconds:.2f} | {note} |")
        rate = round(count / seconds, 3)
        runs = [round(s, 2) for s in runs]
        row = {"how": name, "images": count, "seconds": round(seconds, 2)}
        results.append({**row, "images_per_second": rate, "note": note, "runs": runs})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"header": head, "results": results}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

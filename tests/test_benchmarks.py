"""The benchmarks: a package run from the repository root (``python -m benchmarks.<name>``)
whose modules all import as such, and the header every one of them writes first."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NAMES = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if not p.stem.startswith("_"))

# Run from the repository root, as `python -m benchmarks.<name>` is: the root is on sys.path.
CHECK = """
import importlib, json, sys
from benchmarks._common import header
for name in sys.argv[1:]:
    assert callable(importlib.import_module("benchmarks." + name).main), name
print(json.dumps(header("benchmarks.bench_models", ["--models", "a b"], echo=False)))
"""


def test_every_benchmark_imports_as_a_module_and_the_header_records_the_run():
    assert "bench_models" in NAMES and "train_default" in NAMES
    cmd = [sys.executable, "-c", CHECK, *NAMES]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    head = json.loads(out.stdout.splitlines()[-1])
    assert head["command"] == "python -m benchmarks.bench_models --models 'a b'"
    assert {"date", "git_commit", "git_dirty", "machine"} <= set(head)
    assert {"python", "torch", "threads", "cpu", "cpu_count", "platform"} <= set(head["machine"])
    assert head["git_commit"] is None or len(head["git_commit"]) == 40


def test_bad_click_settings_are_refused_before_any_work(tmp_path):
    for argv, message in (
        (["train_default", "--click-steps", "-1"], "--click-steps must be >= 0"),
        (["train_default", "--clicks", "0"], "--clicks >= 1"),
        (["bench_clicks", "--base", "default", "--steps", "0"], "--steps and --clicks must be"),
        (["bench_clicks", "--monuseg", "/nonexistent"], "--monuseg: no Train_Folder in"),
    ):
        cmd = [sys.executable, "-m", f"benchmarks.{argv[0]}", *argv[1:], "--work", tmp_path / "w"]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
        assert "Traceback" not in out.stderr and not (tmp_path / "w").exists()


def test_bench_clicks_on_monuseg_fine_tunes_on_the_train_split_and_scores_crops_of_val(tmp_path):
    """``--monuseg``: the shipped default is fine-tuned on Train_Folder and measured on a grid
    of crops of Val_Folder, one model input each (here a synthetic folder in the same layout)."""
    from src_models.data.synthetic import write_dataset

    root = tmp_path / "monuseg"
    write_dataset(root / "Train_Folder", "qata", n=2, size=300, seed=1)
    write_dataset(root / "Val_Folder", "qata", n=2, size=300, seed=2)
    out = tmp_path / "clicks.json"
    argv = ["--monuseg", root, "--steps", "2", "--max-clicks", "2", "--repeats", "1"]
    argv += ["--latency-size", "128", "--work", tmp_path / "w", "--out", out]
    cmd = [sys.executable, "-m", "benchmarks.bench_clicks", *map(str, argv)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["data"] == "monuseg" and result["fine_tune"]["base"] == "default"
    assert Path(result["checkpoint"]) == tmp_path / "w" / "clicks.safetensors"
    # 300 px tiles in crops of the model's 128 px (the fewest that cover them, spread evenly:
    # a 3 x 3 grid), those with a lesion kept
    from PIL import Image

    starts = (0, 86, 172)
    masks = [np.asarray(Image.open(f)) > 0 for f in sorted((root / "Val_Folder").rglob("*.png"))
             if f.parent.name == "labelcol"]  # fmt: skip
    n_crops = sum(m[y : y + 128, x : x + 128].any() for m in masks for y in starts for x in starts)
    assert len(masks) == 2 and 0 < n_crops <= 18
    assert result["n_eval"] == n_crops
    rows = {r["mode"]: r for r in result["rows"]}
    modes = {"text", "clicks", "text+clicks", "text>clicks", "perfect", "text+perfect"}
    assert set(rows) == modes
    assert all(r["n"] == n_crops and r["data"] == "all" for r in rows.values())
    assert 0 <= rows["clicks"]["iou@1"] <= 1 and rows["text"]["iou@1"] is None
    # perfect clicks from the text's proposal start where the text left off and only gain
    perfect = rows["text+perfect"]
    assert perfect["iou@0"] == rows["text"]["iou@0"] and perfect["iou@1"] >= perfect["iou@0"]
    assert rows["perfect"]["iou@0"] is None and 0 < rows["perfect"]["iou@1"] <= 1
    assert set(result["noc85_ratios"]) == {"text+clicks / clicks", "text+perfect / perfect"}

"""The benchmarks: a package run from the repository root (``python -m benchmarks.<name>``)
whose modules all import as such, and the header every one of them writes first."""

import json
import subprocess
import sys
from pathlib import Path

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
    ):
        cmd = [sys.executable, "-m", f"benchmarks.{argv[0]}", *argv[1:], "--work", tmp_path / "w"]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
        assert "Traceback" not in out.stderr and not (tmp_path / "w").exists()

"""Does the viewer stay responsive while a retraining round runs, and how fast does it train?

Run under a virtual display::

    xvfb-run -a python -m benchmarks.bench_responsiveness            # a few minutes

For one synthetic project (``--n`` images of ``--size`` px, ``--labeled`` of them committed, the
rest unlabelled with their texts, so rounds use EPI) it runs the same retraining round

1. from the CLI (``napari-lvit retrain --jsonl``, the viewer idle): the reference speed;
2. in a real napari viewer with the annotation widget, training as a **separate process**;
3. in the same viewer, training in a **napari thread worker** (``create_worker``);

in ``--repeats`` cycles, and the CLI once more at the end (the machine is shared with other
jobs: interleaving spreads their load over all three).

In the viewer a ``QTimer`` fires every 20 ms and records how late each tick is (the event
loop's answer time); every 3 s a proposal is requested (Segment, in the widget's worker) and its
click-to-labels time recorded. Also an idle phase (no training) for reference. Training speed is
seconds per optimizer step (training time of the epochs / steps, from the round's metrics).
Target: the event loop answers within 100 ms, training at most 10% slower than from the CLI.
Writes ``benchmarks/out/responsiveness.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import header

REPO = Path(__file__).resolve().parents[1]


def build_project(root: Path, n: int, labeled: int, size: int) -> Path:
    from src_models.data.io import read_mask
    from src_models.data.synthetic import write_dataset
    from src_models.project.workspace import open_workspace

    data = write_dataset(root / "data", kind="qata", n=n, size=size, seed=0)
    project, _ = open_workspace(data, root / "project", with_masks=False)
    with project:
        for rec in project.images()[:labeled]:
            project.commit(rec, read_mask(data / "labelcol" / f"{rec.name}.png"), model_version="b")
    return root / "project"


def cli_round(project: Path, args, epochs: int, extra: list[str] = ()) -> dict:
    """One retraining round from the command line; returns its RetrainRoundEnd metrics."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [
        sys.executable,
        "-m",
        "src_models.cli",
        "retrain",
        str(project),
        "--jsonl",
        "--epochs",
        str(epochs),
        "--model",
        args.model,
        "--img-size",
        str(args.img_size),
        "--threads",
        str(args.threads),
        *extra,
    ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode()[-3000:])
    events = [json.loads(line) for line in out.stdout.decode().splitlines()]
    end = next(e for e in events if e["type"] == "RetrainRoundEnd")
    return {"wall_s": wall, **_round_figures(end["metrics"])}


def _round_figures(m: dict) -> dict:
    return {
        "s_per_step": m.get("s_per_step"),
        "steps": m.get("steps"),
        "round_s": m.get("seconds"),
        "engine": m.get("engine"),
        "best_dice": m.get("best_dice"),
    }


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    arr = np.asarray(values) * 1000.0
    return {
        "n": len(values),
        "median_ms": round(float(np.median(arr)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "max_ms": round(float(arr.max()), 2),
        "over_100ms": int((arr > 100.0).sum()),
    }


class Probe:
    """Event-loop lateness (a 20 ms QTimer) and proposal latency (Segment every 3 s)."""

    def __init__(self, widget, propose_every: float = 3.0) -> None:
        from qtpy.QtCore import QTimer

        self.widget = widget
        self.late: list[float] = []
        self.proposals: list[float] = []
        self._last = None
        self._asked = None
        self.timer = QTimer()
        self.timer.setInterval(20)
        self.timer.timeout.connect(self._tick)
        self.propose_every = propose_every
        self._next_proposal = 0.0
        original = widget._on_proposal

        def on_proposal(*a, **k):
            if self._asked is not None:
                self.proposals.append(time.perf_counter() - self._asked)
                self._asked = None
            return original(*a, **k)

        widget._on_proposal = on_proposal

    def start(self) -> None:
        self.late, self.proposals = [], []
        self._last = time.perf_counter()
        self._next_proposal = self._last + 1.0
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        return {"event_loop": _stats(self.late), "proposal": _stats(self.proposals)}

    def _tick(self) -> None:
        now = time.perf_counter()
        self.late.append(max(0.0, now - self._last - 0.020))
        self._last = now
        w = self.widget
        due = self.propose_every and now >= self._next_proposal
        if due and self._asked is None and not w.seg.busy:
            self._asked = time.perf_counter()
            w.seg.segment()
            self._next_proposal = now + self.propose_every


def run_until(app, done, timeout: float) -> None:
    """Run the Qt event loop (as napari does: it sleeps until events) until ``done()``."""
    from qtpy.QtCore import QEventLoop, QTimer

    if done():
        return
    loop = QEventLoop()
    deadline = time.monotonic() + timeout
    check = QTimer()
    check.setInterval(50)

    def poll() -> None:
        if done() or time.monotonic() > deadline:
            loop.quit()

    check.timeout.connect(poll)
    check.start()
    loop.exec()
    check.stop()
    if not done():
        raise TimeoutError("the round did not finish in time")


def viewer_rounds(project: Path, args, epochs: int) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="responsiveness benchmark", show=True)
    app = QApplication.instance()
    _, widget = viewer.window.add_plugin_dock_widget("napari-lvit", "Annotation loop")
    widget.segment_on_open = False
    widget.auto_segment_check.setChecked(False)
    widget.retrain_options = {"img_size": args.img_size, "num_threads": args.threads}
    widget.seg.device.value = "cpu"
    assert widget.open(project)
    widget.show_image(len(widget.records) - 1)  # an unlabelled image with its text
    widget.seg.segment()  # load the model once (not measured)
    run_until(app, lambda: not widget.seg.busy, 120)
    probe = Probe(widget, propose_every=args.propose_every)
    results: dict = {}

    probe.start()  # idle: no training
    t_end = time.monotonic() + args.idle
    run_until(app, lambda: time.monotonic() > t_end, args.idle + 30)
    run_until(app, lambda: not widget.seg.busy, 60)
    results["idle"] = probe.stop()

    for mode in [m for _ in range(args.repeats) for m in ["cli", *args.modes]] + ["cli"]:
        if mode == "cli":  # the same round from the command line (the viewer idles meanwhile)
            results.setdefault("cli", []).append(cli_round(project, args, epochs))
            print(f"cli: {json.dumps(results['cli'][-1])}", flush=True)
            continue
        widget.retrain_mode = mode
        widget.epochs_spin.setValue(epochs)
        widget.retrain_events.clear()
        probe.start()
        t0, cpu0 = time.perf_counter(), time.process_time()
        widget.retrain()
        run_until(app, lambda: not widget.retraining, 3600)
        wall = time.perf_counter() - t0
        viewer_cpu = time.process_time() - cpu0  # this process: the viewer (+ thread training)
        figures = probe.stop()
        run_until(app, lambda: widget.idle, 120)  # new model preloaded, images re-ranked
        end = next(e for e in widget.retrain_events if e["type"] == "RetrainRoundEnd")
        if end["status"] != "done":
            raise RuntimeError(f"{mode} round {end['status']}: {end.get('error')}")
        results.setdefault(mode, []).append(
            {
                "wall_s": wall,
                "viewer_process_cpu_s": round(viewer_cpu, 2),
                **_round_figures(end["metrics"]),
                **figures,
            }
        )
        print(f"{mode}: {json.dumps(results[mode][-1])}", flush=True)
    run_until(app, lambda: widget.idle, 120)  # the new model's preload, the suggestions
    widget.close_project()
    viewer.close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_responsiveness",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--n", type=int, default=24, help="images in the project")
    p.add_argument("--labeled", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="image size (px)")
    p.add_argument("--model", default="lvit_s")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) - 1))
    p.add_argument("--idle", type=float, default=10.0, help="seconds of the idle phase")
    p.add_argument(
        "--propose-every", type=float, default=3.0, help="seconds between proposals (0: none)"
    )
    p.add_argument("--modes", nargs="+", default=["process", "thread"])
    p.add_argument("--repeats", type=int, default=2, help="cycles of CLI, process, thread")
    p.add_argument("--work", type=Path, default=Path("/tmp/napari-lvit-bench-responsiveness"))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "responsiveness.json")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    head = header("benchmarks.bench_responsiveness", argv)

    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    project = build_project(args.work, args.n, args.labeled, args.size)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    cli_round(project, args, epochs=1)  # warm-up: every measured round starts from a checkpoint
    viewer = viewer_rounds(project, args, args.epochs)
    cli = viewer.pop("cli")
    ref = statistics.mean(c["s_per_step"] for c in cli)
    summary = {
        "cli_s_per_step": round(ref, 4),
        "idle_event_loop_worst_ms": viewer["idle"]["event_loop"]["max_ms"],
        "idle_proposal_median_ms": viewer["idle"]["proposal"].get("median_ms"),
        "proposal_every_s": args.propose_every,
    }
    for mode in args.modes:
        runs = viewer[mode]
        step = statistics.mean(r["s_per_step"] for r in runs)
        worst = max(r["event_loop"]["max_ms"] for r in runs)
        summary[mode] = {
            "event_loop_median_ms": statistics.median(r["event_loop"]["median_ms"] for r in runs),
            "event_loop_worst_ms": worst,
            "ticks_over_100ms": sum(r["event_loop"]["over_100ms"] for r in runs),
            "proposal_median_ms": (
                statistics.median(proposals)
                if (proposals := [r["proposal"]["median_ms"] for r in runs if r["proposal"]["n"]])
                else None
            ),
            "s_per_step": round(step, 4),
            "slowdown_vs_cli": round(step / ref - 1.0, 4),
            "meets_target": bool(worst <= 100.0 and step <= 1.10 * ref),
        }
    result = {
        "header": head,
        "what": "event-loop lateness and training speed while a retraining round runs",
        "command": "xvfb-run -a " + head["command"],
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"
        },
        "machine": {
            **head["machine"],
            "cpus": os.cpu_count(),
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg(),
            "note": "the 2 cores are shared with other jobs; CLI runs are interleaved",
        },
        "cli": cli,
        "cli_s_per_step_mean": ref,
        "viewer": viewer,
        "summary": summary,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, allow_nan=False))
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

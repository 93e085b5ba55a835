"""Crash test: a process that commits in a loop is killed with SIGKILL; nothing it reported as
committed may be lost or damaged, and the manifest must stay healthy."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src_models.project import Project

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")

REPO = Path(__file__).resolve().parents[2]
H, W = 40, 48
N_IMAGES = 3

# The child commits masks derived from the commit index ``i`` (written into the commit text),
# printing "<i> <commit id>" after each commit returned, until it is killed.
CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from src_models.project import Project

    folder, start = sys.argv[1], int(sys.argv[2])
    H, W, N = {H}, {W}, {N}
    with Project.open(folder) as p:
        names = [r.name for r in p.images()]
        i = start
        while True:
            mask = np.random.default_rng(i).random((H, W)) < 0.4
            if i % 7 == 3:
                c = p.commit_no_lesion(names[i % N], text=f"commit {{i}}", model_version=f"v{{i}}")
            else:
                c = p.commit(names[i % N], mask, text=f"commit {{i}}", model_version=f"v{{i}}")
            print(i, c.id, flush=True)
            i += 1
    """
).format(H=H, W=W, N=N_IMAGES)


def expected_mask(i: int) -> np.ndarray:
    if i % 7 == 3:
        return np.zeros((H, W), bool)
    return np.random.default_rng(i).random((H, W)) < 0.4


def _run_and_kill(folder: Path, script: Path, start: int, n_before_kill: int, delay: float):
    """Start the child, read at least ``n_before_kill`` reports, SIGKILL it; return the reports
    and what a concurrent reader saw while the child was running."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(folder), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    reported: dict[int, int] = {}
    seen_live = None
    deadline = time.monotonic() + 60
    try:
        buf = b""
        fd = proc.stdout.fileno()
        while len(reported) < n_before_kill:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"child stopped early: {proc.stderr.read().decode()[-2000:]}")
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            buf += os.read(fd, 65536)
            *lines, buf = buf.split(b"\n")
            for line in lines:
                i, cid = map(int, line.split())
                reported[i] = cid
            if seen_live is None and len(reported) >= n_before_kill // 2:
                # a second process reads (and sweeps) while the child keeps committing
                with Project.open(folder) as live:
                    seen_live = {c.id for r in live.images() for c in live.history(r)}
        time.sleep(delay)  # land the kill at varying points of a commit
    finally:
        proc.kill()  # SIGKILL
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # reports written before the kill but not yet read
    for line in buf.split(b"\n"):
        parts = line.split()
        if len(parts) == 2:
            reported[int(parts[0])] = int(parts[1])
    return reported, seen_live


def test_sigkill_mid_commit_loses_nothing_reported(tmp_path):
    folder = tmp_path / "proj"
    rng = np.random.default_rng(0)
    with Project.create(folder) as p:
        for k in range(N_IMAGES):
            path = tmp_path / f"img{k}.png"
            Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(path)
            p.add_image(path, text=f"image {k}")
    script = tmp_path / "child.py"
    script.write_text(CHILD)

    all_reported: dict[int, int] = {}
    start = 0
    for n_before_kill, delay in [(12, 0.0), (20, 0.013), (16, 0.031)]:
        reported, seen_live = _run_and_kill(folder, script, start, n_before_kill, delay)
        assert len(reported) >= n_before_kill
        assert seen_live is not None and len(seen_live) > 0
        all_reported.update(reported)
        start = max(all_reported) + 1000  # fresh indices for the next child

        with Project.open(folder) as p:
            commits = {c.id: c for r in p.images() for c in p.history(r)}
            # every commit the child reported is there ...
            missing = {i: cid for i, cid in all_reported.items() if cid not in commits}
            assert not missing, f"reported commits lost: {missing}"
            # ... and every row (reported or not) has a complete file matching its index
            for c in commits.values():
                i = int(c.text.split()[1])
                assert c.model_version == f"v{i}"
                if i in all_reported:
                    assert all_reported[i] == c.id
                np.testing.assert_array_equal(c.load_mask(), expected_mask(i))
                assert c.kind == ("no_lesion" if i % 7 == 3 else "correction")
            # the current label of each image is its latest commit
            for r in p.images():
                hist = p.history(r)
                last = int(hist[-1].text.split()[1])
                np.testing.assert_array_equal(p.current_mask(r), expected_mask(last))
                assert r.status == ("no_lesion" if last % 7 == 3 else "corrected")
                assert [c.version for c in hist] == list(range(1, len(hist) + 1))
            assert seen_live <= set(commits)
            assert p.check(deep=True) == []
            assert p.integrity_check() == ["ok"]
            # leftovers of the killed write (if any) were moved aside, never deleted
            for orphan in p.orphans_moved:
                assert orphan.is_file() and "orphans" in orphan.parts
            # the project keeps working after the crash (this row is checked like the others)
            j = start - 1
            if j % 7 == 3:
                p.commit_no_lesion(p.images()[0], text=f"commit {j}", model_version=f"v{j}")
            else:
                p.commit(p.images()[0], expected_mask(j), text=f"commit {j}", model_version=f"v{j}")

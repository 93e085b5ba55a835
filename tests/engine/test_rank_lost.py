"""A rank of a torchrun job that dies (SIGKILL) ends the job with one clear line, and what was
saved stays whole: the run resumes in one process."""

import json

from _torchrun import epi_data, torchrun

from src_models.cli import main
from src_models.engine import load_checkpoint
from src_models.engine.semi import PseudoLabelBank


def test_a_killed_rank_ends_the_job_with_one_line_and_files_intact(tmp_path, capsys):
    train, val = epi_data(tmp_path)
    out = tmp_path / "run" / "m.safetensors"
    bank_dir = tmp_path / "run" / "m.pseudo"
    args = [
        "train", str(train), "--val", str(val), "--model", "lvit_tiny", "--no-text",
        "--semi", "epi", "--labeled-fraction", "0.34", "--rounds", "2", "--epochs", "1",
        "--round-epochs", "2", "--batch-size", "2", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    proc = torchrun("cli", bank_dir / "index.json", 1, *args, timeout=180)
    assert proc.returncode != 0
    # (after a progress bar's carriage return on the same line)
    lines = [ln for ln in proc.stderr.splitlines() if "napari-lvit train: error:" in ln]
    assert len(lines) == 1, proc.stderr[-3000:]  # rank 0's line; rank 1 was killed
    line = lines[0].split("\r")[-1]
    assert "rank 0 of 2" in line and "torchrun" in line and "--resume" in line
    assert "src_models" not in proc.stderr  # no traceback of ours (torchrun prints its own)
    # what was written is whole: round 0's model, the state file, the bank's first update
    state = json.loads((out.parent / "m.semi.json").read_text())
    assert state["next_round"] == 1
    load_checkpoint(out)
    bank = PseudoLabelBank(bank_dir, read_only=True)
    assert bank.t == 1 and len(bank) == 8
    assert all(bank.get(n) is not None for n in bank.names())
    assert not [p for p in out.parent.rglob("*") if ".tmp" in p.name]
    # and the run resumes, in one process
    assert main([*args, "--resume", str(out)]) == 0
    assert "fine-tuning" not in capsys.readouterr().out
    assert PseudoLabelBank(bank_dir, read_only=True).t == 2  # rounds 1 and 2, not 3 updates
    assert json.loads((out.parent / "m.semi.json").read_text())["next_round"] == 3

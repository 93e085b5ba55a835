"""One RetrainConfig crosses every path to the trainer unchanged: in a thread
(``retrain(folder, config=cfg)``), through ``napari-lvit retrain --config FILE --jsonl`` and
through a ``python -m src_models.cli retrain --config - --jsonl`` process reading stdin, as the
widget starts it. Each round records ``metrics["config"]`` (the RetrainConfig) and
``metrics["trainer"]`` (the TrainConfig / SemiConfig / CLCCConfig / ClassifierConfig handed to
the engine), so the test compares what each path actually trained with."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from retrain_cases import FULL, make_project, recorded  # (tests/ is on sys.path)
from test_retrain import REPO  # (tests/project is on sys.path)

from src_models.cli import build_parser, retrain_config
from src_models.cli import main as cli_main
from src_models.dataclass_io import field_flags
from src_models.project.retrain import RetrainConfig, retrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_field_of_the_full_config_differs_from_its_default():
    default = RetrainConfig()
    names = [f.name for f in dataclasses.fields(RetrainConfig)]
    assert [n for n in names if getattr(FULL, n) == getattr(default, n)] == []


def test_json_round_trip_is_the_identity():
    for cfg in (FULL, RetrainConfig()):
        assert RetrainConfig.from_json(cfg.to_json()) == cfg
        assert RetrainConfig.from_dict(cfg.to_dict()) == cfg
        assert json.loads(cfg.to_json()) == cfg.to_dict()
    assert set(FULL.to_dict()) == {f.name for f in dataclasses.fields(RetrainConfig)}
    assert RetrainConfig.from_dict({"epochs": 3}) == RetrainConfig(epochs=3)  # the rest: defaults


def test_from_dict_names_unknown_keys_and_wrong_values():
    with pytest.raises(ValueError, match="bogus, zzz"):
        RetrainConfig.from_dict({"epochs": 2, "zzz": 1, "bogus": 2})
    with pytest.raises(ValueError, match="epochs"):
        RetrainConfig.from_dict({"epochs": "2"})
    with pytest.raises(ValueError, match="augment"):
        RetrainConfig.from_dict({"augment": 0})
    with pytest.raises(ValueError, match="semi"):
        RetrainConfig.from_dict({"semi": "maybe"})
    with pytest.raises(ValueError, match="clcc_grid"):
        RetrainConfig.from_dict({"clcc_grid": 1})
    with pytest.raises(ValueError, match="semi_options field.*: betta"):
        RetrainConfig.from_dict({"semi_options": {"betta": 0.9}})
    with pytest.raises(ValueError, match="beta"):
        RetrainConfig(semi_options={"beta": 2.0})
    with pytest.raises(ValueError, match="not JSON"):
        RetrainConfig.from_json("{rounds: 1")
    assert RetrainConfig.from_dict({"lr": 1}).lr == 1.0  # a JSON integer is a float too


def _flags(cfg: RetrainConfig) -> list[str]:
    """``cfg`` as command-line flags (each field's first flag)."""
    out: list[str] = []
    for f in dataclasses.fields(RetrainConfig):
        value = getattr(cfg, f.name)
        flag = field_flags(f)[0]
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            out += [flag, json.dumps(value)]
        else:
            out += [flag, "none" if value is None else str(value)]
    return out


def test_the_retrain_flags_are_the_config_fields(tmp_path):
    parser = build_parser()
    parse = parser.parse_args
    assert retrain_config(parse(["retrain", "p", *_flags(FULL)])) == FULL
    assert retrain_config(parse(["retrain", "p"])) == RetrainConfig()
    # the spellings the README and the tests use
    args = parse(["retrain", "p", "--threads", "2", "--no-augment", "--from-scratch", "--clcc"])
    assert retrain_config(args) == RetrainConfig(
        num_threads=2, augment=False, from_scratch=True, clcc=True
    )
    # --config, then the flags given override it
    path = tmp_path / "cfg.json"
    path.write_text(FULL.to_json())
    args = parse(["retrain", "p", "--config", str(path), "--epochs", "7", "--no-clcc"])
    assert retrain_config(args) == dataclasses.replace(FULL, epochs=7, clcc=False)
    args = parse(["retrain", "p", "--config", str(path), "--img-size", "none"])
    assert retrain_config(args).img_size is None
    path.write_text(json.dumps({"epochs": 2, "wrong": 1}))
    assert cli_main(["retrain", str(tmp_path), "--config", str(path)]) == 2  # named, not dropped


def test_every_field_crosses_identically_in_a_thread_the_cli_and_a_process(tmp_path, capfd):
    thread, cli, proc = (make_project(tmp_path / name) for name in ("thread", "cli", "proc"))
    events = list(retrain(thread, config=FULL))
    assert events[-1].status == "done", events[-2]

    capfd.readouterr()
    config_file = tmp_path / "retrain.json"
    config_file.write_text(FULL.to_json())
    assert cli_main(["retrain", str(cli), "--config", str(config_file), "--jsonl"]) == 0
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert lines[0]["type"] == "RetrainRoundStart" and lines[-1]["type"] == "RetrainDone"

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "src_models.cli", "retrain", str(proc), "--config", "-"]
    done = subprocess.run(
        [*command, "--jsonl"], input=FULL.to_json(), capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1])["status"] == "done"

    expected = recorded(thread)
    assert recorded(cli) == expected
    assert recorded(proc) == expected
    for round_id, (config, trainer) in enumerate(expected, start=1):
        assert config == FULL.to_dict()
        train, semi, clcc, stage1 = (trainer[k] for k in ("train", "semi", "clcc", "classifier"))
        assert (train["epochs"], train["batch_size"], train["lr"]) == (2, 3, 1e-3)
        assert (train["min_lr"], train["seed"], train["device"]) == (2e-5, 3 + round_id, "cpu")
        assert train["out"] == f"<project>/checkpoints/round-{round_id:04d}.work.safetensors"
        assert (semi["beta"], semi["margin"], semi["round0_epochs"]) == (0.9, 0.2, 2)
        assert semi["pseudo_dir"] == "<project>/pseudo/epi"
        assert semi["clcc"] == clcc and clcc["grid"] == 3
        assert stage1 == {"epochs": 2, "batch_size": 3, "lr": 1e-3, "seed": 3, "device": "cpu"}

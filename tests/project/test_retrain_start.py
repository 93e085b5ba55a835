"""A new project's first round chooses its start by evidence: it probes the configured model
against a fresh one (and a pretrained encoder when the project has one), continues from the
best, and records the probe; rounds of a project with a model start from it."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from retrain_cases import tile_project  # (tests/ is on sys.path)

from src_models.data.resolution import WorkingResolution, still_suits
from src_models.engine.checkpoint import save_checkpoint
from src_models.models import create_model
from src_models.project import Project
from src_models.project.retrain import RetrainConfig, RetrainStartProbe, retrain
from src_models.project.retrain_round import plan_round
from src_models.project.retrain_start import PRETRAINED_NAME, probe_starts, start_candidates

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIONS = {"device": "cpu", "num_threads": 1, "semi": "off", "steps": 96, "lr": 1e-2}


def _dead_checkpoint(path):
    """A tiny model that predicts nothing, and learns little: its output is saturated far
    below zero (a start a fresh model beats after a few steps)."""
    torch.manual_seed(0)
    model = create_model("lvit_tiny", img_size=64, text_dim=384)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-50.0)
    save_checkpoint(path, model, meta={"threshold": 0.5, "text_encoder": "all-MiniLM-L6-v2"})
    return path


def test_the_first_round_probes_the_configured_model_and_a_fresh_one(tmp_path):
    folder, _ = tile_project(tmp_path, 64, 4, 3)
    dead = _dead_checkpoint(tmp_path / "dead.safetensors")
    events = list(retrain(folder, config=RetrainConfig(model=str(dead), **OPTIONS)))
    assert events[-1].status == "done", events[-2]
    probes = [e for e in events if isinstance(e, RetrainStartProbe)]
    assert [(p.label, p.done) for p in probes] == [
        ("configured", False),
        ("configured", True),
        ("fresh", False),
        ("fresh", True),
    ]
    assert all(p.steps > 0 and p.total == 2 for p in probes if p.done)
    with Project.open(folder) as project:
        (r,) = project.rounds()
    record = r.metrics["start_probe"]
    dice = {c["label"]: c["dice"] for c in record["candidates"]}
    assert dice["configured"] < dice["fresh"]  # the dead start predicts nothing
    assert record["chosen"] == "fresh" and r.metrics["base"].startswith("lvit_tiny (new")
    # the round went on from the fresh model (from what its probe reached)
    assert r.metrics["best_dice"] >= dice["fresh"]
    # the winner's probe epochs and the rest make the planned round: 96 steps of batch 4 over
    # 3 images, one step an epoch
    assert record["epochs"] + len(r.metrics["epochs"]) == math.ceil(96 * 4 / 3)


def test_each_start_learns_at_its_own_rate(tmp_path):
    folder, _ = tile_project(tmp_path, 64, 4, 3)
    dead = _dead_checkpoint(tmp_path / "dead.safetensors")
    cfg = RetrainConfig(model=str(dead), **{**OPTIONS, "lr": None})
    with Project.open(folder) as project:
        plan = plan_round(project, cfg, 1, tmp_path / "w", project.labeled(), [])
        configured, fresh = start_candidates(project, cfg, plan)
    # the checkpoint was trained on whole 64 px images, as this round trains: fine-tuning rate
    assert configured.lr == plan.recipe.train.lr == pytest.approx(3e-4)
    assert fresh.lr == pytest.approx(1e-3) and fresh.base_is_new


def test_no_probe_once_the_project_has_a_model_or_when_asked_for_the_model(tmp_path):
    folder, _ = tile_project(tmp_path, 64, 4, 3)
    dead = _dead_checkpoint(tmp_path / "dead.safetensors")
    quick = {**OPTIONS, "steps": 8}
    list(retrain(folder, config=RetrainConfig(model=str(dead), start="model", **quick)))
    with Project.open(folder) as project:
        first = project.rounds()[-1]
        assert "start_probe" not in first.metrics and first.metrics["base"].endswith(
            "dead.safetensors"
        )
        project.current_checkpoint = first.checkpoint_path  # whatever its score
    events = list(retrain(folder, config=RetrainConfig(model=str(dead), **quick)))
    assert not [e for e in events if isinstance(e, RetrainStartProbe)]
    with Project.open(folder) as project:
        assert "start_probe" not in project.rounds()[-1].metrics


def test_a_pretrained_encoder_in_the_project_is_a_candidate(tmp_path):
    folder, _ = tile_project(tmp_path, 64, 4, 3)
    torch.manual_seed(1)
    pretrained = create_model("lvit_tiny", img_size=64, text_dim=384)
    (folder / "checkpoints").mkdir(exist_ok=True)
    save_checkpoint(folder / "checkpoints" / PRETRAINED_NAME, pretrained, meta={"threshold": 0.5})
    events = list(retrain(folder, config=RetrainConfig(model="lvit_tiny", **OPTIONS)))
    probes = [e for e in events if isinstance(e, RetrainStartProbe) and e.done]
    assert [p.label for p in probes] == ["configured", "pretrained"]
    assert "pretrained.safetensors" in probes[1].base
    with Project.open(folder) as project:
        record = project.rounds()[-1].metrics["start_probe"]
    assert record["chosen"] in ("configured", "pretrained")
    best = max(record["candidates"], key=lambda c: c["dice"])
    assert record["chosen"] == best["label"]


def test_a_kept_patch_scale_survives_a_noisy_median_but_not_a_wrong_one():
    yy, xx = np.mgrid[:512, :512]

    def masks(radius):
        m = np.zeros((512, 512), bool)
        for cy in range(40, 512, 80):
            for cx in range(40, 512, 80):
                m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        return [m]

    shapes = [(512, 512)]
    # objects 15 px wide: the rule picks native resolution, half resolution still shows 7.5 px
    assert still_suits(WorkingResolution("patches", 64, 2.0), shapes, masks=masks(7.5))
    # quarter resolution would leave 3.8 px objects: switch
    assert not still_suits(WorkingResolution("patches", 64, 4.0), shapes, masks=masks(7.5))
    # a whole-image resolution never suits what the rule cuts into patches
    assert not still_suits(WorkingResolution.whole(64), shapes, masks=masks(7.5))


def test_before_an_epi_round_the_winner_goes_back_to_its_starting_weights(tmp_path):
    folder, _ = tile_project(tmp_path, 64, 4, 3)  # one unlabelled tile: an EPI round
    dead = _dead_checkpoint(tmp_path / "dead.safetensors")
    cfg = RetrainConfig(model=str(dead), **{**OPTIONS, "semi": "epi"})
    with Project.open(folder) as project:
        plan = plan_round(project, cfg, 1, tmp_path / "w", project.labeled(), project.unlabeled())
        assert plan.recipe.semi is not None and len(plan.labeled_set) < len(plan.train_set)
        candidates = start_candidates(project, cfg, plan)
        before = {c.label: copy.deepcopy(c.model.state_dict()) for c in candidates}
        run = probe_starts(candidates, plan, 1, lambda trainer: None)
        events = []
        try:
            while True:
                events.append(next(run))
        except StopIteration as stop:
            best, record = stop.value
    assert record["kept_training"] is False and record["chosen"] == best.label == "fresh"
    # 96 steps planned: a sixth of them, one step an epoch over the 3 labelled tiles
    assert record["epochs"] == 16 and all(c["steps"] == 16 for c in record["candidates"])
    for name, value in best.model.state_dict().items():
        torch.testing.assert_close(value, before["fresh"][name])
    plan.start_from(best, 0)
    assert plan.recipe.semi.round0_epochs == plan.recipe.train.epochs  # a new model's round 0

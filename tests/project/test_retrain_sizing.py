"""Step-sized rounds and the working resolution: a round's steps grow with the labelled images
(not with epochs), large images with small objects train on patches (stored in the project,
the round and the checkpoint), and prediction and evaluation follow the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from retrain_cases import blob_tile, tile_project  # (tests/ is on sys.path)

from src_models.cli import main as cli_main
from src_models.data.patches import steps_for
from src_models.engine.checkpoint import read_checkpoint_meta
from src_models.inference import Predictor
from src_models.project import Project
from src_models.project.retrain import RetrainConfig, retrain
from src_models.project.retrain_round import plan_round

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"model": "lvit_tiny", "img_size": None, "device": "cpu", "num_threads": 1, "semi": "off"}


def _plan(folder, tmp_path, **options):
    with Project.open(folder) as project:
        cfg = RetrainConfig(**{**TINY, **options})
        return plan_round(
            project, cfg, 1, tmp_path / "w.safetensors", project.labeled(), project.unlabeled()
        )


def test_a_rounds_steps_grow_with_the_labelled_images_not_with_epochs(tmp_path):
    steps = {}
    for k in (1, 4, 6):
        folder, _ = tile_project(tmp_path / str(k), 64, 6, k)
        plan = _plan(folder, tmp_path / str(k))
        assert plan.sizing.resolution.is_whole  # 64 px images, a 64 px model
        steps[k] = plan.summary()["plan"]["steps"]
        assert steps[k] == steps_for(k)
        n_train = len(plan.train_set)
        assert plan.recipe.train.epochs == -(-steps[k] * plan.recipe.train.batch_size // n_train)
    assert steps[1] == 300 < steps[4] == 400 < steps[6] == 600
    # an explicit epochs value keeps the epoch-counted round
    folder, _ = tile_project(tmp_path / "e", 64, 3, 2)
    plan = _plan(folder, tmp_path / "e", epochs=2)
    assert plan.recipe.train.epochs == 2 and plan.summary()["plan"]["steps"] is None


def test_large_images_with_small_objects_train_predict_and_evaluate_on_patches(tmp_path, capsys):
    folder, data = tile_project(tmp_path, 300, 3, 2)
    shapes: list[tuple[int, ...]] = []

    def hook(module, args):
        if hasattr(module, "model_name") and args and isinstance(args[0], torch.Tensor):
            shapes.append(tuple(args[0].shape))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        events = list(retrain(folder, steps=4, **TINY))
    finally:
        handle.remove()
    assert events[-1].status == "done", events[-2]
    assert shapes and all(s[-2:] == (64, 64) for s in shapes)
    expected = {"mode": "patches", "patch": 64, "scale": 2.0}  # 20 px objects, a 64 px model
    with Project.open(folder) as project:
        assert project.get_meta("working_resolution") == expected
        metrics = project.rounds()[-1].metrics
        checkpoint = (
            project.current_checkpoint or project.folder / "checkpoints" / (metrics["checkpoint"])
        )
    assert metrics["working_resolution"] == expected
    assert metrics["plan"]["steps"] == 4 and metrics["steps"] == 4
    assert read_checkpoint_meta(checkpoint)["working_resolution"] == expected

    predictor = Predictor(checkpoint, device="cpu")
    seen: list[tuple[int, ...]] = []
    predictor.model.register_forward_hook(lambda m, a, o: seen.append(tuple(a[0].shape)))
    image, _ = blob_tile(300, 12, 10, 0)
    prob = predictor.predict_prob(image, "Nuclei.")
    assert prob.shape == (300, 300) and np.isfinite(prob).all()
    assert len(seen) >= 1 and all(s[-2:] == (64, 64) for s in seen)
    assert sum(s[0] for s in seen) == 9  # 150 px at half resolution: 3 x 3 tiles of 64

    capsys.readouterr()
    assert cli_main(["evaluate", str(checkpoint), str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "full_size" and result["n"] == 3


def test_small_images_stay_whole_and_the_config_can_force_patches(tmp_path):
    folder, _ = tile_project(tmp_path, 64, 2, 2)
    assert _plan(folder, tmp_path).sizing.resolution.is_whole
    plan = _plan(folder, tmp_path, resolution="patches", resolution_scale=1.0, steps=3)
    assert plan.sizing.resolution.to_dict() == {"mode": "patches", "patch": 64, "scale": 1.0}
    assert plan.train_set[0]["image"].shape == (3, 64, 64)


def test_the_time_budget_ends_a_step_sized_round_and_keeps_its_best_model(tmp_path):
    folder, _ = tile_project(tmp_path, 64, 4, 2)
    planned = 400
    events = list(retrain(folder, config=RetrainConfig(**TINY, steps=planned, time_budget_s=1e-3)))
    assert events[-1].status == "done"
    with Project.open(folder) as project:
        (r,) = project.rounds()
        assert r.metrics["stopped_at_time_budget"] is True
        assert 0 < r.metrics["steps"] < planned  # it stopped after its first epoch
        assert project.current_checkpoint is not None and project.current_checkpoint.is_file()
    # an epoch-counted round runs to its end whatever the budget
    folder, _ = tile_project(tmp_path / "epochs", 64, 4, 2)
    list(retrain(folder, config=RetrainConfig(**TINY, epochs=2, time_budget_s=1e-3)))
    with Project.open(folder) as project:
        (r,) = project.rounds()
        assert "stopped_at_time_budget" not in r.metrics and len(r.metrics["epochs"]) == 2


def test_a_project_keeps_its_working_resolution_across_rounds(tmp_path):
    folder, _ = tile_project(tmp_path, 300, 4, 1)
    first = _plan(folder, tmp_path).sizing
    assert not first.resolution.is_whole and first.resolution_from == "chosen"
    with Project.open(folder) as project:  # a later round with other objects: the same scale
        project.set_meta("working_resolution", {**first.resolution.to_dict(), "scale": 4.0})
    again = _plan(folder, tmp_path).sizing
    assert again.resolution_from == "project" and again.resolution.scale == 4.0
    with Project.open(folder) as project:  # twice the labelled images: chosen again from them
        for rec in project.images()[1:2]:
            project.commit(rec, np.asarray(project.current_mask(project.images()[0])))
    grown = _plan(folder, tmp_path).sizing
    assert grown.resolution_from == "chosen" and grown.resolution == first.resolution
    # the config overrides it
    forced = _plan(folder, tmp_path, resolution="whole").sizing
    assert forced.resolution.is_whole and forced.resolution_from == "config"

"""Shared by the retrain tests of the library (tests/project) and of the widget (tests/plugin):
a small project, a RetrainConfig with every field away from its default, what each round
recorded of its config and of the configs handed to the engine, and projects of blob tiles
(large images with small objects) for the working-resolution tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from src_models.data.io import read_mask, write_mask
from src_models.data.synthetic import write_dataset
from src_models.project import Project
from src_models.project.retrain import RetrainConfig
from src_models.project.workspace import open_workspace

#: Every field away from its default (sks_lvit_tiny: SKS stage 1 runs too; 48 px for a 3x3 grid).
FULL = RetrainConfig(
    rounds=2,
    epochs=2,
    steps=7,
    time_budget_s=30.0,
    resolution="whole",
    resolution_scale=2.0,
    batch_size=3,
    lr=1e-3,
    min_lr=2e-5,
    model="sks_lvit_tiny",
    start="model",
    img_size=48,
    device="cpu",
    seed=3,
    text_encoder="all-MiniLM-L6-v2",
    val_fraction=0.5,
    min_val=2,
    semi="epi",
    from_scratch=True,
    augment=False,
    num_threads=1,
    clcc=True,
    clcc_grid=3,
    clicks=2,
    replace_if_worse=True,
    semi_options={"beta": 0.9, "margin": 0.2},
)


def make_project(tmp_path: Path, n: int = 5, labeled: int = 2) -> Path:
    """A project from a synthetic LViT folder: every image has its text; ``labeled`` of them
    are committed from their masks, one more is "no lesion", the rest are unlabelled."""
    data = write_dataset(tmp_path / "data", kind="qata", n=n, size=64, seed=0)
    project, how = open_workspace(data, tmp_path / "proj", with_masks=False)
    assert how == "imported"
    with project:
        recs = project.images()
        for rec in recs[:labeled]:
            project.commit(rec, read_mask(data / "labelcol" / f"{rec.name}.png"), model_version="t")
        project.commit_no_lesion(recs[labeled], model_version="t")
    return tmp_path / "proj"


def recorded(folder: Path, rounds: int = FULL.rounds) -> list[tuple[dict, dict]]:
    """``(config, trainer)`` of each round, with the project folder replaced by ``<project>``."""
    with Project.open(folder) as p:
        rounds_done = p.rounds()
        assert [r.status for r in rounds_done] == ["done"] * rounds
        text = json.dumps([(r.metrics["config"], r.metrics["trainer"]) for r in rounds_done])
    for path in {str(Path(folder).resolve()), str(folder)}:
        text = text.replace(path, "<project>")
    return [tuple(x) for x in json.loads(text)]


def blob_tile(size: int, n: int, radius: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB tile of ``n`` dark-violet disks of ``radius`` on a noisy light background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), bool)
    for _ in range(n):
        cy, cx = rng.integers(radius, size - radius, 2)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    image = rng.integers(150, 230, (size, size, 3)).astype(np.uint8)
    image[mask] = (60, 30, 120)
    return image, mask


def tile_project(tmp_path, size: int, n: int, labeled: int, radius: int = 10):
    """A project of ``n`` blob tiles of ``size`` px with a text each, ``labeled`` of them
    committed; returns its folder and the LViT-layout data folder it came from."""
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    (data / "labelcol").mkdir()
    rows = []
    for i in range(n):
        image, mask = blob_tile(size, 12, radius, i)
        name = f"tile_{i:02d}.png"
        Image.fromarray(image).save(data / "img" / name)
        write_mask(data / "labelcol" / name, mask)
        rows.append((name, "Nuclei."))
    with open(data / "text.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("Image", "Description"), *rows])
    project, how = open_workspace(data, tmp_path / "proj", with_masks=False)
    with project:
        for rec in project.images()[:labeled]:
            project.commit(rec, read_mask(data / "labelcol" / f"{rec.name}.png"), model_version="t")
    return tmp_path / "proj", data

"""Clicks and a box stored with a commit (schema version 3), and projects of version 2 that
open unchanged."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src_models.project import SCHEMA_VERSION, Project
from src_models.project import schema as schema_mod
from src_models.project import store as store_mod

H, W = 40, 50


def _png(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(path)
    return path


def _mask(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((H, W)) < 0.3


def _files(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith("project.sqlite")
    }


def test_clicks_and_box_survive_reopening_the_project(tmp_path):
    clicks = [(3.5, 7.0, 1), (20, 30, -1)]
    with Project.create(tmp_path / "p") as p:
        image = p.add_image(_png(tmp_path / "a.png"), text="Lesion left.")
        first = p.commit(image, _mask(0))
        second = p.commit(image, _mask(1), clicks=clicks, box=(30, 40, 2, 5))
        assert first.clicks == () and first.box is None
        assert second.clicks == ((3.5, 7.0, 1), (20.0, 30.0, -1))
        assert second.box == (2.0, 5.0, 30.0, 40.0)  # corners in order
    with Project.open(tmp_path / "p") as p:
        history = p.history("a")
        assert [c.clicks for c in history] == [(), second.clicks]
        assert history[1].box == second.box and history[1] == second
        assert np.array_equal(history[1].load_mask(), _mask(1))


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        ({"clicks": [(45, 3, 1)]}, "outside the 40 x 50 image"),
        ({"clicks": [(4, 3, 2)]}, "sign must be"),
        ({"box": (4, 4, 4, 20)}, "has no area"),
    ],
)
def test_bad_clicks_are_refused_before_anything_is_written(tmp_path, prompts, match):
    with Project.create(tmp_path / "p") as p:
        image = p.add_image(_png(tmp_path / "a.png"))
        before = _files(tmp_path / "p")
        with pytest.raises(ValueError, match=match):
            p.commit(image, _mask(0), **prompts)
        assert p.history(image) == [] and _files(tmp_path / "p") == before


def test_a_version_2_project_opens_unchanged_and_then_takes_clicks(tmp_path, monkeypatch):
    v2 = schema_mod.SCHEMA.replace("\n    prompts       TEXT,", "")
    assert v2 != schema_mod.SCHEMA
    with monkeypatch.context() as m:  # a project as the version-2 code wrote it
        m.setattr(store_mod, "SCHEMA", v2)
        m.setattr(store_mod, "SCHEMA_VERSION", 2)
        with Project.create(tmp_path / "old") as p:
            a = p.add_image(_png(tmp_path / "a.png"), text="Lesion left.")
            b = p.add_image(_png(tmp_path / "b.png", seed=1))
            p.commit(a, _mask(0), model_version="m1")
            p.commit(a, _mask(1), proposal=_mask(2))
            p.commit_no_lesion(b)
            before = {r.name: p.history(r) for r in p.images()}
            files = _files(tmp_path / "old")
            columns = [r["name"] for r in p._query("PRAGMA table_info(commits)")]
            assert "prompts" not in columns
    with Project.open(tmp_path / "old") as p:
        assert p._query("PRAGMA user_version")[0]["user_version"] == SCHEMA_VERSION == 3
        assert {r.name: p.history(r) for r in p.images()} == before
        assert _files(tmp_path / "old") == files  # no mask or image file touched
        assert p.integrity_check() == ["ok"]
        new = p.commit(a.name, _mask(4), clicks=[(10, 10, 1)], box=(1, 1, 30, 30))
        assert p.latest_commit(a.name).clicks == ((10.0, 10.0, 1),) == new.clicks
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):  # triggers kept
            p._db().execute("DELETE FROM commits")

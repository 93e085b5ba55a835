"""Tests of the annotation project store (SQLite manifest + mask files)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from src_models.project import (
    SCHEMA_VERSION,
    ImageRecord,
    Project,
    ProjectError,
    is_project,
)
from src_models.project import store as store_mod

H, W = 24, 32


def _write_png(path: Path, seed: int = 0, shape=(H, W), rgb: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    full = (*shape, 3) if rgb else shape
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, full, dtype=np.uint8)).save(path)
    return path


def _mask(seed: int, shape=(H, W)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < 0.3


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def project(tmp_path):
    with Project.create(tmp_path / "proj") as p:
        yield p


@pytest.fixture
def image(project, tmp_path) -> ImageRecord:
    return project.add_image(_write_png(tmp_path / "src" / "chest.png"), text="Lesion left.")


# ---------------------------------------------------------------------------- create / open


def test_import_is_light():
    """The store imports neither torch nor napari/Qt (fast for a CLI or a child process)."""
    code = (
        "import sys, src_models.project; "
        "bad = [m for m in ('torch', 'napari', 'qtpy', 'PyQt6') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_create_layout_and_reopen(tmp_path):
    folder = tmp_path / "proj"
    src = _write_png(tmp_path / "a.png")
    with Project.create(folder) as p:
        assert {"images", "masks", "proposals", "pseudo", "checkpoints"} <= {
            c.name for c in folder.iterdir() if c.is_dir()
        }
        rec = p.add_image(src, text="Lesion in the lower left lung.")
        assert (rec.name, rec.shape, rec.status, rec.is_volume) == ("a", (H, W), "unlabeled", False)
        assert rec.path == src.resolve() and not rec.copied
        c = p.commit(rec, _mask(1), model_version="m1")
        p.set_meta("model_name", "lvit-small")
        with p._lock:  # the settings the brief asks for
            conn = p._db()
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert p.closed
    with pytest.raises(ProjectError, match="closed"):
        p.images()
    assert is_project(folder)
    with Project.open(folder) as q:
        assert [r.name for r in q.images()] == ["a"]
        assert q.image("a").status == "corrected"
        assert q.image(rec.id).text == "Lesion in the lower left lung."
        assert [h.id for h in q.history("a")] == [c.id]
        np.testing.assert_array_equal(q.current_mask("a"), _mask(1))
        assert q.get_meta("model_name") == "lvit-small"
        assert q.check(deep=True) == []
        assert q.integrity_check() == ["ok"]


def test_create_refuses_existing_project(tmp_path):
    Project.create(tmp_path / "p").close()
    with pytest.raises(ProjectError, match="already holds a project"):
        Project.create(tmp_path / "p")
    with Project.create(tmp_path / "p", exist_ok=True) as p:
        assert p.images() == []
    with Project.open_or_create(tmp_path / "q") as q:
        assert is_project(q.folder)
    # a create() killed before its schema transaction leaves an empty manifest: create() fills
    # it in, and so does the next open() (issue 20: it used to refuse it for good)
    for name in ("r", "s"):
        (tmp_path / name).mkdir()
        sqlite3.connect(tmp_path / name / "project.sqlite").close()
    Project.create(tmp_path / "r").close()
    Project.open(tmp_path / "r").close()
    with Project.open(tmp_path / "s") as s:
        assert s.images() == [] and s.meta()["schema_version"] >= 1


def test_open_non_project_raises(tmp_path):
    with pytest.raises(ProjectError, match="does not exist"):
        Project.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    _write_png(tmp_path / "plain" / "x.png")
    with pytest.raises(ProjectError, match="not a napari-lvit project"):
        Project.open(tmp_path / "plain")
    assert not (tmp_path / "plain" / "project.sqlite").exists()  # open never creates one


def test_open_corrupt_or_foreign_or_newer_manifest(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "project.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ProjectError, match="corrupt"):
        Project.open(bad)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    conn = sqlite3.connect(foreign / "project.sqlite")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ProjectError, match="not a napari-lvit project manifest"):
        Project.open(foreign)

    Project.create(tmp_path / "newer").close()
    conn = sqlite3.connect(tmp_path / "newer" / "project.sqlite")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(ProjectError, match="newer"):
        Project.open(tmp_path / "newer")


def test_migration_hook_runs_on_older_schema(tmp_path, monkeypatch):
    with Project.create(tmp_path / "p") as p:
        p.add_image(_write_png(tmp_path / "a.png"))
    calls = []

    def step(conn):
        calls.append(1)
        conn.execute("ALTER TABLE images ADD COLUMN extra TEXT")

    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_mod.MIGRATIONS, SCHEMA_VERSION, step)
    with Project.open(tmp_path / "p") as p:
        assert calls == [1]
        assert p._query("PRAGMA user_version")[0]["user_version"] == SCHEMA_VERSION + 1
        assert "extra" in {r["name"] for r in p._query("PRAGMA table_info(images)")}
        assert p.image("a").name == "a"
    with Project.open(tmp_path / "p"):
        assert calls == [1]  # migrated once


def test_a_version_1_project_opens_with_its_commits_unchanged_and_takes_accepted_pseudo(
    tmp_path, monkeypatch
):
    from src_models.project import schema

    v1_kinds = "('correction', 'no_lesion')"
    v1 = schema.SCHEMA.replace(schema._in(schema.COMMIT_KINDS), v1_kinds)
    assert v1 != schema.SCHEMA
    with monkeypatch.context() as m:  # a project as the version-1 code wrote it
        m.setattr(store_mod, "SCHEMA", v1)
        m.setattr(store_mod, "SCHEMA_VERSION", 1)
        with Project.create(tmp_path / "old") as p:
            a = p.add_image(_write_png(tmp_path / "a.png"), text="Lesion left.")
            b = p.add_image(_write_png(tmp_path / "b.png", seed=1))
            p.commit(a, _mask(0), model_version="m1")
            p.commit(a, _mask(1), proposal=_mask(2))
            p.commit_no_lesion(b)
            before = {r.name: p.history(r) for r in p.images()}
            items = [(it.image.name, it.mask_path, it.kind) for it in p.labeled()]
            files = {f: _sha(tmp_path / "old" / f) for f in _files(tmp_path / "old")}
            with pytest.raises(sqlite3.IntegrityError):  # the old CHECK refuses the new kind
                p.commit(b, _mask(3), kind="accepted_pseudo")  # (its file becomes an orphan)
            assert p._query("PRAGMA user_version")[0]["user_version"] == 1

    with Project.open(tmp_path / "old") as p:
        assert p._query("PRAGMA user_version")[0]["user_version"] == SCHEMA_VERSION
        assert {r.name: p.history(r) for r in p.images()} == before  # ids, paths, times too
        assert [(it.image.name, it.mask_path, it.kind) for it in p.labeled()] == items
        for f, sha in files.items():  # no label, proposal or image file changed
            if not f.startswith("project.sqlite"):
                assert _sha(tmp_path / "old" / f) == sha
        assert p.integrity_check() == ["ok"] and p.check(deep=True) == []
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):  # triggers kept
            p._db().execute("DELETE FROM commits")
        c = p.commit(b, _mask(3), kind="accepted_pseudo")
        assert (c.id, c.version, c.kind) == (4, 2, "accepted_pseudo")  # ids continue
        assert p.image(b).status == "corrected"
        kinds = {it.image.name: it.kind for it in p.labeled()}
        assert kinds == {"a": "correction", "b": "accepted_pseudo"}
        with pytest.raises(ValueError, match="unknown commit kind"):
            p.commit(b, _mask(3), kind="guess")


# ---------------------------------------------------------------------------- images and texts


def test_add_image_duplicates_copy_and_folder(tmp_path):
    a = _write_png(tmp_path / "src" / "a.png", seed=1)
    b = _write_png(tmp_path / "other" / "a.png", seed=2)
    with Project.create(tmp_path / "p", copy_images=True) as p:
        rec = p.add_image(a)
        assert rec.copied and rec.path.parent == p.folder / "images"
        assert rec.path.read_bytes() == a.read_bytes()
        assert p.add_image(a, exist_ok=True) == rec
        with pytest.raises(ProjectError, match="already in the project"):
            p.add_image(a)
        with pytest.raises(ProjectError, match="already in the project"):
            p.add_image(b, exist_ok=True)  # same name, another file
        rec_b = p.add_image(b, name="a_other", copy=False)
        assert not rec_b.copied and rec_b.path == b.resolve()
        _write_png(tmp_path / "folder" / "x.png", seed=3)
        _write_png(tmp_path / "folder" / "y.png", seed=4, rgb=True)
        (tmp_path / "folder" / "notes.txt").write_text("not an image")
        added = p.add_folder(tmp_path / "folder", copy=False)
        assert [r.name for r in added] == ["x", "y"]
        assert added[1].rgb and added[1].shape == (H, W)
        assert p.add_folder(tmp_path / "folder") == added  # again: the same records
        assert len(p) == 4 and "x" in p and "nope" not in p
        with pytest.raises(KeyError):
            p.image("nope")
        with pytest.raises(ValueError):
            p.add_image(tmp_path / "folder" / "notes.txt")


def test_copied_project_survives_a_move(tmp_path):
    src = _write_png(tmp_path / "a.png")
    with Project.create(tmp_path / "p", copy_images=True) as p:
        rec = p.add_image(src)
        p.commit(rec, _mask(3))
    src.unlink()
    shutil.move(tmp_path / "p", tmp_path / "moved")
    with Project.open(tmp_path / "moved") as p:
        rec = p.image("a")
        assert rec.path.is_file() and rec.path.parent == p.folder / "images"
        np.testing.assert_array_equal(p.current_mask(rec), _mask(3))
        assert p.check(deep=True) == []


def test_text_history(project, image):
    project.set_text(image, "Lesion in the upper right lung.")
    project.set_text(image, "Lesion in the upper right lung.")  # a repeat is collapsed
    project.commit(image, _mask(0), text="  Two lesions, both lungs. ")
    project.save_proposal(image, _mask(1), "m", text="Lesion left.")
    texts = [t.text for t in project.text_history(image)]
    assert texts == [
        "Lesion left.",
        "Lesion in the upper right lung.",
        "Two lesions, both lungs.",
        "Lesion left.",
    ]
    assert project.image(image).text == "Lesion left."
    assert project.history(image)[0].text == "Two lesions, both lungs."
    project.set_text(image, "")
    assert project.image(image).text is None


# ---------------------------------------------------------------------------- commits


def test_history_is_kept_and_never_overwritten(project, image):
    commits = [
        project.commit(image, _mask(i), text=f"text {i}", model_version=f"v{i}") for i in range(3)
    ]
    hashes = [_sha(c.mask_path) for c in commits]
    history = project.history(image)
    assert [c.id for c in history] == [c.id for c in commits]
    assert [c.version for c in history] == [1, 2, 3]
    assert len({c.mask_path for c in history}) == 3
    assert all(c.mask_path.is_file() for c in history)
    for i, c in enumerate(history):
        np.testing.assert_array_equal(c.load_mask(), _mask(i))
        assert (c.text, c.model_version, c.kind) == (f"text {i}", f"v{i}", "correction")
    np.testing.assert_array_equal(project.current_mask(image), _mask(2))
    assert project.latest_commit(image).id == commits[-1].id
    assert [_sha(c.mask_path) for c in history] == hashes  # earlier files unchanged
    # the mask file is PNG uint8 0/255
    arr = np.asarray(Image.open(history[0].mask_path))
    assert arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 255}
    # rows are append-only, even through SQL
    with project._lock, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        project._db().execute("UPDATE commits SET text = 'x'")
    with project._lock, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        project._db().execute("DELETE FROM commits")
    assert len(project.history(image)) == 3


def test_commit_validates_masks(project, image):
    with pytest.raises(ValueError) as err:
        project.commit(image, np.zeros((W, H), bool))
    assert str((W, H)) in str(err.value) and str((H, W)) in str(err.value)
    with pytest.raises(ValueError, match="NaN"):
        project.commit(image, np.full((H, W), np.nan))
    with pytest.raises(ValueError, match="only 0 and 1"):
        project.commit(image, np.full((H, W), 0.7))
    with pytest.raises(ValueError, match="slice"):
        project.commit(image, np.zeros((H, W), bool), slice=2)
    assert project.history(image) == []
    assert project.image(image).status == "unlabeled"
    labels = np.zeros((H, W), np.int32)
    labels[2:5, 3:9] = 7  # napari label ids: nonzero counts
    project.commit(image, labels)
    np.testing.assert_array_equal(project.current_mask(image), labels != 0)
    project.commit(image, (labels != 0).astype(np.float32))
    project.commit(image, (labels != 0).astype(np.uint8) * 255)
    assert all(np.array_equal(c.load_mask(), labels != 0) for c in project.history(image))


def test_no_lesion_commit(project, image):
    project.commit(image, _mask(5))
    c = project.commit_no_lesion(image, text="No lesion.", model_version="m2")
    assert c.kind == "no_lesion"
    rec = project.image(image)
    assert rec.status == "no_lesion" and rec.is_labeled
    cur = project.current_mask(image)
    assert cur.shape == (H, W) and not cur.any()
    with pytest.raises(ValueError, match="empty mask"):
        project.commit(image, _mask(5), kind="no_lesion")
    (item,) = project.labeled()
    assert item.kind == "no_lesion" and not item.load_mask().any() and item.text == "No lesion."
    assert project.unlabeled() == []


def test_proposals_and_status(project, image, tmp_path):
    assert project.image(image).status == "unlabeled"
    prop = project.save_proposal(image, _mask(1), "m1", text="Lesion left.")
    assert project.image(image).status == "proposed"
    np.testing.assert_array_equal(prop.load_mask(), _mask(1))
    assert project.latest_proposal(image) == prop
    c = project.commit(image, _mask(2), model_version="m1", proposal=prop)
    assert c.proposal_path == prop.path
    np.testing.assert_array_equal(c.load_proposal(), _mask(1))
    assert project.image(image).status == "corrected"
    project.save_proposal(image, _mask(3), "m2")
    assert project.image(image).status == "corrected"  # a label is not demoted
    c2 = project.commit(image, _mask(4), proposal=_mask(3).astype(np.uint8))  # array: stored now
    np.testing.assert_array_equal(c2.load_proposal(), _mask(3))
    assert len(project.proposals(image)) == 3
    other = project.add_image(_write_png(tmp_path / "b.png"))
    with pytest.raises(ValueError, match="belongs to image"):
        project.commit(other, _mask(0), proposal=prop)
    assert project.counts() == {"unlabeled": 1, "proposed": 0, "corrected": 1, "no_lesion": 0}
    assert [r.name for r in project.images(status="unlabeled")] == ["b"]
    with pytest.raises(ValueError, match="unknown status"):
        project.images(status="done")


def test_labeled_and_unlabeled_views(project, tmp_path):
    recs = [
        project.add_image(_write_png(tmp_path / f"i{k}.png", k), text=f"t{k}") for k in range(4)
    ]
    project.commit(recs[0], _mask(10), text="c0")
    project.commit_no_lesion(recs[2])
    project.save_proposal(recs[3], _mask(11), "m")
    lab = project.labeled()
    unl = project.unlabeled()
    assert [i.image.name for i in lab] == ["i0", "i2"]
    assert [i.image.name for i in unl] == ["i1", "i3"]
    assert lab[0].text == "c0" and lab[1].text == "t2"
    assert all(i.mask_path is None and i.load_mask() is None for i in unl)
    np.testing.assert_array_equal(lab[0].load_mask(), _mask(10))
    assert [i.text for i in unl] == ["t1", "t3"]


def test_volume_commits(project, tmp_path):
    vol = np.random.default_rng(0).integers(0, 255, (4, H, W), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "vol.tif", vol, photometric="minisblack")
    rec = project.add_image(tmp_path / "vol.tif", text="CT")
    assert rec.is_volume and rec.shape == (4, H, W) and rec.n_slices == 4
    assert len(project.unlabeled()) == 4
    project.commit(rec, _mask(1), slice=2)
    full = np.stack([_mask(20 + z) for z in range(4)])
    project.commit(rec, full[1], slice=1)
    np.testing.assert_array_equal(project.current_mask(rec, slice=2), _mask(1))
    assert project.current_mask(rec, slice=0) is None
    cur = project.current_mask(rec)
    assert cur.shape == (4, H, W) and not cur[0].any()
    np.testing.assert_array_equal(cur[1], full[1])
    assert sorted(i.slice for i in project.labeled()) == [1, 2]
    project.commit(rec, full)  # whole volume (TIFF file)
    project.commit(rec, np.where(full, 3, 0), slice=3)  # [Z, H, W] given with slice: slice 3
    cur = project.current_mask(rec)
    np.testing.assert_array_equal(cur, full)
    assert sorted(i.slice for i in project.labeled()) == [0, 1, 2, 3]
    assert project.unlabeled() == []
    for item in project.labeled():
        np.testing.assert_array_equal(item.load_mask(), full[item.slice])
    with pytest.raises(ValueError, match="slice=k"):
        project.commit(rec, _mask(0))
    with pytest.raises(ValueError, match="out of range"):
        project.commit(rec, _mask(0), slice=4)
    project.commit_no_lesion(rec)
    assert project.image(rec).status == "no_lesion" and not project.current_mask(rec).any()
    assert project.check(deep=True) == []
    summary = project.export_lvit(tmp_path / "exp")
    assert summary.skipped == ["vol"] and summary.n_images == 0


# ---------------------------------------------------------------------------- crash safety


def test_failed_replace_keeps_previous_commit(project, image, monkeypatch):
    first = project.commit(image, _mask(1), model_version="m1")
    before = _files(project.folder / "masks")
    first_hash = _sha(first.mask_path)

    def broken_replace(src, dst):
        raise OSError("disk unplugged")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk unplugged"):
        project.commit(image, _mask(2), model_version="m2")
    monkeypatch.undo()
    assert _files(project.folder / "masks") == before  # no final file, no temp file left
    assert [c.id for c in project.history(image)] == [first.id]
    np.testing.assert_array_equal(project.current_mask(image), _mask(1))
    assert _sha(first.mask_path) == first_hash
    assert project.check(deep=True) == [] and project.integrity_check() == ["ok"]
    second = project.commit(image, _mask(2))
    assert second.version == 2


def test_failed_write_midway_leaves_no_visible_file(project, image, monkeypatch):
    first = project.commit(image, _mask(1))
    real_fsync = os.fsync
    calls = {"n": 0}

    def failing_fsync(fd):
        calls["n"] += 1
        raise OSError("I/O error while flushing")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        project.commit(image, _mask(2))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert calls["n"] >= 1
    assert [p.name for p in (project.folder / "masks" / str(image.id)).iterdir()] == [
        first.mask_path.name
    ]
    assert len(project.history(image)) == 1


def test_crash_between_file_and_row_leaves_an_orphan(project, image, monkeypatch):
    first = project.commit(image, _mask(1))

    def boom():
        raise RuntimeError("killed before the row")

    monkeypatch.setattr(store_mod, "_now", boom)  # called for the row, after the file write
    with pytest.raises(RuntimeError, match="killed"):
        project.commit(image, _mask(2))
    monkeypatch.undo()
    files = _files(project.folder / "masks")
    assert len(files) == 2  # the durable file whose row never landed
    assert [c.id for c in project.history(image)] == [first.id]
    assert project.check() == []  # an orphan file is not a broken label
    folder = project.folder
    project.close()
    with Project.open(folder) as p:
        assert len(p.orphans_moved) == 1
        orphan = p.orphans_moved[0]
        assert orphan.is_file() and "orphans" in orphan.parts
        np.testing.assert_array_equal(np.asarray(Image.open(orphan)) > 0, _mask(2))
        assert first.mask_path.is_file()
        assert p.check(deep=True) == []
        assert p.commit(image, _mask(3)).version == 2


def test_open_does_not_wait_for_a_busy_writer(project, image):
    """Opening while another connection holds the write lock skips the sweep, no stall."""
    (project.folder / "masks" / "stray.png").write_bytes(b"x")
    with project._write(), Project.open(project.folder) as other:
        assert other.orphans_moved == []
        assert other.image(image.id).name == image.name
    with Project.open(project.folder) as other:
        assert [p.name for p in other.orphans_moved] == ["stray.png"]


def test_check_reports_missing_files(project, image, tmp_path):
    c = project.commit(image, _mask(1))
    other_src = _write_png(tmp_path / "gone.png")
    project.add_image(other_src)
    c.mask_path.unlink()
    other_src.unlink()
    problems = project.check()
    assert len(problems) == 2
    assert any(f"commit {c.id}" in m and "missing" in m for m in problems)
    assert any("'gone'" in m and "missing" in m for m in problems)


# ---------------------------------------------------------------------------- concurrency


def test_threads_share_one_project(project, tmp_path):
    recs = [project.add_image(_write_png(tmp_path / f"t{k}.png", k)) for k in range(4)]
    errors = []

    def worker(k):
        try:
            for i in range(8):
                project.commit(recs[k], _mask(100 * k + i), text=f"{k}/{i}")
                project.history(recs[(k + 1) % 4])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for k, rec in enumerate(recs):
        hist = project.history(rec)
        assert [c.version for c in hist] == list(range(1, 9))
        for i, c in enumerate(hist):
            np.testing.assert_array_equal(c.load_mask(), _mask(100 * k + i))
    assert project.check(deep=True) == []


def test_two_connections_see_each_other(project, image):
    with Project.open(project.folder) as reader:
        assert reader.history(image) == []
        project.commit(image, _mask(1))
        assert len(reader.history(image)) == 1
        rid = reader.start_round(1, 0)
        assert project.rounds()[0].id == rid


# ---------------------------------------------------------------------------- pseudo, rounds


def test_pseudo_labels(project, image):
    assert project.load_pseudo(image) is None
    prob = np.random.default_rng(0).random((H, W)).astype(np.float32)
    path = project.save_pseudo(image, prob)
    assert path.parent == project.folder / "pseudo" and path.suffix == ".npy"
    out = project.load_pseudo(image)
    assert out.dtype == np.float16 and out.shape == (H, W)
    np.testing.assert_allclose(out, prob, atol=1e-3)
    project.save_pseudo(image, np.ones((H, W)))
    assert project.load_pseudo(image).min() == 1.0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left
    with pytest.raises(ValueError) as err:
        project.save_pseudo(image, np.zeros((8, 8)))
    assert "(8, 8)" in str(err.value) and str((H, W)) in str(err.value)
    project.save_pseudo(image, np.zeros((8, 8)), any_shape=True)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        project.save_pseudo(image, np.full((H, W), 2.0))
    with pytest.raises(ValueError, match="NaN"):
        project.save_pseudo(image, np.full((H, W), np.nan))
    assert project.clear_pseudo(image) and project.load_pseudo(image) is None


def test_rounds_meta_and_checkpoint(project):
    assert project.current_checkpoint is None and project.rounds() == []
    r1 = project.start_round(n_labeled=3, n_unlabeled=7)
    project.update_round(r1, {"loss": [0.9, 0.5]})
    assert project.rounds()[0].status == "running"
    assert project.rounds()[0].metrics == {"loss": [0.9, 0.5]}
    ckpt = project.checkpoint_dir / "round1.safetensors"
    ckpt.write_bytes(b"weights")
    rec = project.finish_round(
        r1, "done", ckpt, {"loss": [0.9, 0.5], "val_dice": np.float32(0.75), "bad": float("nan")}
    )
    assert rec.status == "done" and rec.finished_at is not None and rec.checkpoint_path == ckpt
    assert rec.metrics["val_dice"] == pytest.approx(0.75) and rec.metrics["bad"] is None
    assert (rec.n_labeled, rec.n_unlabeled) == (3, 7)
    assert project.current_checkpoint == ckpt
    assert (
        project._query("SELECT value FROM meta WHERE key='current_checkpoint'")[0]["value"]
        == '"checkpoints/round1.safetensors"'
    )  # stored relative to the project
    r2 = project.start_round(4, 6)
    project.finish_round(r2, "cancelled")
    assert [r.status for r in project.rounds()] == ["done", "cancelled"]
    assert project.current_checkpoint == ckpt
    with pytest.raises(ValueError):
        project.finish_round(r2, "running")
    with pytest.raises(KeyError):
        project.finish_round(99, "done")
    project.set_meta("settings", {"threshold": 0.5, "device": "cpu"})
    assert project.get_meta("settings") == {"threshold": 0.5, "device": "cpu"}
    assert project.get_meta("missing", 3) == 3


# ---------------------------------------------------------------------------- LViT layout


def _read_split(split: Path) -> dict[str, tuple[np.ndarray, np.ndarray, str | None]]:
    from src_models.data.dataset import scan_split
    from src_models.data.io import read_image, read_mask

    return {
        r.name: (read_image(r.image_path), read_mask(r.mask_path), r.text)
        for r in scan_split(split, require_masks=True)
    }


def test_import_export_round_trip(tmp_path):
    from src_models.data.synthetic import write_dataset

    split = write_dataset(tmp_path / "Train_Folder", kind="qata", n=5, size=64, seed=3)
    original = _read_split(split)
    with Project.create(tmp_path / "p") as p:
        summary = p.import_lvit(split)
        assert len(summary.added) == 5 and summary.n_masks == 5
        assert p.counts()["corrected"] == 5
        for name, (_, mask, text) in original.items():
            (c,) = p.history(name)
            assert (c.kind, c.model_version, c.text) == ("correction", "import", text)
            np.testing.assert_array_equal(p.current_mask(name), mask)
            assert p.image(name).text == text
        again = p.import_lvit(split)  # re-running an import adds nothing
        assert again.added == [] and len(again.skipped) == 5 and len(p.labeled()) == 5
        out = p.export_lvit(tmp_path / "export")
        assert (out.n_images, out.n_masks, out.skipped) == (5, 5, [])
    exported = _read_split(tmp_path / "export")
    assert exported.keys() == original.keys()
    for name, (img, mask, text) in original.items():
        e_img, e_mask, e_text = exported[name]
        np.testing.assert_array_equal(e_img, img)
        np.testing.assert_array_equal(e_mask, mask)
        assert e_text == text
    header = (tmp_path / "export" / "text.csv").read_text().splitlines()[0]
    assert header == "Image,Description"
    # and back: a second project from the export holds the same labels and texts
    with Project.create(tmp_path / "p2") as p2:
        p2.import_lvit(tmp_path / "export")
        for name, (_, mask, text) in original.items():
            np.testing.assert_array_equal(p2.current_mask(name), mask)
            assert p2.image(name).text == text


def test_export_includes_corrections_and_unlabeled(tmp_path):
    from src_models.data.dataset import scan_split

    with Project.create(tmp_path / "p") as p:
        a = p.add_image(_write_png(tmp_path / "a.png", 1), text="Lesion left.")
        p.add_image(_write_png(tmp_path / "b.png", 2), text="Unknown.")
        p.commit(a, _mask(1))
        p.commit(a, _mask(2), text="Lesion left, corrected.")
        assert p.export_lvit(tmp_path / "only").n_images == 1
        s = p.export_lvit(tmp_path / "all", only_labeled=False)
        assert (s.n_images, s.n_masks) == (2, 1)
    recs = {r.name: r for r in scan_split(tmp_path / "all", require_masks=False)}
    assert recs["a"].text == "Lesion left, corrected." and recs["b"].text == "Unknown."
    assert recs["b"].mask_path is None
    np.testing.assert_array_equal(np.asarray(Image.open(recs["a"].mask_path)) > 0, _mask(2))


def test_import_without_masks(tmp_path):
    from src_models.data.synthetic import write_dataset

    split = write_dataset(tmp_path / "Val_Folder", kind="qata", n=3, size=64, seed=1)
    with Project.create(tmp_path / "p") as p:
        s = p.import_lvit(split, with_masks=False)
        assert s.n_masks == 0 and p.counts()["unlabeled"] == 3
        assert all(i.text for i in p.unlabeled())

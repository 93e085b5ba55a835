"""EPI update maths and the on-disk pseudo-label bank."""

import json
import os

import numpy as np
import pytest

from src_models.engine.semi.bank import PseudoLabelBank, epi_beta, epi_update


def _preds(t, names=("a", "b"), shape=(8, 8)):
    rng = np.random.default_rng(t)
    return {n: rng.random(shape).astype(np.float32) for n in names}


def test_epi_update_is_the_paper_formula():
    prev = np.full((4, 4), 0.2, np.float32)
    pred = np.full((4, 4), 0.9, np.float32)
    out = epi_update(prev, pred, beta=0.99, n=5, schedule="plain")
    np.testing.assert_allclose(out, 0.99 * 0.2 + 0.01 * 0.9, rtol=1e-6)
    # the first label is the first prediction, whatever the schedule
    for schedule in ("plain", "corrected"):
        assert epi_beta(0.99, 1, schedule) == 0.0
        np.testing.assert_array_equal(epi_update(None, pred, 0.99, 1, schedule), pred)
    with pytest.raises(ValueError):
        epi_beta(0.99, 2, "nope")
    with pytest.raises(ValueError):
        epi_beta(1.0, 2)


def test_corrected_schedule_is_adam_bias_correction_and_a_running_mean_early_on():
    beta = 0.99
    preds = [np.random.default_rng(i).random((5, 5)) for i in range(6)]
    m = np.zeros((5, 5))
    p = None
    for t, phat in enumerate(preds, start=1):
        m = beta * m + (1 - beta) * phat  # biased EMA from m_0 = 0
        p = epi_update(p, phat, beta, t, "corrected")
        np.testing.assert_allclose(p, m / (1 - beta**t), rtol=1e-5)
    # few rounds with beta = 0.99: almost exactly the mean of the predictions
    np.testing.assert_allclose(p, np.mean(preds, axis=0), atol=0.01)
    assert epi_beta(beta, 2) == pytest.approx(0.5, abs=0.01)
    assert epi_beta(beta, 10_000) == pytest.approx(beta, abs=1e-6)  # the paper's EMA in the end
    # plain keeps 97% of the first prediction after three updates
    q = None
    for t, phat in enumerate(preds[:3], start=1):
        q = epi_update(q, phat, beta, t, "plain")
    np.testing.assert_allclose(
        q, 0.99**2 * preds[0] + 0.0099 * preds[1] + 0.01 * preds[2], rtol=1e-5, atol=1e-6
    )


def test_bank_survives_a_restart(tmp_path):
    folder = tmp_path / "bank"
    bank = PseudoLabelBank(folder, beta=0.9, schedule="corrected")
    p1, p2, p3 = _preds(1), _preds(2), _preds(3)
    assert bank.update(p1) is None  # nothing to compare the first labels with
    change = bank.update(p2)
    assert bank.t == 2 and change > 0
    values = {n: bank.get(n) for n in bank.names()}

    again = PseudoLabelBank(folder)  # a new object (e.g. a new process)
    assert again.t == 2 and again.beta == 0.9 and again.schedule == "corrected"
    assert sorted(again.names()) == ["a", "b"] and again.count("a") == 2
    for n, v in values.items():
        np.testing.assert_array_equal(again.get(n), v)
    again.update(p3)
    expected = epi_update(values["a"], p3["a"], 0.9, 3, "corrected")
    np.testing.assert_allclose(again.get("a"), expected, atol=1e-3)  # float16 storage
    assert PseudoLabelBank(folder).t == 3
    assert json.loads((folder / "index.json").read_text())["t"] == 3
    # two files per image: the current map and the previous one
    assert sorted(p.name.split("-")[0] for p in folder.glob("*.npy")) == ["a", "a", "b", "b"]


def test_interrupted_update_keeps_the_previous_labels(tmp_path):
    bank = PseudoLabelBank(tmp_path / "bank", fsync=False)
    bank.update(_preds(1))
    before = bank.get("a")
    upd = bank.begin_update()
    upd.add("a", np.ones((8, 8), np.float32))  # written, never committed ("crash")
    np.save(tmp_path / "bank" / "12.npy", np.zeros(3))  # somebody else's file
    assert len(list((tmp_path / "bank").glob("*.npy"))) == 4
    reopened = PseudoLabelBank(tmp_path / "bank")
    assert reopened.t == 1
    np.testing.assert_array_equal(reopened.get("a"), before)
    assert len(list((tmp_path / "bank").glob("*.npy"))) == 3  # leftover swept
    assert (tmp_path / "bank" / "12.npy").is_file()  # foreign files are never touched
    with reopened.begin_update() as upd2:
        upd2.add("a", np.zeros((8, 8), np.float32))
        upd2.abort()  # explicit abort (e.g. cancel)
    assert reopened.t == 1
    np.testing.assert_array_equal(reopened.get("a"), before)


def test_no_lesion_gives_an_empty_pseudo_label(tmp_path):
    bank = PseudoLabelBank(tmp_path / "bank", fsync=False)
    bank.update(_preds(1))
    bank.update(_preds(2), empty=["b"])
    assert not bank.get("b").any() and bank.get("a").any()
    with bank.begin_update() as upd:
        upd.add_empty("new", (8, 8))
    assert bank.get("new").shape == (8, 8) and not bank.get("new").any()


def test_uint8_storage_and_resized_previous_label(tmp_path):
    bank = PseudoLabelBank(tmp_path / "bank", beta=0.5, schedule="plain", dtype="uint8")
    bank.update({"a": np.full((8, 8), 0.4, np.float32)})
    assert np.load(bank.path("a")).dtype == np.uint8
    assert bank.get("a") == pytest.approx(np.full((8, 8), 0.4), abs=1 / 255)
    bank.update({"a": np.full((16, 16), 0.8, np.float32)})  # the model size changed
    assert bank.get("a").shape == (16, 16)
    assert bank.get("a") == pytest.approx(np.full((16, 16), 0.6), abs=2 / 255)
    bank.prune(keep=[])
    assert len(bank) == 0 and not list((tmp_path / "bank").glob("*.npy"))


def _files(folder):
    return sorted(p.name for p in folder.glob("*.npy"))


def test_the_previous_map_is_kept_and_a_round_undone_atomically(tmp_path, monkeypatch):
    folder = tmp_path / "bank"
    bank = PseudoLabelBank(folder, beta=0.5, schedule="plain", fsync=False)
    bank.update(_preds(1))
    assert bank.previous("a") is None and bank.can_undo()  # undoing round 1 removes its labels
    first = {n: bank.get(n) for n in bank.names()}
    bank.update(_preds(2))
    second = {n: bank.get(n) for n in bank.names()}
    np.testing.assert_array_equal(bank.previous("a"), first["a"])
    bank.update(_preds(3))
    np.testing.assert_array_equal(bank.previous("a"), second["a"])
    assert len(_files(folder)) == 4  # current + previous per image; two rounds back deleted

    # a crash while the undo writes its index: the bank is as before (round 3)
    third = bank.get("a")
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith("index.json"):
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        bank.undo()
    monkeypatch.setattr(os, "replace", real_replace)
    again = PseudoLabelBank(folder)
    assert again.t == 3 and again.count("a") == 3
    np.testing.assert_array_equal(again.get("a"), third)

    assert sorted(again.undo()) == ["a", "b"]
    assert again.t == 2 and again.count("a") == 2
    np.testing.assert_array_equal(again.get("a"), second["a"])
    assert again.previous("a") is None and not again.can_undo()  # one round is kept
    with pytest.raises(ValueError, match="cannot be undone"):
        again.undo()
    reopened = PseudoLabelBank(folder)
    assert reopened.t == 2 and len(_files(folder)) == 2
    np.testing.assert_array_equal(reopened.get("b"), second["b"])
    reopened.update(_preds(4))  # continues from round 2, keeping it as the previous map
    assert reopened.t == 3
    np.testing.assert_array_equal(reopened.previous("b"), second["b"])


def test_undo_of_a_first_round_removes_its_labels(tmp_path):
    bank = PseudoLabelBank(tmp_path / "bank", fsync=False)
    bank.update(_preds(1, names=("a",)))
    bank.update(_preds(2, names=("a", "new")))
    assert bank.can_undo()
    bank.undo()
    assert bank.names() == ["a"] and bank.count("a") == 1 and bank.t == 1
    bank.undo()  # "a" was first labelled in round 1
    assert len(bank) == 0 and bank.t == 0 and not _files(tmp_path / "bank")


def test_a_bank_written_before_previous_maps_opens_unchanged(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    old = np.full((8, 8), 0.25, np.float16)
    name = "a-" + f"{__import__('zlib').crc32(b'a'):08x}" + ".t2.npy"
    np.save(folder / name, old)
    index = {
        "version": 1,
        "t": 2,
        "beta": 0.99,
        "schedule": "corrected",
        "dtype": "float16",
        "images": {"a": {"n": 2, "file": name}},
    }
    (folder / "index.json").write_text(json.dumps(index))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    bank = PseudoLabelBank(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing rewritten
    assert bank.t == 2 and bank.count("a") == 2 and bank.previous("a") is None
    np.testing.assert_array_equal(bank.get("a"), old.astype(np.float32))
    assert not bank.can_undo()  # its previous map was never kept
    bank.update({"a": np.ones((8, 8), np.float32)})
    np.testing.assert_array_equal(bank.previous("a"), old.astype(np.float32))
    bank.undo()
    assert bank.t == 2 and bank.count("a") == 2
    np.testing.assert_array_equal(bank.get("a"), old.astype(np.float32))


def test_a_reader_never_sweeps_a_writers_update_and_follows_it(tmp_path):
    folder = tmp_path / "bank"
    with pytest.raises(FileNotFoundError):
        PseudoLabelBank(folder, read_only=True)
    writer = PseudoLabelBank(folder, fsync=False)
    writer.update(_preds(1))
    reader = PseudoLabelBank(folder, read_only=True)
    upd = writer.begin_update()
    upd.add("a", np.ones((8, 8), np.float32))  # in progress: not in the index yet
    PseudoLabelBank(folder, read_only=True)  # a second reader opens meanwhile
    upd.add("b", np.ones((8, 8), np.float32))
    upd.commit()
    assert writer.path("a").is_file() and writer.path("b").is_file()  # the reader swept nothing
    writer.update(_preds(3))  # the reader's index names files that are gone now
    np.testing.assert_array_equal(reader.get("a"), writer.get("a"))
    assert reader.t == 3
    for write in (reader.begin_update, reader.undo, lambda: reader.remove(["a"])):
        with pytest.raises(PermissionError):
            write()

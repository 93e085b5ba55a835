"""EPI update maths and the on-disk pseudo-label bank."""

import json

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
    # one file per image
    assert sorted(p.name.split("-")[0] for p in folder.glob("*.npy")) == ["a", "b"]


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

"""Semi-supervised rounds (EPI + LV) on tiny synthetic data with the tiny model."""

import numpy as np
import pytest
import torch

from src_models.data import SegmentationDataset, scan_split
from src_models.data import transforms as T
from src_models.data.synthetic import write_dataset
from src_models.engine import BatchEnd, TrainConfig, TrainingDone
from src_models.engine.semi import (
    PseudoLabelBank,
    PseudoLabelProgress,
    RoundEnd,
    RoundStart,
    SemiConfig,
    SemiDone,
    SemiTrainer,
    format_semi_event,
    sigmoid_rampup,
    split_labeled,
)
from src_models.engine.semi.data import _RoundDataset
from src_models.models import create_model

SIZE = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("semi")
    train = write_dataset(root / "train", kind="qata", n=10, size=SIZE, seed=0)
    val = write_dataset(root / "val", kind="qata", n=4, size=SIZE, seed=1)
    return scan_split(train), SegmentationDataset(val, SIZE)


def _train_set(data, fraction=0.3, augment=True):
    labeled, unlabeled = split_labeled(data[0], fraction, seed=0)
    return SegmentationDataset(labeled + unlabeled, SIZE, augment=augment, seed=0)


def _semi(tmp_path, **kw):
    base = dict(
        rounds=2,
        round0_epochs=2,
        round_epochs=1,
        ramp_epochs=0.5,
        margin=0.0,
        bank_fsync=False,
        pseudo_dir=str(tmp_path / "bank"),
    )
    base.update(kw)
    return SemiConfig(**base)


def _model():
    torch.manual_seed(0)
    return create_model("lvit_tiny")


def test_split_labeled_is_seeded_and_drops_masks():
    from src_models.data.dataset import SegmentationRecord

    recs = [SegmentationRecord(f"r{i}", f"img{i}.png", f"m{i}.png", "t") for i in range(20)]
    lab, unl = split_labeled(recs, 0.25, seed=3)
    assert len(lab) == 5 and len(unl) == 15 and all(r.mask_path is None for r in unl)
    assert [r.name for r in split_labeled(recs, 0.25, seed=3)[0]] == [r.name for r in lab]
    assert [r.name for r in split_labeled(recs, 0.25, seed=4)[0]] != [r.name for r in lab]
    assert recs[0].mask_path == "m0.png"  # inputs untouched
    assert sigmoid_rampup(0, 4) == pytest.approx(np.exp(-5)) and sigmoid_rampup(9, 4) == 1.0


def test_semi_run_uses_the_unlabeled_images(data, fake_encoder, tmp_path):
    train_set = _train_set(data)
    unlabeled = [n for n, h in zip(train_set.names, train_set.has_mask, strict=True) if not h]
    no_lesion = unlabeled[-1]
    cfg = TrainConfig(epochs=2, lr=3e-3, device="cpu", out=str(tmp_path / "run" / "m.safetensors"))
    semi = SemiTrainer(
        _model(), train_set, data[1], fake_encoder, cfg, _semi(tmp_path), no_lesion=[no_lesion]
    )
    snapshots = {}
    events = []
    for ev in semi.fit():
        events.append(ev)
        if isinstance(ev, RoundStart) and ev.round >= 1:
            snapshots[ev.round] = {n: semi.bank.get(n) for n in unlabeled}
    starts = [e for e in events if isinstance(e, RoundStart)]
    ends = [e for e in events if isinstance(e, RoundEnd)]
    assert [e.round for e in starts] == [0, 1, 2] and [e.round for e in ends] == [0, 1, 2]
    assert starts[1].n_unlabeled == len(unlabeled) == 7 and starts[0].n_unlabeled == 0
    assert starts[1].n_lv == len(unlabeled) - 1  # every unlabeled image but the no-lesion one
    assert any(isinstance(e, PseudoLabelProgress) for e in events)
    # pseudo labels exist for every unlabeled image and change between rounds
    changed = [float(np.abs(snapshots[2][n] - snapshots[1][n]).mean()) for n in unlabeled[:-1]]
    assert min(changed) > 0 and starts[2].pseudo_change > 0 and starts[1].pseudo_change is None
    assert not snapshots[2][no_lesion].any() and not snapshots[1][no_lesion].any()
    # the unlabeled and LV terms are trained
    for end in ends[1:]:
        assert end.losses["unl_dice"] > 0 and end.losses["unl_bce"] > 0 and end.losses["lv"] > 0
    assert "unl_dice" not in ends[0].losses
    batch_terms = [e.losses for e in events if isinstance(e, BatchEnd) and "unl_bce" in e.losses]
    assert batch_terms and any(t["unl_bce"] > 0 for t in batch_terms)
    done = events[-1]
    assert isinstance(done, SemiDone) and not done.cancelled and done.rounds_run == 3
    assert done.checkpoint is not None and done.best_dice is not None
    assert [h["round"] for h in done.history] == [0, 1, 2]
    assert PseudoLabelBank(tmp_path / "bank").t == 2
    assert all(isinstance(format_semi_event(e), str) for e in events)


def test_cancel_stops_between_events_and_keeps_the_bank_consistent(data, fake_encoder, tmp_path):
    train_set = _train_set(data)
    cfg = TrainConfig(epochs=2, device="cpu")
    # cancel in the middle of round 1's training
    semi = SemiTrainer(_model(), train_set, data[1], fake_encoder, cfg, _semi(tmp_path))
    events = []
    for ev in semi.fit():
        events.append(ev)
        if isinstance(ev, BatchEnd) and any(
            isinstance(e, RoundStart) and e.round == 1 for e in events
        ):
            semi.cancel()
    tail = events[-3:]
    assert isinstance(tail[-1], SemiDone) and tail[-1].cancelled
    assert isinstance(tail[-2], RoundEnd) and tail[-2].cancelled and tail[-2].round == 1
    assert isinstance(tail[-3], TrainingDone) and tail[-3].cancelled
    assert not any(isinstance(e, RoundStart) and e.round == 2 for e in events)

    # cancel while predicting pseudo labels: the bank keeps its previous round
    semi = SemiTrainer(
        _model(), train_set, data[1], fake_encoder, cfg,
        _semi(tmp_path / "b2", predict_batch_size=2),
    )  # fmt: skip
    events = []
    for ev in semi.fit():
        events.append(ev)
        if isinstance(ev, PseudoLabelProgress):
            semi.cancel()
    assert isinstance(events[-1], SemiDone) and events[-1].cancelled
    assert events[-1].rounds_run == 1
    assert sum(isinstance(e, PseudoLabelProgress) for e in events) == 1
    bank = PseudoLabelBank(tmp_path / "b2" / "bank")
    assert bank.t == 0 and len(bank) == 0 and not list(bank.folder.glob("*.npy"))


def test_resume_continues_with_the_next_round(data, fake_encoder, tmp_path):
    train_set = _train_set(data)
    out = tmp_path / "run" / "m.safetensors"
    cfg = TrainConfig(epochs=1, device="cpu", out=str(out))
    semi_cfg = _semi(tmp_path, round0_epochs=1)
    semi = SemiTrainer(_model(), train_set, data[1], fake_encoder, cfg, semi_cfg)
    for ev in semi.fit():
        if isinstance(ev, RoundEnd) and ev.round == 1:
            semi.cancel()  # between rounds: round 1 is complete
    assert PseudoLabelBank(tmp_path / "bank").t == 1
    again = SemiTrainer(_model(), train_set, data[1], fake_encoder, cfg, semi_cfg, resume=True)
    events = list(again.fit())
    starts = [e for e in events if isinstance(e, RoundStart)]
    assert [e.round for e in starts] == [2] and starts[0].pseudo_t == 2
    assert [h["round"] for h in events[-1].history] == [0, 1, 2]
    assert not events[-1].cancelled


def test_pseudo_labels_are_augmented_with_their_image(data, tmp_path):
    base = _train_set(data, fraction=0.3, augment=True)
    unl = [i for i, h in enumerate(base.has_mask) if not h]
    bank = PseudoLabelBank(tmp_path / "bank", fsync=False)
    # pseudo label := the true mask (read from the record) and reference := same mask
    truth = SegmentationDataset(data[0], SIZE)
    by_name = {n: truth.mask_bool(i) for i, n in enumerate(truth.names)}
    bank.update({base.names[i]: by_name[base.names[i]].astype(np.float32) for i in unl})
    refs = {i: by_name[base.names[i]] for i in unl}
    ds = _RoundDataset(base, [], unl, bank, refs)
    for epoch in range(4):
        ds.set_epoch(epoch)
        for k, bi in enumerate(unl):
            item = ds[k]
            rng = np.random.default_rng([base.seed, epoch, bi, 0])
            img = base.image_uint8(bi).astype(np.float32) / 255
            want_img, want_mask = T.augment(img, by_name[base.names[bi]], rng, spatial_text=True)
            got = item["mask"][0].numpy() > 0.5
            inter = (got & want_mask).sum()
            assert 2 * inter / (got.sum() + want_mask.sum()) > 0.9
            assert np.array_equal(item["lv_ref"][0].numpy() > 0.5, got)
            np.testing.assert_allclose(
                item["image"].numpy().transpose(1, 2, 0), want_img, atol=1e-5
            )
            assert item["has_mask"] is False and item["lv_valid"] is True


def test_labeled_plus_unlabeled_sets_with_stable_bank_keys(data, fake_encoder, tmp_path):
    from src_models.engine.semi import LabeledUnlabeledSet

    labeled, unlabeled = split_labeled(data[0], 0.3, seed=0)
    lab = SegmentationDataset(labeled, SIZE, augment=True)
    unl = SegmentationDataset(unlabeled, SIZE)
    keys = [f"image{i}" for i in range(len(unl))]
    base = LabeledUnlabeledSet(lab, unl, keys)
    assert len(base) == len(data[0]) and base.has_mask.sum() == len(lab)
    np.testing.assert_array_equal(base.image_uint8(len(lab)), unl.image_uint8(0))
    cfg = TrainConfig(epochs=1, device="cpu")
    templates = data[0][0].image_path.parent.parent  # an LViT folder of (text, mask) pairs
    semi = SemiTrainer(
        _model(),
        base,
        data[1],
        fake_encoder,
        cfg,
        _semi(tmp_path, rounds=1, round0_epochs=1),
        templates=templates,
    )
    events = list(semi.fit())
    done = events[-1]
    assert done.rounds_run == 2 and sorted(semi.bank.names()) == sorted(keys)
    start = next(e for e in events if isinstance(e, RoundStart) and e.round == 1)
    assert start.n_lv == len(unl)


def test_cli_train_with_a_labeled_fraction_and_epi(data, tmp_path, capsys):
    from src_models.cli import main

    train = data[0][0].image_path.parent.parent
    val = data[1].root
    out = tmp_path / "cli" / "m.safetensors"
    common = ["train", str(train), "--val", str(val), "--model", "lvit_tiny", "--epochs", "1"]
    common += ["--device", "cpu", "--labeled-fraction", "0.3"]
    assert main([*common, "--out", str(tmp_path / "sup.safetensors")]) == 0
    assert "3 labeled images (7 left out)" in capsys.readouterr().out
    args = [*common, "--semi", "epi", "--rounds", "1", "--round-epochs", "1", "--beta", "0.9"]
    assert main([*args, "--lv-weight", "0.1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 labeled images, 7 without masks" in text and "round 1/1" in text
    assert out.is_file()
    bank = PseudoLabelBank(tmp_path / "cli" / "m.pseudo")
    assert bank.t == 1 and len(bank) == 7 and bank.beta == 0.9

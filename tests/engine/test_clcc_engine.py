"""CLCC in the engine: features beside logits, the schedule, tiny runs with and without EPI."""

import math

import pytest
import torch

from src_models.data import SegmentationDataset, scan_split
from src_models.data.synthetic import write_dataset
from src_models.engine import EpochEnd, TrainConfig
from src_models.engine.clcc import CLCCConfig, CLCCTrainer
from src_models.engine.semi import RoundEnd, SemiConfig, SemiTrainer, split_labeled
from src_models.models import create_model
from src_models.models.features import logits_and_features

SIZE = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clcc")
    train = write_dataset(root / "train", kind="qata", n=6, size=SIZE, seed=0)
    val = write_dataset(root / "val", kind="qata", n=2, size=SIZE, seed=1)
    labeled, unlabeled = split_labeled(scan_split(train), 0.34, seed=0)
    train_set = SegmentationDataset(labeled + unlabeled, SIZE, augment=True, seed=0)
    return train_set, SegmentationDataset(val, SIZE)


class _Wrapper(torch.nn.Module):
    """Like DDP: holds the model as ``module`` and has no forward_features."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, image, text=None, text_mask=None):
        return self.module(image, text=text, text_mask=text_mask)


@pytest.mark.parametrize("name", ["lvit_tiny", "unet_tiny"])
def test_forward_features_keeps_logits(name, fake_encoder):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    feats = fake_encoder.encode(["left lung", "right upper lung"])
    with torch.no_grad():
        plain = model(x, text=feats.tokens, text_mask=feats.mask)
        logits, f = model.forward_features(x, text=feats.tokens, text_mask=feats.mask)
        # the generic hook path (models without forward_features) gives the same
        hooked, f2 = logits_and_features(_Wrapper(model), x, feats.tokens, feats.mask)
    assert torch.equal(plain, logits) and torch.equal(plain, hooked)
    assert f.shape == (2, model.config.base_width, SIZE, SIZE) and torch.equal(f, f2)


def test_features_of_models_without_forward_features(fake_encoder):
    # RecLMIS has no forward_features: its decoder.head input is recorded by a hook
    torch.manual_seed(0)
    model = create_model("reclmis_tiny").eval()
    x = torch.rand(2, 3, model.img_size, model.img_size)
    feats = fake_encoder.encode(["left lung", "lower right lung"])
    with torch.no_grad():
        plain = model(x, text=feats.tokens, text_mask=feats.mask)
        logits, f = logits_and_features(model, x, feats.tokens, feats.mask)
    assert torch.equal(plain, logits) and f.shape[0] == 2 and f.shape[-1] == model.img_size


def test_clcc_without_epi_logs_finite_nonzero_terms(data, fake_encoder):
    train_set, val_set = data
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=3, batch_size=3, device="cpu", out=None, lr=1e-3)
    trainer = CLCCTrainer(
        create_model("lvit_tiny"),
        train_set,
        val_set,
        fake_encoder,
        cfg,
        clcc=CLCCConfig(grid=2, images=1, switch=0.5),
    )
    epochs = []
    for event in trainer.fit():
        if isinstance(event, EpochEnd):
            epochs.append(event.losses)
    assert len(epochs) == 3
    # epoch 1 (progress < 0.5): contrast only; epoch 3: consistency only
    assert epochs[0]["clcc_contrast"] > 0 and epochs[0]["clcc_consistency"] == 0
    assert epochs[2]["clcc_consistency"] > 0 and epochs[2]["clcc_contrast"] == 0
    assert all(math.isfinite(v) for e in epochs for v in e.values())


def test_clcc_with_epi_rounds(data, fake_encoder, tmp_path):
    train_set, val_set = data
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, batch_size=3, device="cpu", out=None)
    semi = SemiConfig(
        rounds=2,
        round0_epochs=1,
        round_epochs=1,
        ramp_epochs=0.5,
        lv_weight=0.0,
        bank_fsync=False,
        pseudo_dir=str(tmp_path / "bank"),
        clcc={"grid": 2, "images": 1},
    )
    assert isinstance(semi.clcc, CLCCConfig)
    ends = [
        e
        for e in SemiTrainer(
            create_model("lvit_tiny"), train_set, val_set, fake_encoder, cfg, semi
        ).fit()
        if isinstance(e, RoundEnd)
    ]
    assert [e.round for e in ends] == [0, 1, 2]
    # 3 epochs in all, switch at 1/3: round 0 contrasts, rounds 1 and 2 are consistent
    assert ends[0].losses["clcc_contrast"] > 0 and ends[0].losses["clcc_consistency"] == 0
    assert ends[2].losses["clcc_consistency"] > 0 and ends[2].losses["clcc_contrast"] == 0
    assert all(math.isfinite(v) for e in ends for v in e.losses.values())


def test_clcc_config_validates():
    with pytest.raises(ValueError):
        CLCCConfig(grid=1)
    with pytest.raises(ValueError):
        CLCCConfig(switch=2.0)
    assert CLCCConfig.coerce(None) is None


def test_partly_labeled_epochs_repeat_the_labeled_images(data, fake_encoder):
    from src_models.engine.clcc import balanced_index

    assert balanced_index([True, False, False, False, False]) == [0, 0, 0, 0, 1, 2, 3, 4]
    assert balanced_index([True, True, False]) == [0, 1, 2]
    assert balanced_index([False, False]) == [0, 1]
    train_set, val_set = data  # 2 labeled of 6
    cfg = TrainConfig(epochs=1, batch_size=1, device="cpu", out=None, seed=3)
    trainer = CLCCTrainer(create_model("lvit_tiny"), train_set, val_set, fake_encoder, cfg)
    loader, sampler = trainer.build_train_loader()
    sampler.set_epoch(0)
    drawn = list(sampler)
    assert len(loader) == 8 and sorted(drawn) == sorted(balanced_index(train_set.has_mask))
    labeled = sum(bool(train_set.has_mask[i]) for i in drawn)
    assert labeled == 4  # half of the epoch, not a third
    sampler.set_epoch(1)
    assert list(sampler) != drawn  # reshuffled per epoch, from the seed

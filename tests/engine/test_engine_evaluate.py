import numpy as np
import pytest
import torch
from torch import nn

from src_models.data import SegmentationDataset, read_mask
from src_models.data.synthetic import write_dataset
from src_models.engine import TrainConfig, Trainer, evaluate, evaluate_native
from src_models.models import create_model


class Constant(nn.Module):
    uses_text = False
    img_size = 64
    in_chans = 3

    def __init__(self, logit):
        super().__init__()
        self.logit = logit

    def forward(self, image, text=None, text_mask=None):
        return torch.full_like(image[:, :1], self.logit)


@pytest.fixture(scope="module")
def split96(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("s") / "val", kind="qata", n=5, size=96, seed=3)


def _all_foreground_dice(masks):
    return float(np.mean([2 * m.sum() / (m.sum() + m.size) for m in masks]))


def test_evaluate_scores_every_image_at_the_model_size(split96):
    data = SegmentationDataset(split96, img_size=64)
    res = evaluate(Constant(10.0), data, device="cpu", batch_size=2)
    assert res["n"] == 5 and res["protocol"] == "model_size" and res["n_unlabelled"] == 0
    masks = [data.mask_bool(i) for i in range(5)]
    assert res["dice"] == pytest.approx(_all_foreground_dice(masks))
    assert [r["name"] for r in res["per_image"]] == data.names
    bg = evaluate(Constant(-10.0), data, device="cpu")
    assert bg["dice"] == 0.0 and bg["iou"] == 0.0  # every synthetic image has a lesion


def test_evaluate_native_compares_with_the_mask_files(split96):
    data = SegmentationDataset(split96, img_size=64)
    res = evaluate_native(Constant(10.0), data, device="cpu")
    assert res["protocol"] == "native" and res["n"] == 5
    files = [read_mask(r.mask_path) for r in data.records]
    assert files[0].shape == (96, 96)
    assert res["dice"] == pytest.approx(_all_foreground_dice(files))
    with pytest.raises(ValueError, match="without augmentation"):
        evaluate_native(Constant(10.0), SegmentationDataset(split96, 64, augment=True))


def test_text_model_evaluation_uses_the_encoder(split96, fake_encoder):
    data = SegmentationDataset(split96, img_size=64)
    torch.manual_seed(0)
    model = create_model("lvit_tiny").train()
    res = evaluate(model, data, fake_encoder, device="cpu")
    assert res["n"] == 5 and 0.0 <= res["dice"] <= 1.0
    assert fake_encoder.encoded == len(set(data.texts))
    assert model.training  # the mode is restored
    with pytest.raises(ValueError, match="uses text"):
        evaluate(model, data, device="cpu")
    # without text, the text model runs with text=None
    assert evaluate(model, data, device="cpu", use_text=False)["n"] == 5


def test_images_without_masks_are_skipped_in_evaluation_and_refused_in_training(tmp_path):
    split = write_dataset(tmp_path / "s", kind="qata", n=4, size=64, seed=0)
    missing = sorted((split / "labelcol").iterdir())[1]
    missing.unlink()
    data = SegmentationDataset(split, img_size=64, require_masks=False)
    res = evaluate(Constant(10.0), data, device="cpu")
    assert res["n"] == 3 and res["n_unlabelled"] == 1
    assert data.names[1] not in [r["name"] for r in res["per_image"]]
    cfg = TrainConfig(epochs=1, device="cpu", use_text=False)
    with pytest.raises(ValueError, match=f"1 items have no mask, first '{data.names[1]}'"):
        Trainer(create_model("unet_tiny"), data, config=cfg).run()

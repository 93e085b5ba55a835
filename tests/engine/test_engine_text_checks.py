import pytest
import torch

from src_models.engine import TrainConfig, Trainer
from src_models.engine.evaluate import check_texts, resolve_use_text
from src_models.models import create_model


class Items(torch.utils.data.Dataset):
    def __init__(self, texts):
        self._texts = list(texts)
        self.names = [f"case{i}.png" for i in range(len(texts))]

    def __len__(self):
        return len(self._texts)

    def __getitem__(self, i):
        return {
            "image": torch.rand(3, 64, 64),
            "mask": torch.zeros(1, 64, 64),
            "text": self._texts[i],
            "name": self.names[i],
            "index": i,
        }

    @property
    def texts(self):
        return self._texts


def test_empty_text_is_named_at_fit_start(fake_encoder):
    data = Items(["left lung", "  ", "right lung"])
    with pytest.raises(ValueError, match=r"'case1.png' \(item 1\) has no text"):
        check_texts(data)
    trainer = Trainer(create_model("lvit_tiny"), data, None, fake_encoder, TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="case1.png"):
        next(trainer.fit())
    # a text-free run does not care
    cfg = TrainConfig(epochs=1, use_text=False, device="cpu")
    assert Trainer(create_model("unet_tiny"), data, config=cfg).run().epochs_run == 1


def test_resolve_use_text(fake_encoder):
    lvit, unet = create_model("lvit_tiny"), create_model("unet_tiny")
    assert resolve_use_text(lvit, fake_encoder, None) is True
    assert resolve_use_text(lvit, fake_encoder, False) is False
    assert resolve_use_text(unet, fake_encoder, True) is False  # text-free models never get text
    assert resolve_use_text(unet, None, None) is False
    with pytest.raises(ValueError, match="uses text"):
        resolve_use_text(lvit, None, True)


def test_config_validation():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="threshold"):
        TrainConfig(threshold=1.5)

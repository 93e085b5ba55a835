import numpy as np
import pytest
import torch

from src_models.device import resolve_device
from src_models.inference import Predictor
from src_models.models import create_model


@pytest.fixture(scope="module")
def predictor(text_encoder):
    torch.manual_seed(0)
    model = create_model("lvit_tiny", text_dim=text_encoder.dim)
    return Predictor(model, device="cpu", text_encoder=text_encoder)


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(0).integers(0, 4096, (300, 200)).astype(np.uint16),
        np.random.default_rng(1).integers(0, 255, (50, 70, 3)).astype(np.uint8),
        np.random.default_rng(2).random((64, 64, 4)).astype(np.float32),
        np.random.default_rng(3).normal(-500, 300, (128, 96)).astype(np.float64),
    ],
    ids=["uint16-gray", "uint8-rgb", "float-rgba", "hu-float64"],
)
def test_prediction_comes_back_at_the_image_size(predictor, image):
    result = predictor.predict(image, "lower left lung")
    assert result.prob.shape == image.shape[:2] and result.mask.shape == image.shape[:2]
    assert result.prob.dtype == np.float32
    assert result.prob.min() >= 0.0 and result.prob.max() <= 1.0
    assert np.array_equal(result.mask, result.prob >= 0.5)
    assert np.array_equal(result.recut(0.2), result.prob >= 0.2)


def test_text_changes_the_prediction(predictor):
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    left = predictor.predict_prob(image, "Lesion in the upper left lung.")
    right = predictor.predict_prob(image, "Lesion in the lower right lung.")
    assert not np.allclose(left, right)


def test_tiled_prediction_covers_a_large_image(text_encoder):
    torch.manual_seed(0)
    model = create_model("lvit_tiny", text_dim=text_encoder.dim)
    tiled = Predictor(model, device="cpu", text_encoder=text_encoder, tile=True, tile_min_side=100)
    image = np.random.default_rng(0).random((150, 230)).astype(np.float32)
    prob = tiled.predict_prob(image, "nuclei")
    assert prob.shape == (150, 230) and np.isfinite(prob).all()


@pytest.mark.parametrize(
    ("image", "text", "match"),
    [
        (np.zeros((64, 64)), "", "description"),
        (np.zeros((4, 64, 64)), "lung", "slice"),
        (np.full((64, 64), np.nan), "lung", "NaN"),
    ],
)
def test_bad_input_is_a_clear_error(predictor, image, text, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(image, text)


def test_text_encoder_must_match_the_model(text_encoder):
    model = create_model("lvit_tiny", text_dim=768)
    with pytest.raises(ValueError, match="384-d"):
        Predictor(model, device="cpu", text_encoder=text_encoder)


def test_device_policy():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")

import numpy as np
import pytest
import torch

from src_models.device import resolve_device
from src_models.inference import Predictor
from src_models.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


# --------------------------------------------------------------------------- feature reuse


@pytest.fixture(scope="module")
def reclmis(text_encoder):
    torch.manual_seed(0)
    model = create_model("reclmis_tiny", text_dim=text_encoder.dim)
    # BatchNorm statistics of one batch: a fresh model's output is nearly constant (running
    # stats at their initial values); with them its masks and its response to text are not.
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.rand(4, 3, 64, 64), torch.randn(4, 10, text_encoder.dim))
    for m in norms:
        m.momentum = 0.1
    model.auxiliary_losses()
    return model.eval()


def test_cached_second_prompt_equals_an_uncached_run(reclmis, text_encoder):
    cached = Predictor(reclmis, device="cpu", text_encoder=text_encoder)
    plain = Predictor(reclmis, device="cpu", text_encoder=text_encoder, feature_cache_size=0)
    assert cached.reuses_features and not plain.reuses_features
    image = np.random.default_rng(5).random((90, 70)).astype(np.float32)
    first = cached.predict(image, "Lesion in the upper left lung.")
    second = cached.predict(image, "Lesion in the lower right lung.")
    info = cached.feature_cache.info()
    assert info["misses"] == 1 and info["hits"] == 1 and info["size"] == 1
    for got, text in (
        (first, "Lesion in the upper left lung."),
        (second, "Lesion in the lower right lung."),
    ):
        ref = plain.predict(image, text)  # the whole model, no cache
        np.testing.assert_allclose(got.prob, ref.prob, rtol=0, atol=1e-5)
        assert np.array_equal(got.mask, ref.mask)
    assert not np.array_equal(first.mask, second.mask)  # the new text did change the mask


def test_feature_cache_is_keyed_by_image_and_weights(reclmis, text_encoder):
    import copy

    model = copy.deepcopy(reclmis)
    predictor = Predictor(model, device="cpu", text_encoder=text_encoder, feature_cache_size=2)
    rng = np.random.default_rng(6)
    a, b, c = (rng.random((64, 64)).astype(np.float32) for _ in range(3))
    before = predictor.predict_prob(a, "nuclei")
    predictor.predict_prob(a.copy(), "dense nuclei")  # same pixels, another array: a hit
    assert predictor.feature_cache.info()["hits"] == 1
    predictor.predict_prob(b, "nuclei")
    predictor.predict_prob(c, "nuclei")  # LRU: a is evicted
    assert len(predictor.feature_cache) == 2
    predictor.predict_prob(a, "nuclei")
    assert predictor.feature_cache.info()["misses"] == 4
    # New weights (loaded in place) must not reuse features of the old ones.
    with torch.no_grad():
        model.encoder.inc[0].weight.mul_(1.5)
    after = predictor.predict_prob(a, "nuclei")
    assert predictor.feature_cache.info()["misses"] == 5
    assert not np.allclose(before, after)
    state = {k: v.clone() for k, v in reclmis.state_dict().items()}
    model.load_state_dict(state)
    np.testing.assert_allclose(predictor.predict_prob(a, "nuclei"), before, atol=1e-6)
    predictor.clear_cache()
    assert len(predictor.feature_cache) == 0


def test_models_without_reuse_run_whole(predictor):
    assert not predictor.reuses_features


def test_tiled_prediction_reuses_the_tiles_features(reclmis, text_encoder):
    tiled = Predictor(
        reclmis, device="cpu", text_encoder=text_encoder, tile=True, tile_min_side=100
    )
    plain = Predictor(
        reclmis,
        device="cpu",
        text_encoder=text_encoder,
        tile=True,
        tile_min_side=100,
        feature_cache_size=0,
    )
    image = np.random.default_rng(7).random((120, 100)).astype(np.float32)
    tiled.predict_prob(image, "nuclei")
    second = tiled.predict_prob(image, "dense nuclei")
    assert tiled.feature_cache.info()["hits"] >= 1
    np.testing.assert_allclose(second, plain.predict_prob(image, "dense nuclei"), atol=1e-5)


def test_text_encoded_ahead_is_what_the_prompt_uses(predictor):
    encoder = predictor.text_encoder
    text = "Lesions in the middle upper right lung, typed ahead."
    assert not encoder.is_cached(text)
    assert predictor.encode_text_ahead(text) and encoder.is_cached(text)
    size = encoder.cache_info["size"]
    predictor.predict(np.zeros((40, 40), np.float32), text)
    assert encoder.cache_info["size"] == size  # the prompt found it: nothing new was encoded
    assert not predictor.encode_text_ahead("   ")  # not usable yet: False, no error
    no_text = Predictor(create_model("unet_tiny"), device="cpu")
    assert not no_text.encode_text_ahead(text)

"""The Predictor's CT window: what the model receives, per call and from a checkpoint, and
whole volumes with their slices batched (predict_slices)."""

import numpy as np
import pytest
import torch

from src_models.data.windows import PRESETS, apply_window
from src_models.engine.checkpoint import save_checkpoint
from src_models.inference import Predictor
from src_models.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def seen():
    """A tiny text-free model and the input batches it receives (a forward pre-hook)."""
    torch.manual_seed(0)
    model = create_model("unet_tiny")
    inputs: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach().clone()))
    return model, inputs


def _hu(shape=(64, 64), seed=0) -> np.ndarray:
    """A CT-like slice in HU: air, lung, soft tissue and bone."""
    rng = np.random.default_rng(seed)
    return rng.choice([-1000, -850, 40, 700], size=shape).astype(np.int16)


def test_the_model_sees_the_windowed_values(seen):
    model, inputs = seen
    predictor = Predictor(model, device="cpu")
    hu = _hu()  # 64 x 64: the model size, so no resize blurs the comparison
    predictor.predict_prob(hu, window="lung")
    expected = apply_window(hu, PRESETS["lung"])
    got = inputs[-1]
    assert got.shape == (1, 3, 64, 64)
    for c in range(3):
        np.testing.assert_allclose(got[0, c].numpy(), expected, atol=1e-6)
    # air -1000, lung -850, soft tissue 40, bone 700 HU in the lung window (-1350..150 HU)
    assert {round(float(v), 4) for v in np.unique(got.numpy())} == {0.2333, 0.3333, 0.9267, 1.0}
    # without a window: the slice's own min-max (bone white, air black)
    predictor.predict_prob(hu)
    np.testing.assert_allclose(inputs[-1][0, 0].numpy(), (hu + 1000) / 1700.0, atol=1e-6)
    # an 8-bit image is a display image: a HU window does not apply to it
    gray = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    predictor.predict_prob(gray, window="lung")
    np.testing.assert_allclose(inputs[-1][0, 0].numpy(), gray / 255.0, atol=1e-6)


def test_the_window_of_a_checkpoint_is_the_default_and_a_call_overrides_it(seen, tmp_path):
    model, inputs = seen
    path = save_checkpoint(tmp_path / "ct.safetensors", model, {"window": [40.0, 400.0]})
    predictor = Predictor(path, device="cpu")
    assert predictor.window == PRESETS["mediastinum"]
    predictor.model.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].clone()))
    hu = _hu(seed=1)
    predictor.predict(hu)
    np.testing.assert_allclose(inputs[-1][0, 0].numpy(), apply_window(hu, (40, 400)), atol=1e-6)
    predictor.predict(hu, window=(-600, 1500))
    np.testing.assert_allclose(inputs[-1][0, 0].numpy(), apply_window(hu, "lung"), atol=1e-6)
    assert Predictor(path, device="cpu", window="bone").window == PRESETS["bone"]
    with pytest.raises(ValueError, match="window"):
        predictor.predict(hu, window="liver")


def test_volume_slices_are_batched_on_one_scale(seen):
    model, inputs = seen
    predictor = Predictor(model, device="cpu")
    volume = np.stack([_hu(seed=s) for s in range(5)])
    volume[2] = 40  # a flat slice: min-max per slice would make it black
    steps = list(predictor.predict_slices(volume, window="lung", batch_size=2))
    assert [start for start, _ in steps] == [0, 2, 4]
    assert [p.shape for _, p in steps] == [(2, 64, 64), (2, 64, 64), (1, 64, 64)]
    assert [tuple(x.shape) for x in inputs] == [(2, 3, 64, 64), (2, 3, 64, 64), (1, 3, 64, 64)]
    np.testing.assert_allclose(inputs[1][0, 0].numpy(), apply_window(volume[2], "lung"), atol=1e-6)
    probs = np.concatenate([p for _, p in steps])
    one_by_one = np.stack([predictor.predict_prob(v, window="lung") for v in volume])
    np.testing.assert_allclose(probs, one_by_one, atol=1e-5)
    # without a window: the whole volume's range for every slice (as the training data)
    inputs.clear()
    list(predictor.predict_slices(volume, batch_size=8))
    lo, hi = float(volume.min()), float(volume.max())
    np.testing.assert_allclose(inputs[0][2, 0].numpy(), (40 - lo) / (hi - lo), atol=1e-6)


def test_volume_slices_come_back_at_the_slice_size_and_refuse_a_2d_image(seen):
    model, _ = seen
    predictor = Predictor(model, device="cpu")
    volume = np.random.default_rng(0).normal(0, 300, (3, 40, 90)).astype(np.float32)
    ((start, probs),) = list(predictor.predict_slices(volume))
    assert start == 0 and probs.shape == (3, 40, 90) and probs.dtype == np.float32
    with pytest.raises(ValueError, match="volume"):
        next(predictor.predict_slices(volume[0]))


def test_batch_prediction_follows_the_window(seen, tmp_path):
    import tifffile

    from src_models.batch import plan_batch, run_batch
    from src_models.data.io import read_mask

    model, inputs = seen
    predictor = Predictor(model, device="cpu", threshold=0.5)
    hu = _hu(seed=3)
    tifffile.imwrite(tmp_path / "slice.tif", hu)
    items = plan_batch([tmp_path / "slice.tif"], tmp_path / "out")
    run_batch(predictor, items, window="lung")
    np.testing.assert_allclose(inputs[-1][0, 0].numpy(), apply_window(hu, "lung"), atol=1e-6)
    mask = read_mask(tmp_path / "out" / "slice.tif")
    assert np.array_equal(mask, predictor.predict(hu, window="lung").mask)

"""Working resolution, patch sampling and sliding-window reassembly (small synthetic arrays)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from src_models.data import collate
from src_models.data.patches import (
    GridPatchDataset,
    PatchDataset,
    WorkingResolution,
    choose_resolution,
    object_diameters,
    rescale_mask,
    steps_for,
)
from src_models.tiling import blend_window, predict_tiled, tile_grid, tile_starts


def _identity(tiles: torch.Tensor) -> torch.Tensor:
    return tiles.clone()


def _disc_mask(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    m = np.zeros(shape, bool)
    for cy, cx in centres:
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    return m


# ----------------------------------------------------------------------- WorkingResolution


def test_working_resolution_round_trips_through_json():
    res = WorkingResolution("patches", 128, 2.0)
    back = WorkingResolution.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back == res
    assert WorkingResolution.from_dict({**res.to_dict(), "future": 1}) == res
    assert res.working_shape((1000, 750)) == (500, 375)
    assert WorkingResolution.whole(64).working_shape((1000, 750)) == (64, 64)


@pytest.mark.parametrize(
    "kwargs", [{"mode": "tiles"}, {"patch": 0}, {"scale": 0.0}, {"scale": float("nan")}]
)
def test_working_resolution_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        WorkingResolution(**kwargs)


def test_choose_resolution_rule():
    # Close to the model size: whole, whatever the objects.
    assert choose_resolution([(150, 150)], [], 128).is_whole
    # Position texts and images that are not large (synthetic chest X-rays): whole.
    qata = ["Bilateral pulmonary infection, two infected areas, lower left lung."]
    assert choose_resolution([(224, 224)], qata, 128).is_whole
    assert choose_resolution([(512, 512)], qata, 128).is_whole
    # Large images with small objects (H&E nuclei, ~16 px): patches at half resolution.
    big = (1000, 1000)
    nuclei = _disc_mask(big, [(100 + 60 * i, 100 + 60 * j) for i in range(5) for j in range(5)], 9)
    res = choose_resolution(
        [big], ["The nuclei density in the upper right is high."], 128, [nuclei]
    )
    assert res == WorkingResolution("patches", 128, 2.0)
    # Tiny objects: native resolution.
    dots = _disc_mask(big, [(100 + 60 * i, 500) for i in range(10)], 3)
    assert choose_resolution([big], [""], 128, [dots]) == WorkingResolution("patches", 128, 1.0)
    # Large objects in a large image: a whole-image resize keeps them.
    blob = _disc_mask(big, [(500, 500)], 200)
    assert choose_resolution([big], [""], 128, [blob]).is_whole
    # No masks: large images go to patches at native resolution.
    assert choose_resolution([big], [""], 128) == WorkingResolution("patches", 128, 1.0)


def test_object_diameters():
    m = _disc_mask((64, 64), [(16, 16), (48, 48)], 5)
    d = object_diameters([m, None, np.zeros((8, 8), bool)])
    assert d.shape == (2,)
    assert np.allclose(d, 2 * np.sqrt(m.sum() / 2 / np.pi))


def test_steps_for():
    assert steps_for(1) == 300
    assert steps_for(5) == 500
    assert steps_for(10, maximum=700) == 700


def test_rescale_mask_keeps_area():
    m = _disc_mask((200, 200), [(100, 100)], 40)
    half = rescale_mask(m, WorkingResolution("patches", 32, 2.0))
    assert half.shape == (100, 100)
    assert abs(half.sum() * 4 - m.sum()) / m.sum() < 0.05


# ----------------------------------------------------------------------- PatchDataset


def _pair(shape=(300, 260), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.random((*shape, 3)).astype(np.float32)
    mask = _disc_mask(shape, [(40, 200)], 6)
    return img, mask


def test_patch_dataset_items_match_the_trainer_contract():
    img, mask = _pair()
    res = WorkingResolution("patches", 32, 1.0)
    ds = PatchDataset([img], [mask], ["some text"], res, samples_per_epoch=10, seed=1)
    assert len(ds) == 10 and ds.texts == ["some text"] * 10 and ds.has_mask.all()
    item = ds[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["has_mask"] is True and item["text"] == "some text" and item["index"] == 3
    batch = collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32)
    # Reproducible per (seed, epoch, index), different across epochs.
    assert torch.equal(ds[3]["image"], item["image"])
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["image"], item["image"])


def test_patch_dataset_foreground_bias():
    img, mask = _pair()
    res = WorkingResolution("patches", 32, 1.0)
    fg = PatchDataset([img], [mask], None, res, samples_per_epoch=200, fg_fraction=1.0,
                      augment=False)  # fmt: skip
    assert all(fg[i]["mask"].sum() > 0 for i in range(len(fg)))
    uniform = PatchDataset([img], [mask], None, res, samples_per_epoch=200, fg_fraction=0.0,
                           augment=False)  # fmt: skip
    share = np.mean([uniform[i]["mask"].sum() > 0 for i in range(len(uniform))])
    assert share < 0.3


def test_patch_dataset_scales_pads_and_cycles_images():
    a, ma = _pair((300, 260))
    b, mb = _pair((20, 24), seed=1)  # smaller than a patch: padded
    res = WorkingResolution("patches", 32, 2.0)
    ds = PatchDataset([a, b], [ma, None], ["a", "b"], res, samples_per_epoch=6, names=["A", "B"])
    assert [ds[i]["name"] for i in range(6)] == ["A", "B"] * 3
    assert list(ds.has_mask) == [True, False] * 3
    assert ds[1]["image"].shape == (3, 32, 32) and ds[1]["mask"].sum() == 0
    assert not ds.spatial_text  # patches: flips are safe


def test_patch_dataset_whole_mode_resizes_whole_images():
    img, mask = _pair()
    res = WorkingResolution.whole(32)
    ds = PatchDataset([img], [mask], ["lower left lung"], res, augment=False)
    assert len(ds) == 1 and ds.spatial_text
    assert ds[0]["image"].shape == (3, 32, 32)
    assert ds[0]["mask"].sum() > 0


def test_grid_patch_dataset_covers_every_pixel():
    img, mask = _pair((70, 50))
    res = WorkingResolution("patches", 32, 1.0)
    ds = GridPatchDataset([img], [mask], ["t"], res, names=["X"])
    assert len(ds) == len(tile_grid((70, 50), 32, 0.0)) == 3 * 2
    covered = np.zeros((70, 50), int)
    for name in ds.names:
        y, x = (int(part[1:]) for part in name.split("_")[1:])
        covered[y : y + 32, x : x + 32] += 1
    assert covered.min() >= 1
    assert ds[0]["image"].shape == (3, 32, 32)


# ----------------------------------------------------------------------- tiling


@pytest.mark.parametrize("length,patch,overlap", [(10, 32, 0.25), (32, 32, 0.5), (100, 32, 0.25),
                                                  (1000, 128, 0.25), (129, 128, 0.0)])  # fmt: skip
def test_tile_starts_cover_the_length(length, patch, overlap):
    starts = tile_starts(length, patch, overlap)
    assert starts[0] == 0
    assert starts[-1] == max(0, length - patch)
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (gaps <= patch * (1 - overlap) + 1e-9).all()


def test_blend_window_is_positive_and_peaks_at_the_centre():
    w = blend_window(16)
    assert w.shape == (16, 16) and (w > 0).all()
    assert w[8, 8] == w.max() and w[0, 0] == w.min()


@pytest.mark.parametrize("shape", [(97, 61, 3), (200, 130), (20, 17, 3), (64, 64, 1)])
@pytest.mark.parametrize("window", ["cosine", "uniform"])
def test_identity_model_reassembles_exactly(shape, window):
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    res = WorkingResolution("patches", 32, 1.0)
    out = predict_tiled(image, _identity, res, overlap=0.3, batch_size=5, window=window)
    expected = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_half_resolution_identity_is_close_and_full_size():
    yy, xx = np.mgrid[:120, :90]
    image = (0.5 + 0.4 * np.sin(yy / 9.0) * np.cos(xx / 7.0)).astype(np.float32)
    res = WorkingResolution("patches", 16, 2.0)
    out = predict_tiled(image, _identity, res)
    assert out.shape == image.shape
    assert np.abs(out - image)[4:-4, 4:-4].max() < 0.05


def test_whole_mode_and_probability_outputs():
    image = np.random.default_rng(1).random((90, 70, 3)).astype(np.float32)

    def mean_prob(tiles):
        assert tiles.shape[1:] == (3, 32, 32)
        return tiles.mean(dim=1)  # [B, p, p]: one channel

    out = predict_tiled(image, mean_prob, WorkingResolution.whole(32))
    assert out.shape == (90, 70)
    out = predict_tiled(image, mean_prob, WorkingResolution("patches", 32, 1.0))
    np.testing.assert_allclose(out, image.mean(axis=2), atol=1e-6)


def test_tile_function_with_wrong_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="expected"):
        predict_tiled(np.zeros((40, 40)), lambda t: t[:, :, :4, :4],
                      WorkingResolution("patches", 16, 1.0))  # fmt: skip


def test_model_predictor_runs_a_registry_model():
    from src_models.models import create_model
    from src_models.tiling import model_predictor

    torch.manual_seed(0)
    model = create_model("lvit_tiny", img_size=32)
    image = np.random.default_rng(2).random((50, 40, 3)).astype(np.float32)
    prob = predict_tiled(image, model_predictor(model), WorkingResolution("patches", 32, 1.0))
    assert prob.shape == (50, 40) and np.isfinite(prob).all()
    assert prob.min() >= 0.0 and prob.max() <= 1.0


def test_color_augment_changes_intensity_not_geometry():
    from src_models.data.patches import color_augment

    img, mask = _pair((40, 40))
    rng = np.random.default_rng(0)
    out = color_augment(img, rng, 1.0)
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out, img)
    np.testing.assert_allclose(color_augment(img, rng, 0.0), img)
    ds = PatchDataset([img], [mask], None, WorkingResolution("patches", 32, 1.0), color=1.0)
    assert ds[0]["image"].shape == (3, 32, 32)

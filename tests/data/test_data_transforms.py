"""Resizing and the LViT augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src_models.data.transforms import augment, resize_image, resize_mask, resize_prob


def test_resize_image_shapes_and_range():
    img = np.random.default_rng(0).random((100, 80, 3)).astype(np.float32)
    out = resize_image(img, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert resize_image(img, (40, 50)).shape == (40, 50, 3)
    assert resize_image(img[..., 0], 16).shape == (16, 16)
    const = np.full((50, 50, 3), 0.3, np.float32)
    np.testing.assert_allclose(resize_image(const, 224), 0.3, atol=1e-6)


def test_resize_image_antialiases_when_shrinking():
    stripes = np.zeros((200, 200, 3), np.float32)
    stripes[:, ::2] = 1.0  # one-pixel stripes average to 0.5
    out = resize_image(stripes, 50)
    np.testing.assert_allclose(out, 0.5, atol=0.05)


def test_resize_mask_nearest_and_any():
    m = np.zeros((100, 100), bool)
    m[10:40, 50:90] = True
    out = resize_mask(m, 50)
    assert out.dtype == bool and out.shape == (50, 50)
    assert out[5:20, 25:45].all() and out.sum() == 15 * 20
    thin = np.zeros((100, 100), bool)
    thin[:, 49] = True  # nearest samples columns 4i+2 and loses it; bilinear mixes 4i+1 in
    assert not resize_mask(thin, 25).any()
    np.testing.assert_array_equal(np.nonzero(resize_mask(thin, 25, mode="any").any(0))[0], [12])
    assert (resize_mask(m, 37, mode="any") >= resize_mask(m, 37)).all()
    with pytest.raises(ValueError, match="mode"):
        resize_mask(m, 10, mode="cubic")


def test_resize_prob_back_to_original():
    p = np.zeros((8, 8), np.float32)
    p[:, 4:] = 1.0
    out = resize_prob(p, (30, 50))
    assert out.shape == (30, 50) and out.dtype == np.float32
    assert out[:, :20].max() < 0.5 and out[:, 30:].min() > 0.5
    out_t = resize_prob(torch.from_numpy(p)[None, None], (16, 16))
    assert out_t.shape == (16, 16)


def _centroid(mask):
    r, c = np.nonzero(mask)
    return r.mean(), c.mean()


def test_augment_keeps_binary_masks_shapes_and_dtypes():
    rng0 = np.random.default_rng(0)
    img = rng0.random((48, 48, 3)).astype(np.float32)
    mask = np.zeros((48, 48), bool)
    mask[5:20, 8:30] = True
    kinds = set()
    for seed in range(40):
        out_img, out_mask = augment(img, mask, np.random.default_rng(seed))
        assert out_img.shape == img.shape and out_img.dtype == np.float32
        assert out_mask.shape == mask.shape and out_mask.dtype == bool
        kinds.add("same" if np.array_equal(out_mask, mask) else "changed")
    assert kinds == {"same", "changed"}
    m01 = mask.astype(np.uint8)
    for seed in range(20):
        _, out = augment(img, m01, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}


def test_augment_is_reproducible():
    img = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    mask = img[..., 0] > 0.5
    a = augment(img, mask, np.random.default_rng(7))
    b = augment(img, mask, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_spatial_text_never_moves_a_corner_object_to_another_side():
    img = np.zeros((64, 64, 3), np.float32)
    mask = np.zeros((64, 64), bool)
    mask[6:22, 6:22] = True  # top-left quadrant
    img[mask] = 1.0
    moved_default = False
    for seed in range(60):
        _, m = augment(img, mask, np.random.default_rng(seed), spatial_text=True)
        r, c = _centroid(m)
        assert r < 32 and c < 32
        _, m2 = augment(img, mask, np.random.default_rng(seed))
        r2, c2 = _centroid(m2)
        moved_default |= r2 > 32 or c2 > 32
    assert moved_default  # the paper augmentation does flip / rot90


def test_allow_flip_ud_only_keeps_left_right():
    mask = np.zeros((40, 40), bool)
    mask[2:10, 2:10] = True
    img = mask[..., None].repeat(3, axis=2).astype(np.float32)
    for seed in range(40):
        _, m = augment(
            img, mask, np.random.default_rng(seed), spatial_text=True, allow_flip_ud=True
        )
        assert _centroid(m)[1] < 20


def test_augment_without_mask_and_gray_uint8():
    img = np.random.default_rng(2).integers(0, 256, (30, 30), dtype=np.uint8)
    for seed in range(10):
        out, m = augment(img, None, np.random.default_rng(seed))
        assert m is None and out.shape == (30, 30) and out.dtype == np.uint8

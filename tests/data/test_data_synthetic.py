"""Synthetic chest X-rays: determinism, text/mask agreement, referring samples."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from src_models.data.io import read_mask
from src_models.data.synthetic import (
    LESION_ZONES,
    describe_lesions,
    make_qata_sample,
    make_referring_pair,
    make_referring_sample,
    render_chest_xray,
    sample_chest_xray,
    write_dataset,
    zone_box,
)

QATA_RE = re.compile(
    r"^(Unilateral|Bilateral) pulmonary infection, (one|two|three|four) infected areas?, "
    r"((upper |middle |lower )+(left|right) lung)( and (upper |middle |lower )+right lung)?\.$"
)


def test_same_seed_same_sample_and_different_seed_differs():
    a = make_qata_sample(np.random.default_rng(5), 96)
    b = make_qata_sample(np.random.default_rng(5), 96)
    c = make_qata_sample(np.random.default_rng(6), 96)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_qata_samples_shape_text_and_masks():
    for seed in range(12):
        img, mask, text = make_qata_sample(np.random.default_rng(seed), 64)
        assert img.shape == (64, 64) and img.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == bool and mask.any()
        assert QATA_RE.match(text), text
        # Lesions are brighter than the rest of the lung field on average.
        assert img[mask].mean() > img[~mask].mean()


def test_radiological_convention_left_is_image_right():
    r0, r1, c0, c1 = zone_box("lower", "left", 200)
    assert c0 > 100 and r0 > 100
    r0, r1, c0, c1 = zone_box("upper", "right", 200)
    assert c1 < 100 and r1 < 100
    img, lesions = render_chest_xray(np.random.default_rng(0), 128, [("middle", "left")])
    _, cols = np.nonzero(lesions[0].mask)
    assert cols.min() > 64
    with pytest.raises(ValueError, match="side"):
        zone_box("lower", "anterior", 128)
    with pytest.raises(ValueError, match="size"):
        make_qata_sample(np.random.default_rng(0), 32)


def test_lesions_fall_in_their_zone():
    for zone, side in LESION_ZONES:
        _, lesions = render_chest_xray(np.random.default_rng(3), 160, [(zone, side)])
        r, c = np.nonzero(lesions[0].mask)
        r0, r1, c0, c1 = zone_box(zone, side, 160)
        pad = 0.08 * 160  # anatomy jitter and blob extent
        assert r0 - pad <= r.mean() <= r1 + pad and c0 - pad <= c.mean() <= c1 + pad


def test_describe_lesions_style():
    assert describe_lesions([("lower", "left")]) == (
        "Unilateral pulmonary infection, one infected area, lower left lung."
    )
    assert describe_lesions([("upper", "left"), ("lower", "right")]) == (
        "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
    )
    assert describe_lesions([("middle", "left"), ("upper", "left")]).endswith(
        "two infected areas, upper middle left lung."
    )


def test_referring_mask_is_strict_subset_of_all_lesions():
    for seed in range(15):
        img, mask, text, lesions = make_referring_sample(
            np.random.default_rng(seed), 64, with_lesions=True
        )
        assert 2 <= len(lesions) <= 4
        assert {les.side for les in lesions} == {"left", "right"}
        everything = np.logical_or.reduce([les.mask for les in lesions])
        assert mask.any() and not (mask & ~everything).any()
        assert (everything & ~mask).any()  # strictly smaller: the text left something out
        named = re.search(r"in the (.*) lung\.$", text).group(1)
        side = named.split()[-1]
        assert side in ("left", "right")
        cols = np.nonzero(mask)[1]
        assert (cols.mean() > 32) == (side == "left")


def test_referring_pair_differs_only_in_side_word():
    for seed in range(8):
        img, (t_left, t_right), (m_left, m_right) = make_referring_pair(
            np.random.default_rng(seed), 64
        )
        assert t_left.replace("left", "right") == t_right
        assert t_left.split().count("left") == 1
        assert m_left.any() and m_right.any() and not (m_left & m_right).any()
        assert np.nonzero(m_left)[1].mean() > np.nonzero(m_right)[1].mean()
    _, texts, _ = make_referring_pair(np.random.default_rng(0), 64, style="qata")
    assert texts[0].startswith("Unilateral pulmonary infection")


def test_write_dataset_layout_and_determinism(tmp_path):
    a = write_dataset(tmp_path / "a", "referring", n=3, size=64, seed=4)
    b = write_dataset(tmp_path / "b", "referring", n=3, size=64, seed=4)
    c = write_dataset(tmp_path / "c", "referring", n=5, size=64, seed=4)
    names = sorted(p.name for p in (a / "img").iterdir())
    assert names == ["synth_0000.png", "synth_0001.png", "synth_0002.png"]
    for sub in ("img", "labelcol"):
        for name in names:
            assert (a / sub / name).read_bytes() == (b / sub / name).read_bytes()
            assert (a / sub / name).read_bytes() == (c / sub / name).read_bytes()
    assert (a / "text.csv").read_bytes() == (b / "text.csv").read_bytes()
    with open(a / "text.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["Image"] for r in rows] == names
    assert all(r["Description"] for r in rows)
    assert read_mask(a / "labelcol" / names[0]).any()
    with pytest.raises(ValueError, match="kind"):
        write_dataset(tmp_path / "d", "brats", n=1)


def test_sample_chest_xray():
    img, mask, text = sample_chest_xray(seed=0, size=128)
    assert img.shape == (128, 128) and mask.shape == (128, 128) and mask.any()
    again = sample_chest_xray(seed=0, size=128)
    np.testing.assert_array_equal(img, again[0])
    assert QATA_RE.match(text)


def test_contrast_fades_lesions_but_keeps_layout_and_masks():
    full, m_full, t_full = make_qata_sample(np.random.default_rng(11), 96)
    faint, m_faint, t_faint = make_qata_sample(np.random.default_rng(11), 96, contrast=0.4)
    assert t_full == t_faint and np.array_equal(m_full, m_faint)
    background = ~m_full
    gap = lambda img: img[m_full].mean() - img[background].mean()  # noqa: E731
    assert 0 < gap(faint.astype(float)) < 0.6 * gap(full.astype(float))
    with pytest.raises(ValueError, match="contrast"):
        make_qata_sample(np.random.default_rng(0), 96, contrast=0.0)

"""The referring shapes generator: deterministic, and its masks hold exactly the named objects."""

import numpy as np
import pytest

from src_models.data.referring import (
    COLUMNS,
    ROWS,
    SHAPES,
    SIZES,
    Mention,
    describe,
    make_shapes_sample,
    parse_mentions,
    render_scene,
    write_shapes_dataset,
)


def _sample(i: int, size: int = 96):
    return make_shapes_sample(np.random.default_rng([0, i]), size, with_objects=True)


def test_same_seed_same_sample_and_another_seed_another():
    a, b, c = _sample(3), _sample(3), _sample(4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("i", range(60))
def test_the_mask_holds_exactly_the_named_objects(i):
    image, mask, text, objects, mentions = _sample(i)
    assert image.dtype == np.uint8 and mask.dtype == bool
    assert 2 <= len(objects) <= 4
    named = []
    for m in mentions:
        hits = [k for k, o in enumerate(objects) if m.matches(o)]
        assert len(hits) == 1, (text, m)  # every mention picks out one object
        named.append(hits[0])
    assert len(set(named)) == len(named) < len(objects)  # a strict subset is named
    expected = np.zeros_like(mask)
    for k in named:
        expected |= objects[k].mask
    assert np.array_equal(mask, expected)
    # the objects do not overlap, so every unnamed one lies fully outside the mask
    for k, o in enumerate(objects):
        assert o.mask.any()
        if k not in named:
            assert not (o.mask & mask).any()
    # and the text reads back as exactly these facts
    assert sorted(map(repr, parse_mentions(text))) == sorted(map(repr, mentions))


def test_render_scene_draws_each_shape_in_its_cell():
    specs = [(s, "big", k // 3, k % 3) for k, s in enumerate(SHAPES)]
    image, objects = render_scene(0, 120, specs)
    for (shape, _, r, c), o in zip(specs, objects, strict=True):
        ys, xs = np.nonzero(o.mask)
        assert (o.shape, o.row, o.column) == (shape, ROWS[r], COLUMNS[c])
        assert r * 40 <= ys.min() and ys.max() < (r + 1) * 40
        assert c * 40 <= xs.min() and xs.max() < (c + 1) * 40
        assert image[o.mask].mean() > image[~np.any([q.mask for q in objects], 0)].mean() + 40
    disk, ring = objects[SHAPES.index("disk")], objects[SHAPES.index("ring")]
    assert ring.mask.sum() < 0.8 * disk.mask.sum()  # the ring is hollow


def test_describe_then_parse_gives_back_every_fact():
    rng = np.random.default_rng(1)
    for _ in range(300):
        facts = {
            "shape": rng.choice([None, *SHAPES]),
            "size": rng.choice([None, *SIZES]),
            "row": rng.choice([None, *ROWS]),
            "column": rng.choice([None, *COLUMNS]),
        }
        m = Mention(**{k: (None if v is None else str(v)) for k, v in facts.items()})
        lone_middle = (m.row == "middle" and m.column is None) or (
            m.column == "center" and m.row is None
        )
        if m == Mention() or lone_middle:
            continue  # nothing said, or a lone "middle" (which means the centre cell)
        other = Mention(shape="ring", size="small")
        text = describe([m, other], rng)
        assert sorted(map(repr, parse_mentions(text))) == sorted(map(repr, [m, other])), text


def test_write_shapes_dataset_is_the_lvit_layout_and_prefix_stable(tmp_path):
    small = write_shapes_dataset(tmp_path / "a", n=3, size=64, seed=5)
    big = write_shapes_dataset(tmp_path / "b", n=5, size=64, seed=5)
    rows_small = (small / "text.csv").read_text().splitlines()
    rows_big = (big / "text.csv").read_text().splitlines()
    assert rows_small[0] == "Image,Description" and rows_big[:4] == rows_small
    assert sorted(p.name for p in (small / "img").iterdir()) == [
        f"shapes_{i:04d}.png" for i in range(3)
    ]
    assert (small / "labelcol" / "shapes_0002.png").read_bytes() == (
        big / "labelcol" / "shapes_0002.png"
    ).read_bytes()

"""Click mode without a display: which mask a prompt change starts from, and layer coordinates
(another scale and translate, another slice, outside the image)."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Points, Shapes

from napari_lvit._click_mode import ClickHistory, PlanePrompts, plane_box, plane_clicks


def _mask(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((8, 8)) < 0.5


def test_a_new_click_continues_from_the_labels_and_undo_restores_without_the_model():
    history = ClickHistory()
    base, painted = _mask(0), _mask(1)
    one = PlanePrompts(((2.0, 3.0, 1),), None)
    two = PlanePrompts(((2.0, 3.0, 1), (5.0, 5.0, -1)), None)
    action, previous = history.plan(one, base)  # the first click: from the labels shown
    assert action == "predict" and np.array_equal(previous, base)
    history.record(one, _mask(2))
    action, previous = history.plan(two, painted)  # the user painted after the first click
    assert action == "predict" and np.array_equal(previous, painted)
    history.record(two, _mask(3))
    action, kept = history.plan(one, _mask(3))  # undo the last click
    assert action == "restore" and np.array_equal(kept, _mask(2))
    action, kept = history.plan(PlanePrompts((), None), _mask(2))  # undo every click
    assert action == "restore" and np.array_equal(kept, base)


def test_a_click_deleted_in_the_middle_starts_again_from_the_labels_before_any_click():
    history = ClickHistory()
    base = _mask(0)
    history.plan(PlanePrompts(((1.0, 1.0, 1),), None), base)
    history.record(PlanePrompts(((1.0, 1.0, 1),), None), _mask(1))
    history.record(PlanePrompts(((1.0, 1.0, 1), (4.0, 4.0, 1)), None), _mask(2))
    action, previous = history.plan(PlanePrompts(((4.0, 4.0, 1),), None), _mask(2))
    assert action == "predict" and np.array_equal(previous, base)


def test_clicks_on_a_layer_with_another_scale_and_translate_land_on_the_right_pixel():
    image = Image(np.zeros((40, 60)), scale=(2.0, 0.5), translate=(100.0, -10.0))
    # a Points layer in world units (scale 1): world (y, x) = image pixel * scale + translate
    points = Points(
        np.array([[100 + 2 * 10, -10 + 0.5 * 30], [100 + 2 * 45, 0.0], [-5.0, -5.0]]),
        features={"sign": [1, -1, 1]},
    )
    clicks, left_out = plane_clicks(points, image, ())
    assert clicks == ((10.0, 30.0, 1),) and left_out == 2  # row 45 and the last: outside


def test_only_the_clicks_and_box_of_the_shown_slice_count():
    volume = Image(np.zeros((5, 20, 20)))
    points = Points(np.array([[2, 4, 4], [3, 6, 6]]), features={"sign": [1, 1]})
    clicks, left_out = plane_clicks(points, volume, (2,))
    assert clicks == ((4.0, 4.0, 1),) and left_out == 1
    shapes = Shapes(
        [np.array([[2, 1, 1], [2, 1, 30], [2, 8, 30], [2, 8, 1]])], shape_type="rectangle"
    )
    assert plane_box(shapes, volume, (2,)) == (1.0, 1.0, 8.0, 19.0)  # cut to the image
    assert plane_box(shapes, volume, (3,)) is None

"""CT windows: presets, parsing, the HU -> [0, 1] mapping and where a window applies."""

import numpy as np
import pytest

from src_models.data.io import to_float01
from src_models.data.windows import (
    PRESETS,
    Window,
    apply_window,
    as_window,
    input_range,
    preset_name,
    window_applies,
)


def test_presets_are_the_usual_radiology_windows():
    assert PRESETS["lung"] == (-600, 1500) and PRESETS["lung"].range == (-1350, 150)
    assert PRESETS["mediastinum"] == PRESETS["soft tissue"] == (40, 400)
    assert PRESETS["bone"] == (400, 1800) and PRESETS["brain"] == (40, 80)


def test_window_maps_its_band_onto_0_1_and_clips_outside():
    hu = np.array([-2000, -1350, -600, 150, 3000], dtype=np.int16)
    assert apply_window(hu, "lung").tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    brain = apply_window(np.array([0.0, 20.0, 40.0, 60.0, 80.0]), (40, 80))
    np.testing.assert_allclose(brain, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert brain.dtype == np.float32
    # the same values as to_float01 with the window's range (what the model is fed)
    plane = np.random.default_rng(0).normal(-300, 500, (8, 9)).astype(np.float32)
    ramp = to_float01(plane, value_range=PRESETS["bone"].range)[..., 0]
    np.testing.assert_allclose(ramp, apply_window(plane, "bone"), atol=1e-6)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Lung", Window(-600, 1500)),
        (" soft tissue ", Window(40, 400)),
        ("-600,1500", Window(-600, 1500)),
        ((40, 80), Window(40, 80)),
        ([400.0, 1800.0], Window(400, 1800)),
        (None, None),
    ],
)
def test_as_window_reads_presets_pairs_and_text(value, expected):
    assert as_window(value) == expected


@pytest.mark.parametrize("bad", ["liver", "1,2,3", (40, 0), (40, -5), ("a", 1), (np.nan, 10)])
def test_bad_windows_are_refused_with_the_presets_named(bad):
    with pytest.raises(ValueError, match="window"):
        as_window(bad)


def test_preset_name_and_where_a_window_applies():
    assert preset_name((-600, 1500)) == "lung" and preset_name((1, 2)) is None
    assert preset_name((40, 400)) == "mediastinum"
    assert window_applies(np.int16) and window_applies(np.float32) and window_applies(np.uint16)
    assert not window_applies(np.uint8) and not window_applies(np.bool_)
    assert not window_applies(np.float32, rgb=True)
    hu = np.zeros((4, 4), np.int16)
    assert input_range(hu, "lung") == (-1350, 150)
    assert input_range(hu, None) is None
    assert input_range(np.zeros((4, 4), np.uint8), "lung") is None  # a display image already
    assert input_range(np.zeros((4, 4, 3), np.float32), "lung") is None  # colour
    assert input_range(np.zeros((4, 4, 1), np.float32), "lung") == (-1350, 150)

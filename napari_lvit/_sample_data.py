"""Sample data: synthetic chest X-rays with a report and the mask the report describes."""

from __future__ import annotations

import numpy as np


def _layers(image: np.ndarray, mask: np.ndarray, text: str, name: str) -> list:
    return [
        (image, {"name": name, "metadata": {"description": text}}, "image"),
        (
            mask.astype("uint8"),
            {"name": "reference mask", "opacity": 0.4, "visible": False},
            "labels",
        ),
    ]


def synthetic_chest_xray():
    """A 512x512 synthetic chest X-ray; its QaTa-style report is in the layer metadata."""
    from src_models.data.synthetic import sample_chest_xray

    image, mask, text = sample_chest_xray(seed=0, size=512)
    return _layers(image, mask, text, "synthetic chest X-ray")


def both_lungs_scene() -> tuple[np.ndarray, tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """The both-lungs sample: ``(image, (text_left, text_right), (mask_left, mask_right))``."""
    from src_models.data.synthetic import make_referring_pair

    return make_referring_pair(np.random.default_rng([0, 11]), 512, style="qata")


def synthetic_chest_xray_both_lungs():
    """Lesions in the same zones of both lungs; the report names the left lung only, so
    changing "left" to "right" in the text moves the mask to the other lung."""
    image, texts, masks = both_lungs_scene()
    return _layers(image, masks[0], texts[0], "synthetic chest X-ray (both lungs)")

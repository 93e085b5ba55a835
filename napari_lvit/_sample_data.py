"""Sample data: a synthetic chest X-ray with its report and the mask the report describes."""

from __future__ import annotations


def synthetic_chest_xray():
    """A 512x512 synthetic chest X-ray; its QaTa-style report is in the layer metadata."""
    from src_models.data.synthetic import sample_chest_xray

    image, mask, text = sample_chest_xray(seed=0, size=512)
    return [
        (image, {"name": "synthetic chest X-ray", "metadata": {"description": text}}, "image"),
        (
            mask.astype("uint8"),
            {"name": "reference mask", "opacity": 0.4, "visible": False},
            "labels",
        ),
    ]

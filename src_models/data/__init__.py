"""Data layer: image I/O, LViT dataset folders, transforms and synthetic chest X-rays.

Never imports napari or Qt. The names below are loaded lazily, so that
``from src_models.data.io import read_image`` (e.g. in a napari reader) does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DatasetError": "tables",
    "SegmentationDataset": "dataset",
    "SegmentationRecord": "dataset",
    "collate": "dataset",
    "find_text_table": "tables",
    "read_text_table": "tables",
    "scan_split": "dataset",
    "IMAGE_SUFFIXES": "io",
    "ImageReadError": "io",
    "LoadedImage": "io",
    "load_image": "io",
    "probe_image": "io",
    "read_image": "io",
    "read_mask": "io",
    "to_float01": "io",
    "write_mask": "io",
    "augment": "transforms",
    "resize_image": "transforms",
    "resize_mask": "transforms",
    "resize_prob": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

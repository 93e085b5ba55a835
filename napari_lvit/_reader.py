"""Reader for PNG, JPEG, TIFF, DICOM and NIfTI images (DICOM with rescale slope/intercept)."""

from __future__ import annotations

import warnings
from pathlib import Path

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz")


def _suffix(path: str) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def napari_get_reader(path):
    """Return a reader for one supported file (or a list of them), else None."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or any(_suffix(str(p)) not in SUFFIXES for p in paths):
        return None
    return read_images


def read_images(path):
    """Layer data tuples, one image layer per file; a description beside it fills the text."""
    from src_models.data.io import read_image

    paths = [path] if isinstance(path, str) else list(path)
    layers = []
    for p in paths:
        data = read_image(p)
        rgb = data.ndim == 3 and data.shape[-1] in (3, 4) and data.shape[0] > 4
        metadata = {"source_path": str(p)}
        note = Path(str(p) + ".txt")
        if note.is_file():
            try:
                metadata["description"] = note.read_text(encoding="utf-8").strip()
            except UnicodeDecodeError:  # the image still opens; its description is left out
                warnings.warn(
                    f"{note} is not UTF-8 text: its description was not read; save it as UTF-8",
                    stacklevel=2,
                )
        layers.append((data, {"name": Path(p).name, "rgb": rgb, "metadata": metadata}, "image"))
    return layers

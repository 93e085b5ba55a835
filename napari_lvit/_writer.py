"""Writer for Labels layers: NIfTI (``.nii`` / ``.nii.gz``, aligned with the scan), DICOM SEG
(``.dcm``, referencing the source series) and TIFF/PNG (2D; TIFF also volumes).

The NIfTI affine comes from the layer's own transform (``scale``, ``translate``, ``rotate``,
``shear``, ``affine``, as the reader sets them and the segmentation widget copies them), or,
for a layer left at the identity, from the source geometry in its metadata (``affine``). A DICOM
SEG needs the layer's metadata to name the DICOM files of its series (``dicom_files``, set by
the reader and copied onto the proposal layer by the widget). Writes are atomic and never
overwrite one of the source images. The library side is :mod:`src_models.data.writers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def layer_affine(attributes: dict) -> np.ndarray | None:
    """The data -> world matrix of a layer (from its writer attributes), or the source affine
    of its metadata when the layer's own transform is the identity; ``None`` if neither."""
    from napari.utils.transforms import Affine

    ndim = int(attributes.get("ndim") or len(attributes.get("scale") or ()) or 0)
    matrix = None
    if ndim:
        physical = Affine(
            scale=attributes.get("scale"),
            translate=attributes.get("translate"),
            rotate=attributes.get("rotate"),
            shear=attributes.get("shear"),
            ndim=ndim,
        )
        extra = attributes.get("affine")
        if extra is not None:
            extra = Affine(affine_matrix=np.asarray(extra, dtype=float), ndim=ndim)
            physical = extra.compose(physical)
        matrix = np.asarray(physical.affine_matrix, dtype=float)
        if not np.allclose(matrix, np.eye(ndim + 1)):
            return matrix
    source = (attributes.get("metadata") or {}).get("affine")
    if source is not None:
        source = np.asarray(source, dtype=float)
        if not ndim or source.shape == (ndim + 1, ndim + 1):
            return source
    return matrix


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """napari writer: one Labels layer to ``path`` (format by suffix); returns the path."""
    from src_models.data.readers import image_suffix
    from src_models.data.writers import LABEL_SUFFIXES
    from src_models.data.writers import write_labels as write

    arr = np.asarray(data)
    if image_suffix(path) not in LABEL_SUFFIXES:
        path = str(path) + (".nii.gz" if arr.ndim == 3 else ".png")
    metadata = attributes.get("metadata") or {}
    inputs = [metadata["source_path"]] if metadata.get("source_path") else []
    dicom_files = metadata.get("dicom_files") or None
    out = write(
        path,
        arr,
        affine=layer_affine(attributes),
        dicom_source=dicom_files,
        frame_order=metadata.get("frame_order"),
        inputs=inputs,
    )
    return [str(Path(out))]

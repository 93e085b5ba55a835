"""Reader for PNG, JPEG, TIFF, DICOM (files, series folders) and NIfTI images.

Layers are placed in millimetres: ``scale`` (the pixel spacing) and ``translate`` (the
origin), plus a rotation ``affine`` when the image axes are not the world axes (an oblique
DICOM series, a NIfTI in another orientation); see :class:`src_models.data.io.LoadedImage`
for the world coordinates. A DICOM folder gives one layer per series; the layer's metadata
names its source (``source_path``, and for DICOM ``dicom_files`` / ``series_uid``) so that
labels drawn on it can be saved as a DICOM SEG (:mod:`napari_lvit._writer`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz")


def _suffix(path: str) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def napari_get_reader(path):
    """Return a reader for one supported file, a folder of DICOM files, or a list of them."""
    from src_models.data.dicom import is_dicom_folder

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    for p in paths:
        if os.path.isdir(p):
            if not is_dicom_folder(p):
                return None
        elif _suffix(str(p)) not in SUFFIXES:
            return None
    return read_images


def layer_geometry(loaded) -> dict:
    """The ``scale`` / ``translate`` (/ ``affine``) layer arguments for a
    :class:`~src_models.data.io.LoadedImage` (empty when its geometry is unknown)."""
    if loaded.spacing is None:
        return {}
    scale = tuple(float(s) for s in loaded.spacing)
    n = len(scale)
    origin = np.zeros(n) if loaded.origin is None else np.asarray(loaded.origin, float)
    if loaded.axis_aligned:
        return {"scale": scale, "translate": tuple(float(v) for v in origin)}
    rotation = np.asarray(loaded.direction, dtype=float)
    affine = np.eye(n + 1)
    affine[:n, :n] = rotation
    # world = R (S x + T) must equal R S x + origin
    translate = np.linalg.solve(rotation, origin)
    return {"scale": scale, "translate": tuple(float(v) for v in translate), "affine": affine}


def source_metadata(loaded) -> dict:
    """Layer metadata naming where ``loaded`` came from: ``source_path``, its ``affine`` (the
    source geometry), and for DICOM ``dicom_files`` (slice order), ``series_uid``, ..."""
    metadata = {"source_path": str(loaded.path)}
    meta = loaded.meta or {}
    if loaded.affine is not None:
        metadata["affine"] = loaded.affine.tolist()  # the source geometry, for the writer
    if meta.get("format") == "dicom":
        metadata["dicom_files"] = [str(f) for f in loaded.source_files]
        metadata["series_uid"] = meta.get("series_uid", "")
        for key in ("study_uid", "modality", "series_description", "frame_order"):
            if meta.get(key) not in (None, "", []):
                metadata[key] = meta[key]
    return metadata


def _layer(loaded, name: str, note_for: str | None):
    metadata = source_metadata(loaded)
    if note_for is not None:
        note = Path(str(note_for) + ".txt")
        if note.is_file():
            try:
                metadata["description"] = note.read_text(encoding="utf-8").strip()
            except UnicodeDecodeError:  # the image still opens; its description is left out
                warnings.warn(
                    f"{note} is not UTF-8 text: its description was not read; save it as UTF-8",
                    stacklevel=3,
                )
    data = loaded.data
    rgb = bool(loaded.rgb) and data.shape[0] > 4 if data.ndim == 3 else bool(loaded.rgb)
    kwargs = {"name": name, "rgb": rgb, "metadata": metadata, **layer_geometry(loaded)}
    return (data, kwargs, "image")


def read_images(path):
    """Layer data tuples: one image layer per file, one per DICOM series of a folder (or of a
    list of DICOM files); a description beside a file (``<file>.txt``) fills the text."""
    from src_models.data.dicom import load_dicom_series
    from src_models.data.io import load_image

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers = []
    dicom_list = len(paths) > 1 and all(
        not os.path.isdir(p) and _suffix(str(p)) in (".dcm", ".dicom") for p in paths
    )
    if dicom_list:  # slices of a series, dropped together
        groups = [(Path(paths[0]).parent.name or "DICOM", load_dicom_series(paths))]
    else:
        groups = []
        for p in paths:
            if os.path.isdir(p):
                groups.append((Path(p).name, load_dicom_series(p)))
            else:
                layers.append(_layer(load_image(p), Path(p).name, str(p)))
    for base, series in groups:
        for loaded in series:
            label = loaded.meta.get("series_label", "")
            name = f"{base} [{label}]" if len(series) > 1 and label else base
            layers.append(_layer(loaded, name, None))
    return layers

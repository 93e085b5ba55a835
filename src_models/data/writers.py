"""Writing label masks where clinicians need them: NIfTI aligned with the scan (nibabel), DICOM
SEG referencing the source series (highdicom), and PNG/TIFF for 2D (or TIFF volumes).

Every writer writes to a temporary file beside the target and moves it into place (a crash
never leaves half a file), and refuses to write onto one of the images it was made from.

Geometry is that of :class:`~src_models.data.readers.LoadedImage`: a napari-order affine
(``(z, y, x)`` index -> reversed-LPS world, mm); :func:`write_nifti` converts it to the NIfTI
RAS affine, so that a NIfTI read back by :func:`~src_models.data.io.load_image` has the same
geometry and the same voxels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from src_models.errors import UserError

from .readers import image_suffix, nifti_affine_from_napari

__all__ = [
    "LABEL_SUFFIXES",
    "check_not_input",
    "label_values",
    "write_dicom_seg",
    "write_labels",
    "write_nifti",
]

#: Suffixes :func:`write_labels` writes (``.dcm`` = DICOM SEG).
LABEL_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".tif", ".tiff", ".png")


def check_not_input(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """``path`` as a :class:`Path`; raises :class:`UserError` when it is one of ``inputs``."""
    p = Path(path)
    target = p.expanduser().resolve()
    for src in inputs:
        try:
            same = Path(src).expanduser().resolve() == target
        except OSError:
            same = False
        if same:
            raise UserError(
                f"refusing to write '{p}': it is one of the input images; choose another name"
            )
    return p


def label_values(mask: np.ndarray) -> list[int]:
    """The nonzero label values of ``mask`` (a bool mask has the one value 1), sorted."""
    arr = np.asarray(mask)
    if arr.dtype == bool:
        return [1] if arr.any() else []
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.array_equal(arr, np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"labels must be integers or booleans, got dtype {arr.dtype}")
    values = np.unique(arr)
    if values.size and values[0] < 0:
        raise ValueError("labels must not be negative")
    return [int(v) for v in values if v != 0]


def _label_array(mask: np.ndarray) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    top = max(label_values(arr), default=0)
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    return arr.astype(dtype)


def write_nifti(
    path: str | os.PathLike,
    mask: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write labels ``[Z, Y, X]`` (or 2D ``[Y, X]``) as NIfTI (``.nii`` / ``.nii.gz``).

    ``affine`` is the napari-order affine of the image the labels belong to
    (:attr:`LoadedImage.affine`, 4x4, or 3x3 for 2D; ``None``: 1 mm voxels at the origin);
    the file gets the matching RAS affine as both sform and qform (code 1, scanner). Label
    values are kept (uint8/uint16/uint32). Raises :class:`UserError` for ``path`` in ``inputs``.
    """
    import nibabel as nib

    from .io import _write_atomically

    p = check_not_input(path, inputs)
    if image_suffix(p) not in (".nii", ".nii.gz"):
        raise ValueError(f"cannot write NIfTI '{p}': use a .nii or .nii.gz name")
    arr = _label_array(mask)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ValueError(f"cannot write NIfTI '{p}': expected [Z, Y, X] or [Y, X], got {arr.shape}")
    if affine is None:
        affine = np.eye(arr.ndim + 1)
    ras = nifti_affine_from_napari(affine)
    stored = arr.transpose(2, 1, 0) if arr.ndim == 3 else arr.T
    img = nib.Nifti1Image(np.ascontiguousarray(stored), ras)
    img.set_sform(ras, code=1)
    img.set_qform(ras, code=1)
    img.header.set_xyzt_units("mm")
    return _write_atomically(p, lambda tmp: nib.save(img, tmp))


def _segment_description(number: int, value: int, name: str | None):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    label = name or (f"label {value}" if value != 1 else "lesion")
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


def write_dicom_seg(
    path: str | os.PathLike,
    mask: np.ndarray,
    source: Sequence[str | os.PathLike] | Sequence[object],
    *,
    frame_order: Sequence[int] | None = None,
    segment_names: dict[int, str] | None = None,
    series_description: str = "napari-lvit segmentation",
) -> Path:
    """Write labels as a DICOM SEG (binary, one segment per label value) referencing
    ``source``: the series' files (or pydicom datasets) in the slice order of ``mask``
    (``[Z, H, W]``, or ``[H, W]`` for one image). A multi-frame source whose frames were
    re-sorted on reading gives ``frame_order`` (``LoadedImage.meta["frame_order"]``).

    Raises :class:`UserError` when the mask does not fit the series or is empty, or when
    ``path`` is one of the source files.
    """
    import highdicom as hd
    import pydicom

    from .io import _write_atomically

    paths = [s for s in source if isinstance(s, (str, os.PathLike))]
    p = check_not_input(path, paths)
    if image_suffix(p) != ".dcm":
        raise ValueError(f"cannot write DICOM SEG '{p}': use a .dcm name")
    datasets = [
        pydicom.dcmread(s, stop_before_pixels=True) if isinstance(s, (str, os.PathLike)) else s
        for s in source
    ]
    if not datasets:
        raise UserError(f"cannot write DICOM SEG '{p}': no source images given")
    arr = np.asarray(mask)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise UserError(f"cannot write DICOM SEG '{p}': expected [Z, H, W], got {arr.shape}")
    n_frames = int(getattr(datasets[0], "NumberOfFrames", 1) or 1)
    expected = n_frames if len(datasets) == 1 else len(datasets)
    ds0 = datasets[0]
    if arr.shape != (expected, int(ds0.Rows), int(ds0.Columns)):
        raise UserError(
            f"cannot write DICOM SEG '{p}': the labels {arr.shape} do not fit the source "
            f"series ({expected} x {int(ds0.Rows)} x {int(ds0.Columns)})"
        )
    if frame_order is not None and len(datasets) == 1:
        unsorted = np.empty_like(arr)
        unsorted[np.asarray(frame_order)] = arr
        arr = unsorted
    values = label_values(arr)
    if not values:
        raise UserError(f"cannot write DICOM SEG '{p}': the labels are empty (nothing to save)")
    labelmap = np.zeros(arr.shape, dtype=np.uint8 if len(values) < 256 else np.uint16)
    for k, v in enumerate(values, start=1):
        labelmap[arr == v] = k
    names = segment_names or {}
    descriptions = [_segment_description(k, v, names.get(v)) for k, v in enumerate(values, start=1)]
    from src_models import __version__

    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=labelmap if len(datasets) > 1 or n_frames > 1 else labelmap[0],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(ds0, "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-lvit",
        manufacturer_model_name="napari-lvit",
        software_versions=str(__version__),
        device_serial_number="0",
        series_description=series_description[:64],
    )
    return _write_atomically(p, lambda tmp: seg.save_as(tmp))


def write_labels(
    path: str | os.PathLike,
    mask: np.ndarray,
    *,
    affine: np.ndarray | None = None,
    dicom_source: Sequence[str | os.PathLike] | None = None,
    frame_order: Sequence[int] | None = None,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write labels by suffix: ``.nii`` / ``.nii.gz`` (:func:`write_nifti` with ``affine``),
    ``.dcm`` (:func:`write_dicom_seg`, needs ``dicom_source``), ``.png`` / ``.tif`` (2D;
    TIFF also volumes; the label values are kept, as uint8/uint16)."""
    from .io import _write_atomically

    suffix = image_suffix(path)
    inputs = [*inputs, *(dicom_source or ())]
    if suffix in (".nii", ".nii.gz"):
        return write_nifti(path, mask, affine, inputs=inputs)
    if suffix == ".dcm":
        if not dicom_source:
            raise UserError(
                f"cannot write DICOM SEG '{path}': the labels have no DICOM source series "
                "(open the DICOM series with napari-lvit first), or save as .nii.gz"
            )
        return write_dicom_seg(path, mask, dicom_source, frame_order=frame_order)
    if suffix not in (".png", ".tif", ".tiff"):
        raise ValueError(
            f"cannot write labels '{path}': unsupported suffix '{suffix}' "
            f"(use one of {', '.join(LABEL_SUFFIXES)})"
        )
    p = check_not_input(path, inputs)
    arr = _label_array(mask)
    if arr.ndim != 2 and not (arr.ndim == 3 and suffix != ".png"):
        raise ValueError(f"cannot write '{p}': PNG takes 2D labels [H, W], got {arr.shape}")

    def write(tmp: str) -> None:
        if suffix == ".png":
            from PIL import Image

            Image.fromarray(arr).save(tmp, format="PNG")
        else:
            import tifffile

            tifffile.imwrite(tmp, arr, compression="zlib")

    return _write_atomically(p, write)

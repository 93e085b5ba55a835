"""Image and mask input/output for 2D images and 3D volumes.

Formats: PNG, JPEG, BMP (Pillow), TIFF (tifffile; multi-page -> volume), DICOM (pydicom;
single or multi-frame), NIfTI ``.nii`` / ``.nii.gz`` (nibabel).

Conventions of the arrays returned by :func:`load_image` / :func:`read_image`:

- 2D grayscale ``[H, W]``, 2D colour ``[H, W, C]`` (C = 3 or 4, RGB(A));
- volumes ``[Z, H, W]`` or ``[Z, H, W, C]`` (slices first);
- the native dtype of the file, except DICOM with ``RescaleSlope`` / ``RescaleIntercept``,
  which is returned as float32 in the rescaled unit (e.g. Hounsfield units).

DICOM ``MONOCHROME1`` images (where larger values are darker) are inverted so that, as in
every other format, bright means a large value. NIfTI slices are taken along the last stored
axis and transposed to ``[Z, rows, cols]``; when the affine says the first two axes are the
left-right and anterior-posterior directions, they are flipped into the radiological display
convention (patient's right on the image's left, anterior at the top), as a DICOM viewer would
show the same data.

A folder holding one DICOM series reads as that series' volume (:mod:`.dicom`:
:func:`load_dicom_series` reads every series of a folder). :class:`LoadedImage` carries the
geometry where the file gives it (``spacing``, ``origin``, ``direction``, ``affine`` in
napari's (z, y, x) order, mm; DICOM and NIfTI in reversed-LPS patient coordinates; TIFF
resolution tags), ``None`` when unknown; :mod:`.writers` writes labels back (NIfTI with the
affine, DICOM SEG, PNG/TIFF).

Every failure to read (missing file, corrupt file, unsupported suffix, empty image, image larger
than the pixel limit) raises :class:`ImageReadError`, whose message names the file and the reason.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from .dicom import dicom_series, is_dicom_folder, load_dicom_series
from .readers import (  # the readers lived here: `from .io import ...` still works
    _TIFF_SUFFIXES,
    IMAGE_SUFFIXES,
    ImageReadError,
    LoadedImage,
    _check_shape,
    _dispatch,
    image_suffix,
)
from .writers import write_dicom_seg, write_labels, write_nifti

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "LoadedImage",
    "dicom_series",
    "image_suffix",
    "is_dicom_folder",
    "is_image_file",
    "load_dicom_series",
    "load_image",
    "mask_from_array",
    "mask_values",
    "probe_image",
    "read_image",
    "read_mask",
    "to_float01",
    "write_dicom_seg",
    "write_labels",
    "write_mask",
    "write_nifti",
    "write_prob",
]

#: Default limit on the number of pixels (voxels) of one image: larger images are refused.
DEFAULT_MAX_PIXELS = 20000 * 20000

_MASK_WRITE_SUFFIXES = (".png", ".tif", ".tiff")


# --------------------------------------------------------------------------- suffixes


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a (non-hidden) file name with one of :data:`IMAGE_SUFFIXES`."""
    p = Path(path)
    return not p.name.startswith(".") and image_suffix(p) in IMAGE_SUFFIXES


# --------------------------------------------------------------------------- reading


def load_image(
    path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Read an image or volume with its axis layout and geometry (see the module docstring);
    ``path`` may be a folder holding one DICOM series.

    ``max_pixels`` caps the number of values (all axes) before anything is decoded; ``None``
    removes the cap. Raises :class:`ImageReadError`.
    """
    loaded = _dispatch(path, max_pixels, decode=True)
    _check_shape(loaded.path, loaded.data.shape, None)
    return loaded


def read_image(
    path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read an image file into a numpy array (see the module docstring for axes and dtypes)."""
    return load_image(path, max_pixels=max_pixels).data


def probe_image(
    path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[tuple[int, ...], bool]:
    """Spatial shape (``(H, W)`` or ``(Z, H, W)``) and whether it is colour, from the header only.

    Cheap: pixel data are not decoded. Raises :class:`ImageReadError` like :func:`read_image`.
    """
    return _dispatch(path, max_pixels, decode=False)


# --------------------------------------------------------------------------- conversions


def to_float01(image: np.ndarray, *, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """A single 2D image of any dtype as float32 ``[H, W, 3]`` in ``[0, 1]``.

    - ``[H, W]`` and ``[H, W, 1]`` grayscale are repeated to 3 channels; ``[H, W, 2]``
      (gray + alpha) keeps the gray channel; RGBA drops alpha.
    - bool -> 0/1; uint8 -> ``/ 255``; every other dtype -> min-max over the image (all channels
      together), a constant image -> zeros. ``value_range=(lo, hi)`` replaces the image's own
      min and max (e.g. a whole volume's range, or a CT window); values are clipped to it.
    - NaN or infinite values raise ``ValueError``.
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4)):
        raise ValueError(
            f"to_float01 expects one 2D image: [H, W] grayscale or [H, W, C] with C in 1..4 "
            f"(gray, gray+alpha, RGB, RGBA); got shape {arr.shape}. For a volume [Z, H, W], "
            f"convert one slice at a time."
        )
    if arr.size == 0:
        raise ValueError(f"to_float01 got an empty image of shape {arr.shape}")
    if arr.ndim == 3:
        c = arr.shape[-1]
        if c in (1, 2):
            arr = arr[..., 0]
        elif c == 4:
            arr = arr[..., :3]
    if arr.dtype.kind == "c":
        raise ValueError(f"to_float01 cannot convert complex images (dtype {arr.dtype})")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise ValueError(
            f"the image contains {n_bad} NaN or infinite values; replace them (e.g. with "
            f"np.nan_to_num) before converting"
        )
    if arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif arr.dtype == np.uint8 and value_range is None:
        out = arr.astype(np.float32) * np.float32(1.0 / 255.0)
    else:
        if value_range is not None:
            lo, hi = float(value_range[0]), float(value_range[1])
        else:
            lo, hi = float(arr.min()), float(arr.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"value_range must be finite, got {value_range}")
        if hi <= lo:
            out = np.zeros(arr.shape, dtype=np.float32)
        else:
            out = (arr.astype(np.float64) - lo) / (hi - lo)
            out = np.clip(out, 0.0, 1.0).astype(np.float32)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.float32)


def mask_values(arr: np.ndarray, limit: int = 8) -> list:
    """Up to ``limit`` distinct values of ``arr`` (sorted), for messages and checks."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        values = np.flatnonzero(np.bincount(arr.ravel(), minlength=256)).tolist()
    else:
        values = np.unique(arr).tolist()
    return values[:limit] + (["..."] if len(values) > limit else [])


def mask_from_array(
    arr: np.ndarray, *, rgb: bool | None = None, threshold: float | None = None
) -> np.ndarray:
    """Binary mask from a label image; colour reduced by any channel (an alpha channel is
    ignored).

    Without ``threshold`` the values must be those of a binary mask: boolean, 0/1 or 0/255;
    anything else (a background of 1-3, a label image with many classes, probabilities) raises
    ``ValueError`` naming the values found, since reading it as "nonzero is lesion" would
    silently mark most of the image as lesion. With ``threshold`` a value above it is True.

    ``rgb`` says whether the last axis is a colour axis (guessed from shape when ``None``:
    a last axis of 3 or 4 on a 3D array).
    """
    arr = np.asarray(arr)
    if rgb is None:
        rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    if rgb and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if threshold is not None:
        t = float(threshold)
        if not np.isfinite(t):
            raise ValueError(f"mask threshold must be a finite number, got {threshold!r}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError("the mask has NaN or infinite values")
        binary = arr > t
    else:
        if arr.dtype != bool:
            if arr.dtype.kind not in "iuf":
                raise ValueError(f"a mask must hold numbers, got dtype {arr.dtype}")
            values = mask_values(arr)
            if not (set(values) <= {0, 1} or set(values) <= {0, 255}):
                shown = ", ".join(str(v) for v in values)
                raise ValueError(
                    f"the mask holds the values {shown}, not a binary mask (0/1, 0/255 or "
                    "boolean): pass a mask threshold (e.g. --mask-threshold 0 if its "
                    "background is 0) or fix the mask file"
                )
        binary = arr != 0
    return np.any(binary, axis=-1) if rgb else binary


def read_mask(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    threshold: float | None = None,
) -> np.ndarray:
    """Read a 2D mask as bool ``[H, W]`` (see :func:`mask_from_array`: 0/1, 0/255 or boolean,
    or any values with ``threshold``); :class:`ImageReadError` names the file."""
    loaded = load_image(path, max_pixels=max_pixels)
    data = loaded.data
    if loaded.is_volume:
        if data.shape[0] != 1:
            raise ImageReadError(
                loaded.path,
                f"expected a 2D mask but found a volume of {data.shape[0]} slices; "
                f"use load_image for volumes",
            )
        data = data[0]
    try:
        return mask_from_array(data, rgb=loaded.rgb, threshold=threshold)
    except ValueError as exc:
        raise ImageReadError(loaded.path, str(exc)) from exc


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write a mask as uint8 0/255 PNG or TIFF (by suffix), atomically.

    The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so a crash never leaves a half-written mask. TIFF also accepts a volume
    ``[Z, H, W]``. Returns the path.
    """
    p = Path(path)
    suffix = image_suffix(p)
    if suffix not in _MASK_WRITE_SUFFIXES:
        raise ValueError(
            f"cannot write mask '{p}': unsupported suffix '{suffix}' "
            f"(use one of {', '.join(_MASK_WRITE_SUFFIXES)})"
        )
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 and not (arr.ndim == 3 and suffix in _TIFF_SUFFIXES):
        raise ValueError(
            f"cannot write mask '{p}': expected a 2D mask [H, W], got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"cannot write mask '{p}': the mask is empty (shape {arr.shape})")
    out = np.where(arr != 0, np.uint8(255), np.uint8(0)).astype(np.uint8)

    def write(tmp: str) -> None:
        if suffix == ".png":
            from PIL import Image

            Image.fromarray(out).save(tmp, format="PNG")
        else:
            import tifffile

            tifffile.imwrite(tmp, out, compression="zlib")

    return _write_atomically(p, write)


def write_prob(path: str | os.PathLike, prob: np.ndarray) -> Path:
    """Write a probability map as a float32 TIFF, atomically (see :func:`write_mask`)."""
    import tifffile

    p = Path(path)
    if image_suffix(p) not in _TIFF_SUFFIXES:
        raise ValueError(f"cannot write probabilities to '{p}': use a .tif or .tiff name")
    data = np.asarray(prob, dtype=np.float32)
    return _write_atomically(p, lambda tmp: tifffile.imwrite(tmp, data))


def _write_atomically(p: Path, write) -> Path:
    """``write(tmp)`` into a temporary file beside ``p``, fsync, then move it onto ``p``."""
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = image_suffix(p)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=f".tmp{suffix}", dir=p.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; keep the old file's mode, else the usual 0644.
        os.chmod(tmp, (p.stat().st_mode & 0o777) if p.exists() else 0o644)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p

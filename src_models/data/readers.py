"""The per-format readers behind :func:`~src_models.data.io.load_image` and
:func:`~src_models.data.io.probe_image`: Pillow (PNG, JPEG, BMP), tifffile (TIFF), pydicom
(DICOM) and nibabel (NIfTI).

``_dispatch(path, max_pixels, decode)`` picks the reader by suffix (a suffix-less file with the
DICOM preamble is read as DICOM); with ``decode`` it returns a :class:`LoadedImage`, without it
``(spatial shape, rgb)`` from the header only. Array conventions and the DICOM/NIfTI
orientation rules are in :mod:`src_models.data.io`; every failure raises
:class:`ImageReadError`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src_models.errors import UserError

__all__ = ["IMAGE_SUFFIXES", "ImageReadError", "LoadedImage", "image_suffix"]

#: File suffixes :func:`read_image` understands (lower case; ``.nii.gz`` is a double suffix).
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".dcm",
    ".dicom",
    ".nii",
    ".nii.gz",
)

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_TIFF_SUFFIXES = (".tif", ".tiff")
_DICOM_SUFFIXES = (".dcm", ".dicom")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")

# Pillow's decompression-bomb guard is a module global; we swap in our own limit while we
# read, under a lock so that concurrent reads from this module do not undo each other.
_PIL_LOCK = threading.Lock()


class ImageReadError(UserError, ValueError):
    """An image or mask file could not be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"Cannot read image '{self.path}': {reason}")


@dataclass
class LoadedImage:
    """An image as read from disk, with how its axes are to be understood.

    ``data`` is ``[H, W]``, ``[H, W, C]``, ``[Z, H, W]`` or ``[Z, H, W, C]``;
    ``is_volume`` tells whether the first axis is Z (slices); ``rgb`` whether the last axis
    holds colour samples (RGB or RGBA).
    """

    data: np.ndarray
    is_volume: bool
    rgb: bool
    path: Path

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``(H, W)`` for a 2D image, ``(Z, H, W)`` for a volume (colour axis dropped)."""
        return tuple(self.data.shape[:-1] if self.rgb else self.data.shape)

    @property
    def num_slices(self) -> int:
        return int(self.data.shape[0]) if self.is_volume else 1

    def slice(self, z: int) -> np.ndarray:
        """The 2D image ``[H, W]`` or ``[H, W, C]`` of slice ``z`` (``z`` = 0 for 2D images)."""
        if self.is_volume:
            return self.data[z]
        if z != 0:
            raise IndexError(f"{self.path} is a 2D image: slice {z} does not exist")
        return self.data


# --------------------------------------------------------------------------- suffixes


def image_suffix(path: str | os.PathLike) -> str:
    """The lower-case suffix that decides the format (``.nii.gz`` counts as one suffix)."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


# --------------------------------------------------------------------------- readers


def _check_shape(path: Path, shape: tuple[int, ...], max_pixels: int | None) -> None:
    if len(shape) == 0 or any(int(s) == 0 for s in shape):
        raise ImageReadError(path, f"the image is empty (shape {tuple(shape)})")
    if max_pixels is not None:
        n = int(np.prod([int(s) for s in shape], dtype=np.float64))
        if n > max_pixels:
            raise ImageReadError(
                path,
                f"the image has {n} pixels (shape {tuple(shape)}), more than the limit of "
                f"{max_pixels}; raise max_pixels to read it anyway",
            )


def _pil_open(path: Path, max_pixels: int | None, decode: bool) -> LoadedImage | tuple:
    from PIL import Image, ImageOps, UnidentifiedImageError

    with _PIL_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        # Pillow warns above its limit and refuses above twice the limit; we check ourselves.
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as im:
                w, h = im.size
                _check_shape(path, (h, w), max_pixels)
                if not decode:
                    rgb = im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV")
                    return (h, w), rgb
                if im.format == "JPEG":
                    im = ImageOps.exif_transpose(im)
                mode = im.mode
                if mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                elif mode == "LA":
                    im = im.getchannel(0)
                elif mode == "PA":
                    im = im.convert("RGBA")
                im.load()
                arr = np.asarray(im)
        except ImageReadError:
            raise
        except UnidentifiedImageError as exc:
            raise ImageReadError(path, "not a valid image file (corrupt or wrong suffix)") from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageReadError(path, f"corrupt or truncated image ({exc})") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = old
    arr = np.array(arr)  # own, writable memory
    rgb = arr.ndim == 3
    return LoadedImage(arr, is_volume=False, rgb=rgb, path=path)


class _ChannelError(ValueError):
    """A TIFF whose channels are neither grey, RGB nor RGBA."""


def _tiff_layout(shape: tuple[int, ...], axes: str) -> tuple[tuple[int, ...], bool, bool, list]:
    """How a tifffile series (shape, axes) maps onto our conventions.

    Returns ``(out_shape, is_volume, rgb, plan)``; ``plan`` is a list of numpy operations the
    reader applies: ("moveaxis", src, dst) or ("squeeze", axis).
    """
    axes = axes.upper()
    shape = tuple(int(s) for s in shape)
    plan: list = []
    rgb = False
    cur_axes = list(axes)
    cur_shape = list(shape)
    if "S" in cur_axes and cur_shape[cur_axes.index("S")] in (3, 4):
        rgb = True
        i = cur_axes.index("S")
        if i != len(cur_axes) - 1:
            plan.append(("moveaxis", i, -1))
            cur_axes.append(cur_axes.pop(i))
            cur_shape.append(cur_shape.pop(i))
    elif "C" in cur_axes and cur_shape[cur_axes.index("C")] in (3, 4) and "S" not in cur_axes:
        rgb = True
        i = cur_axes.index("C")
        plan.append(("moveaxis", i, -1))
        cur_axes.append(cur_axes.pop(i))
        cur_shape.append(cur_shape.pop(i))
    for ax in "SC":
        if not rgb and ax in cur_axes and cur_shape[cur_axes.index(ax)] not in (1,):
            n = cur_shape[cur_axes.index(ax)]
            raise _ChannelError(f"it has {n} channels (shape {shape}, axes {axes})")
    if (
        not rgb
        and len(cur_shape) == 3
        and cur_axes[0] in "QI"
        and 2 <= cur_shape[-1] <= 4
        and min(cur_shape[:2]) > 4 * cur_shape[-1]
    ):
        # [H, W, 2] written without saying what its last axis is: read as H slices of
        # W x 2 pixels, it would be a volume of thin strips
        raise _ChannelError(f"it looks like an image with {cur_shape[-1]} channels (shape {shape})")
    n_spatial = 3 if rgb else 2
    lead = cur_shape[: len(cur_shape) - n_spatial]
    tail = cur_shape[len(cur_shape) - n_spatial :]
    if len(tail) < 2:
        return tuple(cur_shape), False, rgb, plan
    z = int(np.prod(lead)) if lead else 1
    if lead and z > 1:
        plan.append(("reshape", tuple([z, *tail])))
        return tuple([z, *tail]), True, rgb, plan
    if lead:
        plan.append(("reshape", tuple(tail)))
    return tuple(tail), False, rgb, plan


def _tiff_open(path: Path, max_pixels: int | None, decode: bool):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            if not tf.series:
                raise ImageReadError(path, "the TIFF file holds no image data")
            series = tf.series[0]
            try:
                shape, is_volume, rgb, plan = _tiff_layout(series.shape, series.axes)
            except _ChannelError as exc:
                raise ImageReadError(
                    path,
                    f"{exc}; napari-lvit reads grey, RGB or RGBA images [H, W] / [H, W, 3|4] "
                    "and volumes [Z, H, W]: save one channel, or the image as RGB",
                ) from exc
            _check_shape(path, shape[:-1] if rgb else shape, max_pixels)
            if not decode:
                return (shape[:-1] if rgb else shape), rgb
            arr = series.asarray()
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many exception types for corrupt files
        raise ImageReadError(path, f"not a valid TIFF file ({type(exc).__name__}: {exc})") from exc
    for step in plan:
        if step[0] == "moveaxis":
            arr = np.moveaxis(arr, step[1], step[2])
        elif step[0] == "reshape":
            arr = arr.reshape(step[1])
    return LoadedImage(np.ascontiguousarray(arr), is_volume=is_volume, rgb=rgb, path=path)


def _dicom_open(path: Path, max_pixels: int | None, decode: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not decode)
    except InvalidDicomError as exc:
        raise ImageReadError(path, f"not a valid DICOM file ({exc})") from exc
    except Exception as exc:
        raise ImageReadError(path, f"corrupt DICOM file ({type(exc).__name__}: {exc})") from exc
    rows = int(getattr(ds, "Rows", 0) or 0)
    cols = int(getattr(ds, "Columns", 0) or 0)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if rows == 0 or cols == 0:
        raise ImageReadError(path, "the DICOM file holds no image (Rows/Columns missing or 0)")
    _check_shape(path, (frames, rows, cols), max_pixels)
    rgb = samples in (3, 4)
    is_volume = frames > 1
    if not decode:
        shape = (frames, rows, cols) if is_volume else (rows, cols)
        return shape, rgb
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(path, "the DICOM file has no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise ImageReadError(
            path,
            f"cannot decode the DICOM pixel data (transfer syntax {ts}; compressed data may need "
            f"an extra decoder such as pylibjpeg or python-gdcm): {exc}",
        ) from exc
    arr = np.array(arr)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1" and not rgb:
        arr = arr.max() - arr + arr.min() if arr.size else arr
    slope = getattr(ds, "RescaleSlope", None)
    intercept = getattr(ds, "RescaleIntercept", None)
    if (slope is not None or intercept is not None) and not rgb:
        slope = float(slope) if slope is not None else 1.0
        intercept = float(intercept) if intercept is not None else 0.0
        arr = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return LoadedImage(arr, is_volume=is_volume, rgb=rgb, path=path)


def _nifti_display_plan(img) -> tuple[bool, bool]:
    """(flip_cols, flip_rows) that put axial NIfTI slices into radiological display."""
    import nibabel as nib

    try:
        codes = nib.aff2axcodes(img.affine)
    except Exception:
        return False, False
    if len(codes) < 2 or codes[0] not in ("L", "R") or codes[1] not in ("A", "P"):
        return False, False
    # Columns should run toward the patient's left, rows toward posterior (DICOM LPS display).
    return codes[0] == "R", codes[1] == "A"


def _nifti_open(path: Path, max_pixels: int | None, decode: bool):
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise ImageReadError(path, f"not a valid NIfTI file ({type(exc).__name__}: {exc})") from exc
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 3 and shape[-1] == 1:
        shape = shape[:2]
    if len(shape) not in (2, 3):
        raise ImageReadError(
            path, f"NIfTI images with shape {tuple(img.shape)} are not supported (only 2D or 3D)"
        )
    _check_shape(path, shape, max_pixels)
    is_volume = len(shape) == 3
    if not decode:
        out = (shape[2], shape[1], shape[0]) if is_volume else (shape[1], shape[0])
        return out, False
    try:
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise ImageReadError(path, f"corrupt NIfTI data ({type(exc).__name__}: {exc})") from exc
    arr = np.asarray(arr).reshape(shape)
    if arr.dtype.fields is not None:
        raise ImageReadError(path, f"NIfTI data type {arr.dtype} (e.g. RGB) is not supported")
    flip_cols, flip_rows = _nifti_display_plan(img)
    if flip_cols:
        arr = arr[::-1]
    if flip_rows:
        arr = arr[:, ::-1]
    # [X, Y(, Z)] -> [(Z,) Y, X]: rows = second stored axis, columns = first.
    arr = arr.transpose(2, 1, 0) if is_volume else arr.T
    return LoadedImage(np.ascontiguousarray(arr), is_volume=is_volume, rgb=False, path=path)


def _dispatch(path: str | os.PathLike, max_pixels: int | None, decode: bool):
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "the file does not exist")
    if p.is_dir():
        raise ImageReadError(p, "it is a folder, not an image file")
    suffix = image_suffix(p)
    if suffix in _PIL_SUFFIXES:
        return _pil_open(p, max_pixels, decode)
    if suffix in _TIFF_SUFFIXES:
        return _tiff_open(p, max_pixels, decode)
    if suffix in _DICOM_SUFFIXES:
        return _dicom_open(p, max_pixels, decode)
    if suffix in _NIFTI_SUFFIXES:
        return _nifti_open(p, max_pixels, decode)
    if suffix == "" and _looks_like_dicom(p):
        return _dicom_open(p, max_pixels, decode)
    raise ImageReadError(
        p,
        f"unsupported file type '{suffix or '(no suffix)'}'; "
        f"supported: {', '.join(IMAGE_SUFFIXES)}",
    )


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"

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
from dataclasses import dataclass, field
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
    #: Physical size of one pixel along each spatial axis, in napari's order (``(z, y, x)`` or
    #: ``(y, x)``), in millimetres; ``None`` when the file does not say.
    spacing: tuple[float, ...] | None = None
    #: World position of the first voxel (index 0 on every axis), same axis order, in mm; for
    #: DICOM and NIfTI the world is patient space (DICOM LPS) with its axes reversed, so that
    #: an axial scan's world axes are (inferior->superior, anterior->posterior, right->left).
    origin: tuple[float, ...] | None = None
    #: ``direction[:, k]`` is the unit world vector along index axis ``k`` (same axis order).
    direction: np.ndarray | None = None
    #: The files read, in slice order (a DICOM series: one per slice); empty = just ``path``.
    source_files: tuple[Path, ...] = ()
    #: Format-specific facts (DICOM: ``series_uid``, ``study_uid``, ``modality``, ...).
    meta: dict = field(default_factory=dict)

    @property
    def affine(self) -> np.ndarray | None:
        """The ``(n+1) x (n+1)`` index -> world (mm) matrix in napari's axis order (``n`` = 2
        or 3 spatial axes), or ``None`` when the spacing is unknown."""
        if self.spacing is None:
            return None
        n = len(self.spacing)
        direction = np.eye(n) if self.direction is None else np.asarray(self.direction, float)
        origin = np.zeros(n) if self.origin is None else np.asarray(self.origin, float)
        out = np.eye(n + 1)
        out[:n, :n] = direction @ np.diag(np.asarray(self.spacing, float))
        out[:n, n] = origin
        return out

    @property
    def axis_aligned(self) -> bool:
        """True when every index axis runs along its own world axis (no rotation or flip)."""
        return self.direction is None or bool(
            np.allclose(self.direction, np.eye(len(self.direction)), atol=1e-4)
        )

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
            spacing = _tiff_spacing(tf, is_volume)
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many exception types for corrupt files
        raise ImageReadError(path, f"not a valid TIFF file ({type(exc).__name__}: {exc})") from exc
    for step in plan:
        if step[0] == "moveaxis":
            arr = np.moveaxis(arr, step[1], step[2])
        elif step[0] == "reshape":
            arr = arr.reshape(step[1])
    return LoadedImage(
        np.ascontiguousarray(arr),
        is_volume=is_volume,
        rgb=rgb,
        path=path,
        spacing=spacing,
        source_files=(path,),
        meta={"format": "tiff"},
    )


#: Millimetres per unit of length, for TIFF / ImageJ resolution units.
_MM_PER_UNIT = {
    "inch": 25.4,
    "cm": 10.0,
    "centimeter": 10.0,
    "mm": 1.0,
    "millimeter": 1.0,
    "micron": 1e-3,
    "um": 1e-3,
    "\u00b5m": 1e-3,
    "nm": 1e-6,
}


def _tiff_spacing(tf, is_volume: bool) -> tuple[float, ...] | None:
    """Pixel size in mm from the resolution tags (ImageJ ``unit`` / ``spacing`` for volumes),
    or ``None`` when the file does not say (no unit, or resolution 1 pixel per unit)."""
    try:
        tags = tf.pages[0].tags
        xres, yres = tags.get("XResolution"), tags.get("YResolution")
        if xres is None or yres is None:
            return None
        unit_tag = tags.get("ResolutionUnit")
        unit = int(unit_tag.value) if unit_tag is not None else 2
        ij = tf.imagej_metadata or {}
        if unit == 2:
            mm = 25.4
        elif unit == 3:
            mm = 10.0
        else:
            mm = _MM_PER_UNIT.get(str(ij.get("unit", "")).strip().lower())
            if mm is None:
                return None

        def per_pixel(value) -> float:
            num, den = value if isinstance(value, tuple) else (value, 1)
            return mm * float(den) / float(num)

        x, y = per_pixel(xres.value), per_pixel(yres.value)
        if unit == 2 and xres.value in ((1, 1), (72, 1)) and yres.value == xres.value:
            return None  # the writer's default, not a measured size
        if not (np.isfinite([x, y]).all() and x > 0 and y > 0):
            return None
        if not is_volume:
            return (y, x)
        z = ij.get("spacing")
        if z is None or not float(z) > 0 or unit in (2, 3):
            return None
        return (float(z) * mm, y, x)
    except Exception:  # resolution tags are optional: an odd one means "unknown"
        return None


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
    from .dicom import load_single

    return load_single(ds, path, max_pixels)


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
    geo = _nifti_geometry(img, shape, flip_cols, flip_rows, is_volume)
    return LoadedImage(
        np.ascontiguousarray(arr),
        is_volume=is_volume,
        rgb=False,
        path=path,
        source_files=(path,),
        meta={"format": "nifti"},
        **geo,
    )


#: Swaps the first and third of 3 coordinates (napari (z, y, x) <-> (x, y, z)), homogeneous.
_SWAP_XZ = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
#: RAS (NIfTI) <-> LPS (DICOM) world coordinates.
_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _nifti_geometry(img, shape, flip_cols: bool, flip_rows: bool, is_volume: bool) -> dict:
    """spacing/origin/direction of the array as :func:`_nifti_open` returns it (after its flips
    and transpose) in reversed-LPS world coordinates, from the NIfTI affine."""
    try:
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception:
        return {}
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        return {}
    nx, ny = shape[0], shape[1]
    # loaded index (a, b, c) -> stored voxel (i, j, k)
    m = np.zeros((4, 4))
    m[0, 2], m[0, 3] = (-1.0, nx - 1.0) if flip_cols else (1.0, 0.0)
    m[1, 1], m[1, 3] = (-1.0, ny - 1.0) if flip_rows else (1.0, 0.0)
    m[2, 0] = 1.0
    m[3, 3] = 1.0
    full = _SWAP_XZ @ _RAS_LPS @ affine @ m
    lin = full[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    if not (spacing > 0).all():
        return {}
    if not is_volume:
        return {"spacing": (float(spacing[1]), float(spacing[2]))}
    return {
        "spacing": tuple(float(v) for v in spacing),
        "origin": tuple(float(v) for v in full[:3, 3]),
        "direction": lin / spacing,
    }


def nifti_affine_from_napari(affine: np.ndarray) -> np.ndarray:
    """The NIfTI (RAS, stored ``[x, y, z]``) affine of an array ``[z, y, x]`` whose napari
    (reversed-LPS world) affine is ``affine`` (4x4; a 3x3 for 2D ``[y, x]`` is lifted)."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape == (3, 3):
        lifted = np.eye(4)
        lifted[1:, 1:] = a
        a = lifted
    if a.shape != (4, 4):
        raise ValueError(f"expected a 4x4 (or 3x3) affine, got shape {a.shape}")
    return _RAS_LPS @ _SWAP_XZ @ a @ _SWAP_XZ


def _dispatch(path: str | os.PathLike, max_pixels: int | None, decode: bool):
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "the file does not exist")
    if p.is_dir():
        return _dicom_folder_open(p, max_pixels, decode)
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


def _dicom_folder_open(path: Path, max_pixels: int | None, decode: bool):
    """A folder holding one DICOM series (:func:`~src_models.data.dicom.load_dicom_series`
    reads a folder of several)."""
    from .dicom import dicom_series, is_dicom_folder, load_dicom_series

    if not is_dicom_folder(path):
        raise ImageReadError(path, "it is a folder without DICOM files, not an image file")
    found = dicom_series(path)
    if len(found) > 1:
        names = "; ".join(f"{s.label} ({len(s.files)} files)" for s in found[:6])
        raise ImageReadError(
            path,
            f"the folder holds {len(found)} DICOM series ({names}); open one series (a "
            "folder of its own, or load_dicom_series(folder, series_uid=...))",
        )
    if not decode:
        first = _dicom_open(found[0].files[0], None, False)
        shape, rgb = first
        n = len(found[0].files)
        if n > 1:
            shape = (n, *shape[-2:])
        _check_shape(path, shape, max_pixels)
        return shape, rgb
    return load_dicom_series(path, max_pixels=max_pixels)[0]


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"

"""DICOM series: find the slices of each series in a folder (or a list of files), sort them along
the slice normal and stack them into a volume with its geometry.

- slices are grouped by ``SeriesInstanceUID`` (and, within a series, by image size and
  orientation, so that a localizer sharing the UID does not break the stack);
- sorted by ``ImagePositionPatient . normal``, the normal being the cross product of the two
  ``ImageOrientationPatient`` cosines (``InstanceNumber`` when a slice has no position);
- ``RescaleSlope`` / ``RescaleIntercept`` are applied per slice (float32 result);
- spacing ``(slice spacing, row spacing, column spacing)`` in mm, the slice spacing being the
  median distance between consecutive positions; origin = the first slice's position;
- multi-frame files (enhanced CT/MR) take their per-frame positions from the functional groups.

Geometry uses napari's axis order ``(z, y, x)``; world coordinates are DICOM patient
coordinates (LPS) with the axes reversed: ``world = (S, P, L)`` for an axial scan, so an axial
series has an identity direction and ``scale`` / ``translate`` alone place it.

Compressed transfer syntaxes are decoded by pydicom's pixel-data plugins (pylibjpeg with its
libjpeg, openjpeg and rle plugins; pydicom's own RLE decoder); what none of them can decode
raises :class:`~src_models.data.readers.ImageReadError` naming the transfer syntax.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .readers import ImageReadError, LoadedImage, _check_shape, _looks_like_dicom, image_suffix

__all__ = [
    "DicomSeries",
    "decode_pixels",
    "dicom_files",
    "dicom_series",
    "is_dicom_folder",
    "load_dicom_series",
]

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


@dataclass(frozen=True)
class DicomSeries:
    """One stackable series: its files in slice order and what identifies it."""

    series_uid: str
    files: tuple[Path, ...]
    description: str
    number: int | None
    modality: str

    @property
    def label(self) -> str:
        """A short name for a layer or a message: number and description, else the UID."""
        parts = [str(self.number) if self.number is not None else "", self.description]
        text = " ".join(p for p in parts if p).strip()
        return text or self.series_uid


def _is_dicom_file(p: Path) -> bool:
    if p.name.startswith(".") or not p.is_file():
        return False
    return image_suffix(p) in _DICOM_SUFFIXES or _looks_like_dicom(p)


def dicom_files(folder: str | os.PathLike) -> list[Path]:
    """The DICOM files directly inside ``folder`` (by suffix or the ``DICM`` preamble),
    sorted by name; not recursive."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _is_dicom_file(p))


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True for a folder holding at least one DICOM file."""
    p = Path(path)
    return p.is_dir() and any(_is_dicom_file(c) for c in p.iterdir())


def _files_of(source: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[Path, list[Path]]:
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.exists():
            raise ImageReadError(root, "the file or folder does not exist")
        if root.is_dir():
            files = dicom_files(root)
            if not files:
                raise ImageReadError(root, "the folder holds no DICOM files (.dcm or DICM header)")
            return root, files
        return root, [root]
    files = [Path(f) for f in source]
    if not files:
        raise ValueError("no DICOM files given")
    for f in files:
        if not f.is_file():
            raise ImageReadError(f, "the file does not exist")
    return files[0].parent, files


def _floats(value, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.isfinite(arr).all() else None


def _orientation(ds) -> np.ndarray | None:
    iop = _floats(getattr(ds, "ImageOrientationPatient", None) or (), 6)
    if iop is None:
        return None
    row, col = iop[:3], iop[3:]
    if np.linalg.norm(row) < 1e-6 or np.linalg.norm(col) < 1e-6:
        return None
    return iop


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise ImageReadError(path, f"not a valid DICOM file ({exc})") from exc
    except Exception as exc:
        raise ImageReadError(path, f"corrupt DICOM file ({type(exc).__name__}: {exc})") from exc


def dicom_series(
    source: str | os.PathLike | Iterable[str | os.PathLike],
) -> list[DicomSeries]:
    """The series found in a folder (or a list of files), each with its files in slice order.

    Files without pixel data (DICOMDIR, reports) are skipped; series are ordered by
    ``SeriesNumber`` then UID. Raises :class:`ImageReadError` when no image is found.
    """
    root, files = _files_of(source)
    groups: dict[tuple, list[tuple[Path, object]]] = {}
    for f in files:
        ds = _read_header(f)
        if not int(getattr(ds, "Rows", 0) or 0) or not int(getattr(ds, "Columns", 0) or 0):
            continue  # no image in it
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        iop = _orientation(ds)
        key = (
            uid,
            int(ds.Rows),
            int(ds.Columns),
            None if iop is None else tuple(np.round(iop, 3)),
        )
        groups.setdefault(key, []).append((f, ds))
    if not groups:
        raise ImageReadError(root, "no DICOM image (with Rows and Columns) was found")
    out = []
    by_uid: dict[str, int] = {}
    for key, members in groups.items():
        uid = key[0]
        by_uid[uid] = by_uid.get(uid, 0) + 1
        ds0 = members[0][1]
        members = _sorted_members(members)
        number = getattr(ds0, "SeriesNumber", None)
        out.append(
            DicomSeries(
                series_uid=uid if by_uid[uid] == 1 else f"{uid}#{by_uid[uid]}",
                files=tuple(m[0] for m in members),
                description=str(getattr(ds0, "SeriesDescription", "") or ""),
                number=int(number) if number not in (None, "") else None,
                modality=str(getattr(ds0, "Modality", "") or ""),
            )
        )
    out.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.series_uid))
    return out


def _sorted_members(members: list[tuple[Path, object]]) -> list[tuple[Path, object]]:
    iop = _orientation(members[0][1])
    positions = [_floats(getattr(ds, "ImagePositionPatient", None) or (), 3) for _, ds in members]
    if iop is not None and all(p is not None for p in positions):
        normal = np.cross(iop[:3], iop[3:])
        keys = [float(np.dot(p, normal)) for p in positions]
    else:
        keys = [float(getattr(ds, "InstanceNumber", 0) or 0) for _, ds in members]
    order = sorted(range(len(members)), key=lambda i: (keys[i], str(members[i][0])))
    return [members[i] for i in order]


def decode_pixels(ds, path: Path) -> np.ndarray:
    """``ds.pixel_array`` (a new, writable array); a transfer syntax that no installed plugin
    decodes raises :class:`ImageReadError` naming it."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(path, "the DICOM file has no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        from pydicom.uid import UID

        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = f"{UID(ts).name} ({ts})" if ts else "(not stated)"
        raise ImageReadError(
            path,
            f"cannot decode the DICOM pixel data of transfer syntax {name}: "
            f"{' '.join(str(exc).split())[:200]}",
        ) from exc
    return np.array(arr)


def _rescale(ds) -> tuple[float, float] | None:
    slope = getattr(ds, "RescaleSlope", None)
    intercept = getattr(ds, "RescaleIntercept", None)
    if slope is None and intercept is None:
        return None
    return (
        float(slope) if slope not in (None, "") else 1.0,
        float(intercept) if intercept not in (None, "") else 0.0,
    )


def _pixel_spacing(ds) -> tuple[float, float] | None:
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        ps = _floats(getattr(ds, tag, None) or (), 2)
        if ps is not None and (ps > 0).all():
            return float(ps[0]), float(ps[1])
    return None


def _direction(iop: np.ndarray) -> np.ndarray:
    """The (z, y, x) direction matrix in reversed-LPS world coordinates."""
    row, col = iop[:3], iop[3:]
    row = row / np.linalg.norm(row)
    col = col / np.linalg.norm(col)
    normal = np.cross(row, col)
    return np.stack([normal[::-1], col[::-1], row[::-1]], axis=1)


def _slice_spacing(positions: list[np.ndarray] | None, normal, ds, where: Path) -> float:
    if positions is not None and len(positions) > 1 and normal is not None:
        d = np.diff([float(np.dot(p, normal)) for p in positions])
        dz = float(np.median(d))
        if dz > 0:
            if float(d.max() - d.min()) > max(1e-3, 0.01 * dz):
                warnings.warn(
                    f"{where}: the slice spacing is not uniform ({d.min():.3g} to "
                    f"{d.max():.3g} mm); the median {dz:.3g} mm is used",
                    stacklevel=3,
                )
            return dz
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        v = getattr(ds, tag, None)
        try:
            if v not in (None, "") and float(v) > 0:
                return float(v)
        except (TypeError, ValueError):
            pass
    return 1.0


def _geometry(shape3, iop, positions, pixel_spacing, ds, where: Path) -> dict:
    """spacing/origin/direction for a stack ``[Z, H, W]`` (or ``[H, W]`` when Z is None)."""
    if shape3 is None:  # a 2D image: in-plane spacing only
        return {"spacing": pixel_spacing} if pixel_spacing is not None else {}
    if pixel_spacing is None and iop is None:
        return {}
    dy, dx = pixel_spacing if pixel_spacing is not None else (1.0, 1.0)
    normal = None if iop is None else np.cross(iop[:3], iop[3:])
    dz = _slice_spacing(positions, normal, ds, where)
    geo: dict = {"spacing": (dz, dy, dx)}
    if iop is not None:
        geo["direction"] = _direction(iop)
    if positions is not None and positions:
        geo["origin"] = tuple(float(v) for v in positions[0][::-1])
    return geo


def _finish(arr: np.ndarray, ds, rgb: bool, rescales: list) -> np.ndarray:
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1" and not rgb and arr.size:
        arr = arr.max() - arr + arr.min()
    if not rgb and any(r is not None for r in rescales):
        out = arr.astype(np.float32)
        for k, r in enumerate(rescales):
            if r is not None:
                slope, intercept = r
                if len(rescales) == 1:
                    out = out * np.float32(slope) + np.float32(intercept)
                else:
                    out[k] = out[k] * np.float32(slope) + np.float32(intercept)
        return out
    return arr


def _meta(ds, files) -> dict:
    return {
        "format": "dicom",
        "series_uid": str(getattr(ds, "SeriesInstanceUID", "") or ""),
        "study_uid": str(getattr(ds, "StudyInstanceUID", "") or ""),
        "modality": str(getattr(ds, "Modality", "") or ""),
        "series_description": str(getattr(ds, "SeriesDescription", "") or ""),
        "sop_instance_uids": [],
        "files": [str(f) for f in files],
    }


def _functional(ds, frame: int, seq: str, item: str):
    """An attribute sequence item of a multi-frame file (per-frame first, then shared)."""
    for groups in (
        (getattr(ds, "PerFrameFunctionalGroupsSequence", None) or [None] * (frame + 1))[frame],
        (getattr(ds, "SharedFunctionalGroupsSequence", None) or [None])[0],
    ):
        if groups is not None and seq in groups and len(groups[seq].value):
            value = getattr(groups[seq].value[0], item, None)
            if value is not None:
                return value
    return None


def load_multiframe(ds, path: Path, max_pixels: int | None) -> LoadedImage:
    """A multi-frame DICOM file as a volume with its per-frame geometry (enhanced CT/MR)."""
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    _check_shape(path, (frames, rows, cols), max_pixels)
    rgb = int(getattr(ds, "SamplesPerPixel", 1) or 1) in (3, 4)
    arr = decode_pixels(ds, path)
    if arr.ndim == (3 if rgb else 2):
        arr = arr[None]
    iop = _orientation(ds)
    if iop is None:
        value = _functional(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
        iop = _floats(value or (), 6)
    positions = [
        _floats(_functional(ds, k, "PlanePositionSequence", "ImagePositionPatient") or (), 3)
        for k in range(frames)
    ]
    if any(p is None for p in positions):
        positions = None
    rescales = []
    for k in range(frames):
        slope = _functional(ds, k, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _functional(ds, k, "PixelValueTransformationSequence", "RescaleIntercept")
        rescales.append(
            (float(slope or 1.0), float(intercept or 0.0))
            if slope is not None or intercept is not None
            else _rescale(ds)
        )
    order = list(range(frames))
    if positions is not None and iop is not None:
        normal = np.cross(iop[:3], iop[3:])
        order = sorted(order, key=lambda k: float(np.dot(positions[k], normal)))
        positions = [positions[k] for k in order]
        arr = arr[order]
        rescales = [rescales[k] for k in order]
    ps = _pixel_spacing(ds)
    if ps is None:
        ps = _floats(_functional(ds, 0, "PixelMeasuresSequence", "PixelSpacing") or (), 2)
        ps = None if ps is None else (float(ps[0]), float(ps[1]))
    arr = _finish(arr, ds, rgb, rescales)
    geo = _geometry(arr.shape[:3], iop, positions, ps, ds, path)
    meta = _meta(ds, [path])
    meta["sop_instance_uids"] = [str(getattr(ds, "SOPInstanceUID", ""))]
    meta["frame_order"] = order
    return LoadedImage(
        np.ascontiguousarray(arr),
        is_volume=frames > 1,
        rgb=rgb,
        path=path,
        source_files=(path,),
        meta=meta,
        **geo,
    )


def load_single(ds, path: Path, max_pixels: int | None) -> LoadedImage:
    """One DICOM file (single- or multi-frame), with its geometry."""
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        return load_multiframe(ds, path, max_pixels)
    rgb = int(getattr(ds, "SamplesPerPixel", 1) or 1) in (3, 4)
    arr = _finish(decode_pixels(ds, path), ds, rgb, [_rescale(ds)])
    meta = _meta(ds, [path])
    meta["sop_instance_uids"] = [str(getattr(ds, "SOPInstanceUID", ""))]
    geo = _geometry(None, None, None, _pixel_spacing(ds), ds, path)
    return LoadedImage(
        arr, is_volume=False, rgb=rgb, path=path, source_files=(path,), meta=meta, **geo
    )


def _load_stack(series: DicomSeries, root: Path, max_pixels: int | None) -> LoadedImage:
    import pydicom

    files = series.files
    if len(files) == 1:
        path = files[0]
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise ImageReadError(path, f"corrupt DICOM file ({type(exc).__name__}: {exc})") from exc
        return load_single(ds, path, max_pixels)
    first = _read_header(files[0])
    rows, cols = int(first.Rows), int(first.Columns)
    rgb = int(getattr(first, "SamplesPerPixel", 1) or 1) in (3, 4)
    _check_shape(root, (len(files), rows, cols), max_pixels)
    slices, rescales, positions, uids = [], [], [], []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:
            raise ImageReadError(f, f"corrupt DICOM file ({type(exc).__name__}: {exc})") from exc
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise ImageReadError(
                f, "a multi-frame file inside a series of single slices: open it on its own"
            )
        slices.append(decode_pixels(ds, f))
        rescales.append(_rescale(ds))
        positions.append(_floats(getattr(ds, "ImagePositionPatient", None) or (), 3))
        uids.append(str(getattr(ds, "SOPInstanceUID", "")))
    arr = np.stack(slices)
    if any(r is not None for r in rescales):
        rescales = [r if r is not None else (1.0, 0.0) for r in rescales]
    arr = _finish(arr, first, rgb, rescales)
    if any(p is None for p in positions):
        positions = None
    geo = _geometry(
        arr.shape[:3], _orientation(first), positions, _pixel_spacing(first), first, root
    )
    meta = _meta(first, files)
    meta["sop_instance_uids"] = uids
    return LoadedImage(
        np.ascontiguousarray(arr),
        is_volume=True,
        rgb=rgb,
        path=root,
        source_files=tuple(files),
        meta=meta,
        **geo,
    )


def load_dicom_series(
    source: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    series_uid: str | None = None,
    max_pixels: int | None = 20000 * 20000,  # = io.DEFAULT_MAX_PIXELS
) -> list[LoadedImage]:
    """Every series in a folder (or a list of files) as one :class:`LoadedImage` each, in the
    order of :func:`dicom_series`; ``series_uid`` keeps only that series; ``max_pixels`` caps
    each volume (``None``: no cap)."""
    root, _ = _files_of(source)
    found = dicom_series(source)
    if series_uid is not None:
        found = [s for s in found if s.series_uid == series_uid]
        if not found:
            raise ImageReadError(root, f"no series with SeriesInstanceUID {series_uid}")
    out = []
    for s in found:
        loaded = _load_stack(s, root, max_pixels)
        loaded.meta["series_label"] = s.label
        loaded.meta["series_uid"] = s.series_uid.split("#")[0]
        out.append(loaded)
    return out


def write_dicom_series(
    folder: str | os.PathLike,
    volume: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    rescale: tuple[float, float] = (1.0, -1024.0),
    series_number: int = 1,
    description: str = "synthetic",
    modality: str = "CT",
    study_uid: str | None = None,
    transfer_syntax: str | None = None,
    file_names: Iterable[str] | None = None,
) -> list[Path]:
    """Write ``volume`` (``[Z, H, W]`` of stored integer values, uint16 or int16) as a DICOM
    series of single-slice files, for tests, demos and benchmarks.

    ``spacing`` is ``(slice, row, column)`` in mm, ``origin`` the first slice's
    ``ImagePositionPatient`` (LPS, x y z), ``orientation`` its ``ImageOrientationPatient``;
    slice ``k`` lies at ``origin + k * spacing[0] * normal``. ``transfer_syntax`` (a UID)
    compresses the pixel data with :meth:`pydicom.Dataset.compress`. Returns the files in
    slice order (their names, ``file_names`` or ``slice_###.dcm``, need not sort that way).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    vol = np.asarray(volume)
    if vol.ndim != 3 or vol.dtype not in (np.uint16, np.int16):
        raise ValueError(f"expected a [Z, H, W] uint16/int16 volume, got {vol.shape} {vol.dtype}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    names = list(file_names) if file_names is not None else None
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    iop = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    paths = []
    for k in range(vol.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        name = names[k] if names is not None else f"slice_{k:03d}.dcm"
        ds = FileDataset(str(out / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = "Synthetic^Patient"
        ds.PatientID = "SYNTH001"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate = ds.SeriesDate = "20260101"
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "napari-lvit"
        ds.Modality = modality
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(v) for v in iop]
        pos = np.asarray(origin, dtype=np.float64) + k * float(spacing[0]) * normal
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.RescaleSlope = rescale[0]
        ds.RescaleIntercept = rescale[1]
        ds.RescaleType = "HU"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if vol.dtype == np.int16 else 0
        ds.PixelData = np.ascontiguousarray(vol[k]).tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        ds.save_as(out / name, enforce_file_format=True)
        paths.append(out / name)
    return paths

"""Crash-safe file writing and the mask/array encodings of the project store.

Every file the store writes goes through :func:`atomic_write_bytes`: the bytes go to a hidden
temporary file in the destination folder, are flushed and fsynced, the temporary file is moved
onto the final name with ``os.replace`` and the folder itself is fsynced, so that after a crash
(or a kill) the final name either does not exist or holds the complete file.

Encoding happens in memory before anything touches the disk, so a failing encoder never leaves a
file behind. Only numpy, Pillow and (for volumes) tifffile are imported here: no torch.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

__all__ = [
    "TMP_MARK",
    "atomic_copy",
    "atomic_write_bytes",
    "decode_mask",
    "encode_mask_png",
    "encode_mask_tiff",
    "encode_npy",
    "fsync_dir",
    "is_temp_name",
    "makedirs_durable",
]

#: Marker in the names of temporary files (they also start with a dot).
TMP_MARK = ".tmp-"


def is_temp_name(name: str) -> bool:
    """True for the name of a temporary file written by :func:`atomic_write_bytes`."""
    return name.startswith(".") and TMP_MARK in name


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so that a rename or a new entry in it survives a crash (no-op on Windows)."""
    if os.name == "nt":  # pragma: no cover - directories cannot be opened on Windows
        return
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str | os.PathLike) -> Path:
    """Create a folder (and parents) and fsync the parents of every folder created."""
    p = Path(path)
    missing = []
    q = p
    while not q.exists():
        missing.append(q)
        if q.parent == q:
            break
        q = q.parent
    p.mkdir(parents=True, exist_ok=True)
    for m in reversed(missing):
        fsync_dir(m.parent)
    return p


def _temp_path(final: Path) -> Path:
    return final.parent / f".{final.name}{TMP_MARK}{secrets.token_hex(6)}"


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically and durably (temp + fsync + replace + fsync dir).

    With ``exclusive=True`` an existing file at ``path`` is never replaced: ``FileExistsError``
    is raised instead (checked before the move; callers that need a strict guarantee also hold
    the project's write lock).
    """
    final = Path(path)
    makedirs_durable(final.parent)
    if exclusive and final.exists():
        raise FileExistsError(f"refusing to overwrite '{final}'")
    tmp = _temp_path(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(final.parent)
    return final


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a file atomically and durably (same protocol as :func:`atomic_write_bytes`)."""
    final = Path(dst)
    makedirs_durable(final.parent)
    tmp = _temp_path(final)
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(final.parent)
    return final


# --------------------------------------------------------------------------- encodings


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A 2D binary mask as the bytes of an 8-bit grayscale PNG with values 0/255."""
    from PIL import Image

    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"a PNG mask must be 2D [H, W], got shape {arr.shape}")
    out = np.where(arr != 0, np.uint8(255), np.uint8(0))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(out)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_mask_tiff(mask: np.ndarray) -> bytes:
    """A binary volume mask ``[Z, H, W]`` as the bytes of a multi-page uint8 (0/255) TIFF."""
    import tifffile

    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"a volume mask must be 3D [Z, H, W], got shape {arr.shape}")
    out = np.where(arr != 0, np.uint8(255), np.uint8(0))
    buf = io.BytesIO()
    tifffile.imwrite(buf, out, compression="zlib", photometric="minisblack")
    return buf.getvalue()


def decode_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask file written by the store: bool ``[H, W]`` (PNG) or ``[Z, H, W]`` (TIFF)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        arr = tifffile.imread(p)
        return np.asarray(arr) != 0
    from PIL import Image

    with Image.open(p) as im:
        im.load()
        arr = np.asarray(im)
    if arr.ndim == 3:  # a colour PNG put there by hand: any nonzero channel counts
        arr = arr[..., :3].any(axis=-1)
    return np.asarray(arr) != 0


def encode_npy(arr: np.ndarray) -> bytes:
    """``arr`` as the bytes of a ``.npy`` file (no pickling)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()

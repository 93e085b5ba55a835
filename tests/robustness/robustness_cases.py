"""Helpers of the robustness suite (tests/robustness/ is on sys.path): bad inputs end in one
clear line, and nothing on disk changes.

Every case copies small synthetic inputs (:func:`assets`) into its own folder (``ws``), takes a
:func:`tree` of it, feeds one bad input through a boundary (the command line's ``main``, a
widget, or a library entry point) and asserts the one line the user sees and that the tree is
what it was (or grew only by what the case expects).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

BIG_SIDE = 20_000


def tree(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: relative path -> (content hash, mode, mtime) of a
    file, ``("<dir>", mode)`` of a folder.

    SQLite's shared-memory index (``*-shm``) is left out: every reader of a WAL database
    writes it, and it holds no data."""
    out: dict[str, tuple] = {}
    for p in sorted(Path(root).rglob("*")):
        if p.name.endswith("-shm"):
            continue
        st = p.stat()
        if p.is_dir():  # what it holds is listed; its mtime moves with SQLite's -wal file
            out[p.relative_to(root).as_posix()] = ("<dir>", st.st_mode)
            continue
        digest = hashlib.sha1(p.read_bytes()).hexdigest()
        out[p.relative_to(root).as_posix()] = (digest, st.st_mode, st.st_mtime_ns)
    return out


def png_header(path: Path, width: int, height: int, color_type: int = 2) -> Path:
    """A PNG whose header says ``width x height`` (8-bit, RGB by default) with a few bytes of
    pixel data: Pillow opens it and reports the size, and nothing big is ever written."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def one_error_line(capsys, command: str, code: int = 2) -> str:
    """The single stderr line of a failed command (asserted to be one line, for ``command``)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"napari-lvit {command}: error: "), lines[0]
    return lines[0]


def run_fails(capsys, argv: list[str], *fragments: str, code: int = 2, gui: bool = False) -> str:
    """Run ``napari-lvit ARGV`` in this process; assert exit ``code``, one stderr line that
    names the command and holds every fragment; return that line."""
    if gui:
        from napari_lvit._cli import main
    else:
        from src_models.cli import main
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    line = one_error_line(capsys, argv[0], code)
    assert rc == code, line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line

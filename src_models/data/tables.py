"""The text tables of LViT split folders: descriptions and image-level labels.

A split folder's table has columns ``Image`` and ``Description``. ``Image`` names the MASK file
(LViT); the image's own file name is accepted as well, with or without suffix. The table can be
``text.csv``, ``<Split>_text.xlsx`` / ``.csv`` inside the split folder (MoNuSeg), the only
``.csv`` / ``.xlsx`` file in it, or ``<Split>_text.xlsx`` / ``.csv`` beside the split folder
(QaTa-COV19: ``Train_text.xlsx`` next to ``Train_Folder/``). An optional column ``Label`` (or
``Lesion``) holds image-level labels, 1 = lesion, 0 = no lesion (:func:`read_label_table`).

Reading a table needs neither torch nor the images; :mod:`src_models.data.dataset` pairs the
rows with the files of a split.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from src_models.errors import UserError

from .io import image_suffix

__all__ = [
    "LABEL_COLUMNS",
    "DatasetError",
    "find_text_table",
    "read_label_table",
    "read_text_table",
]

_TABLE_SUFFIXES = (".csv", ".xlsx")


class DatasetError(UserError, ValueError):
    """A dataset folder or file is not usable; the message names the file and the reason."""


def _stem(name: str) -> str:
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else name


def _split_name(split_dir: Path) -> str:
    name = split_dir.name
    return name[: -len("_Folder")] if name.lower().endswith("_folder") else name


def find_text_table(split_dir: str | os.PathLike) -> Path | None:
    """The text table of a split folder, or ``None`` if there is none (see module docstring).

    Raises :class:`DatasetError` if several unrelated tables make the choice ambiguous.
    """
    d = Path(split_dir)
    split = _split_name(d)
    preferred = [d / "text.csv", d / "text.xlsx"]
    for base in (split, split.capitalize(), split.lower()):
        preferred += [d / f"{base}_text.xlsx", d / f"{base}_text.csv"]
    for p in preferred:
        if p.is_file():
            return p
    inside = sorted(
        p
        for p in d.glob("*")
        if p.is_file()
        and p.suffix.lower() in _TABLE_SUFFIXES
        and not p.name.startswith((".", "~$"))
    )
    if len(inside) == 1:
        return inside[0]
    if len(inside) > 1:
        raise DatasetError(
            f"Several text tables in '{d}': {', '.join(p.name for p in inside)}; name the one to "
            f"use 'text.csv' (or '{split}_text.xlsx')"
        )
    for base in (split, split.capitalize(), split.lower()):
        for suffix in (".xlsx", ".csv"):
            p = d.parent / f"{base}_text{suffix}"
            if p.is_file():
                return p
    return None


def _rows_from_csv(path: Path) -> list[list]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        return [row for row in csv.reader(fh, dialect)]


def _rows_from_xlsx(path: Path) -> list[list]:
    import openpyxl

    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        ws = wb.worksheets[0]
        return [list(row) for row in ws.iter_rows(values_only=True)]
    finally:
        wb.close()


def _table_rows(path: str | os.PathLike) -> tuple[Path, list[str], list[list]]:
    """``(path, lower-case header, rows from the header on)`` of a CSV/XLSX table."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".xlsx":
            rows = _rows_from_xlsx(p)
        elif p.suffix.lower() == ".csv":
            rows = _rows_from_csv(p)
        else:
            raise DatasetError(f"Text table '{p}': unsupported type (use .csv or .xlsx)")
    except DatasetError:
        raise
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"Text table '{p}' is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
            f"position {exc.start}): save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet)"
        ) from None
    except Exception as exc:
        raise DatasetError(f"Cannot read text table '{p}': {type(exc).__name__}: {exc}") from exc
    header_idx = None
    for i, row in enumerate(rows):
        if any(c is not None and str(c).strip() for c in row):
            header_idx = i
            break
    if header_idx is None:
        raise DatasetError(f"Text table '{p}' is empty")
    header = [str(c).strip().lower() if c is not None else "" for c in rows[header_idx]]
    return p, header, rows[header_idx:]


def read_text_table(path: str | os.PathLike) -> dict[str, str]:
    """Read an ``Image,Description`` table (CSV or XLSX) into ``{file name: description}``.

    Column names are matched case-insensitively and stripped; values are stripped; rows with an
    empty name are skipped. Raises :class:`DatasetError` for unreadable files, missing columns or
    one name given two different descriptions.
    """
    p, header, rows = _table_rows(path)
    header_idx = 0
    if "image" not in header or "description" not in header:
        raise DatasetError(
            f"Text table '{p}' needs columns 'Image' and 'Description'; found "
            f"{[str(c) for c in rows[header_idx]]}"
        )
    ii, di = header.index("image"), header.index("description")
    table: dict[str, str] = {}
    for row in rows[header_idx + 1 :]:
        name = row[ii] if ii < len(row) else None
        text = row[di] if di < len(row) else None
        if name is None or not str(name).strip():
            continue
        name = str(name).strip()
        text = "" if text is None else str(text).strip()
        if name in table and table[name] != text:
            raise DatasetError(
                f"Text table '{p}': '{name}' has two different descriptions: "
                f"{table[name]!r} and {text!r}"
            )
        table[name] = text
    return table


LABEL_COLUMNS = ("label", "lesion")
_LABEL_VALUES = {
    "1": 1, "yes": 1, "true": 1, "lesion": 1, "y": 1,
    "0": 0, "no": 0, "false": 0, "none": 0, "no lesion": 0, "n": 0,
}  # fmt: skip


def read_label_table(path: str | os.PathLike) -> dict[str, int]:
    """Image-level labels from a text table's ``Label`` (or ``Lesion``) column, if it has one.

    ``{file name: 1 (lesion) or 0 (no lesion)}``; empty cells are left out; values 1/0,
    yes/no, true/false. No such column: ``{}``. Raises :class:`DatasetError` for other values.
    """
    p, header, rows = _table_rows(path)
    col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
    if col is None or "image" not in header:
        return {}
    ii = header.index("image")
    labels: dict[str, int] = {}
    for row in rows[1:]:
        name = row[ii] if ii < len(row) else None
        value = row[col] if col < len(row) else None
        if name is None or not str(name).strip() or value is None or not str(value).strip():
            continue
        raw = str(value).strip().lower()
        if raw.endswith(".0"):
            raw = raw[:-2]  # spreadsheets store 1 as 1.0
        if raw not in _LABEL_VALUES:
            raise DatasetError(
                f"Text table '{p}': label {value!r} of '{name}' is not 0/1 (or yes/no)"
            )
        labels[str(name).strip()] = _LABEL_VALUES[raw]
    return labels


def _lookup_text(table: dict[str, str], names: Sequence[str]) -> str | None:
    for n in names:
        if n in table:
            return table[n]
    stems = {}
    for key, value in table.items():
        stems.setdefault(_stem(key), value)
    for n in names:
        s = _stem(n)
        if s in stems:
            return stems[s]
    return None

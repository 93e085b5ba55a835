"""The EPI pseudo-label bank: one soft map per unlabeled image, on disk, crash-safe.

EPI (Exponential Pseudo-label Iteration, LViT) keeps for every unlabeled image a pseudo label
that moves slowly towards the current model's prediction:

    P_t = beta * P_(t-1) + (1 - beta) * Phat_t        (paper: beta = 0.99)

The schedule problem
--------------------
The paper updates after every iteration (thousands of them), so ``beta = 0.99`` averages over
about 100 recent predictions. Here an update happens once per *round* (a few epochs of
training), and a retraining session runs only a handful of rounds. Then the plain recursion is
useless either way: started from ``P_0 = 0`` the label after 3 rounds is ``~0.03 * Phat`` (all
background after thresholding); started from the first prediction (``P_1 = Phat_1``, the
``"plain"`` schedule here) that first, worst prediction keeps 97% of the weight after 3 rounds,
so later, better models barely change the labels.

The default ``"corrected"`` schedule is Adam's bias correction: keep the biased average ``m_t``
from ``m_0 = 0`` and use ``P_t = m_t / (1 - beta^t)``. Written as an update of ``P`` itself it
is an EMA with a per-step coefficient

    beta_t = beta * (1 - beta^(t-1)) / (1 - beta^t)

which is 0 at ``t = 1`` (``P_1 = Phat_1``), about ``(t - 1) / t`` while ``t << 1/(1 - beta)``
(a running mean of all predictions so far: every round counts equally) and tends to ``beta``
for long runs (the paper's EMA). So it works with few rounds and becomes the paper's method with
many. We prefer it to ``beta_t = min(beta, 1 - 1/t)`` (the same early on, but with a kink)
because it is exactly unbiased for every ``t``. ``t`` counts per image, so an image that becomes
unlabeled later starts its own average; the bank's global counter counts the updates.

Storage
-------
``<folder>/index.json`` holds the global counter ``t``, ``beta``, the schedule, the dtype and
per image its update count and file; the maps are ``<key>.t<T>.npy`` (float16 by default, or
uint8 = round(255 P)), one file per image at the model size. An update writes all new files
first (atomic temp + ``os.replace``), then the index (atomically), then deletes the old files;
files the index does not name are removed when the bank is opened. A crash or a cancel in the
middle of an update therefore leaves the previous round's labels intact, and a new bank object
on the same folder continues ``t`` and the values exactly.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import secrets
import warnings
import zlib
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SCHEDULES", "BankUpdate", "PseudoLabelBank", "epi_beta", "epi_update"]

SCHEDULES = ("corrected", "plain")
_DTYPES = ("float16", "uint8")
_INDEX = "index.json"
_OWN_FILE = re.compile(r"^[A-Za-z0-9_-]+-[0-9a-f]{8}\.t\d+\.npy$")
_OWN_TMP = re.compile(r"^\.([A-Za-z0-9_-]+-[0-9a-f]{8}\.t\d+\.npy|index\.json)\.tmp-[0-9a-f]{8}$")
_VERSION = 1


def epi_beta(beta: float, n: int, schedule: str = "corrected") -> float:
    """The coefficient of the previous label in an image's ``n``-th update (``n >= 1``).

    ``n = 1`` always gives 0 (the first label is the first prediction). After that ``"plain"``
    gives ``beta``; ``"corrected"`` gives ``beta (1 - beta^(n-1)) / (1 - beta^n)`` (see the
    module docstring).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown EPI schedule {schedule!r}; use one of {SCHEDULES}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    n = int(n)
    if n < 1:
        raise ValueError(f"the update count starts at 1, got {n}")
    if n == 1 or beta == 0.0:
        return 0.0
    if schedule == "plain":
        return float(beta)
    return float(beta * (1.0 - beta ** (n - 1)) / (1.0 - beta**n))


def epi_update(
    previous: np.ndarray | None,
    prediction: np.ndarray,
    beta: float,
    n: int,
    schedule: str = "corrected",
) -> np.ndarray:
    """``P_n = beta_n * P_(n-1) + (1 - beta_n) * Phat_n`` with :func:`epi_beta` (float32)."""
    pred = np.asarray(prediction, dtype=np.float32)
    b = epi_beta(beta, n, schedule)
    if previous is None or b == 0.0:
        return pred.copy()
    prev = np.asarray(previous, dtype=np.float32)
    return (b * prev + (1.0 - b) * pred).astype(np.float32)


def _key(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:60] or "img"
    return f"{safe}-{zlib.crc32(name.encode('utf-8')):08x}"


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # pragma: no cover
        return
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write, fsync: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class PseudoLabelBank:
    """EPI pseudo labels of unlabeled images, by image name, in ``folder`` (see module docs).

    Args:
        folder: created if missing; an existing bank there is continued.
        beta: EPI momentum; ``None`` keeps the stored value (0.99 for a new bank). A different
            value than the stored one is used from now on (with a warning).
        schedule: ``"corrected"`` (default) or ``"plain"``; ``None`` keeps the stored one.
        dtype: ``"float16"`` (default) or ``"uint8"``, for new banks.
        fsync: make every update durable (set False for throw-away banks in tests/benchmarks).

    ``get(name)`` returns the current label (float32 in [0, 1]) or ``None``; updates go through
    :meth:`begin_update` (streaming, one map at a time) or :meth:`update` (a mapping).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        beta: float | None = None,
        schedule: str | None = None,
        dtype: str = "float16",
        *,
        fsync: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fsync = bool(fsync)
        index = self._read_index()
        if index is None:
            if dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
            index = {
                "version": _VERSION,
                "t": 0,
                "beta": 0.99 if beta is None else float(beta),
                "schedule": "corrected" if schedule is None else schedule,
                "dtype": dtype,
                "images": {},
            }
        else:
            if beta is not None and not math.isclose(float(beta), float(index["beta"])):
                warnings.warn(
                    f"pseudo-label bank {self.folder} was built with beta {index['beta']}; "
                    f"continuing with beta {beta}",
                    stacklevel=2,
                )
                index["beta"] = float(beta)
            if schedule is not None and schedule != index["schedule"]:
                warnings.warn(
                    f"pseudo-label bank {self.folder} used the {index['schedule']!r} schedule; "
                    f"continuing with {schedule!r}",
                    stacklevel=2,
                )
                index["schedule"] = schedule
        epi_beta(float(index["beta"]), 1, index["schedule"])  # validates both
        self._index = index
        self._sweep()

    # ------------------------------------------------------------------ properties

    @property
    def t(self) -> int:
        """Number of committed updates (rounds) of this bank."""
        return int(self._index["t"])

    @property
    def beta(self) -> float:
        return float(self._index["beta"])

    @property
    def schedule(self) -> str:
        return str(self._index["schedule"])

    @property
    def dtype(self) -> str:
        return str(self._index["dtype"])

    def names(self) -> list[str]:
        return list(self._index["images"])

    def __len__(self) -> int:
        return len(self._index["images"])

    def __contains__(self, name: object) -> bool:
        return name in self._index["images"]

    def count(self, name: str) -> int:
        """How many updates the label of ``name`` has had (0 if none)."""
        entry = self._index["images"].get(name)
        return 0 if entry is None else int(entry["n"])

    def path(self, name: str) -> Path | None:
        entry = self._index["images"].get(name)
        return None if entry is None else self.folder / entry["file"]

    def __repr__(self) -> str:
        return (
            f"PseudoLabelBank({str(self.folder)!r}, t={self.t}, images={len(self)}, "
            f"beta={self.beta}, schedule={self.schedule!r})"
        )

    # ------------------------------------------------------------------ reading

    def get(self, name: str) -> np.ndarray | None:
        """The current pseudo label of ``name`` as float32 ``[H, W]`` in [0, 1], or ``None``."""
        p = self.path(name)
        if p is None:
            return None
        arr = np.load(p, allow_pickle=False)
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) * np.float32(1.0 / 255.0)
        return arr.astype(np.float32)

    # ------------------------------------------------------------------ writing

    def begin_update(self) -> BankUpdate:
        """Start the next update (round ``t + 1``); add maps, then ``commit()`` (or ``abort()``).

        Usable as a context manager: commits on success, aborts on an exception.
        """
        return BankUpdate(self)

    def update(
        self, predictions: Mapping[str, np.ndarray], empty: Iterable[str] = ()
    ) -> float | None:
        """One EPI update from ``{name: prediction}``; names in ``empty`` get an all-zero label
        ("no lesion"). Returns the mean absolute change (see :meth:`BankUpdate.commit`)."""
        empty = list(dict.fromkeys(empty))
        skip = set(empty)
        with self.begin_update() as upd:
            for name, pred in predictions.items():
                if name in skip:
                    continue
                upd.add(name, pred)
            for name in empty:
                shape = np.shape(predictions[name]) if name in predictions else None
                upd.add_empty(name, shape)
        return upd.change

    def remove(self, names: Iterable[str]) -> None:
        """Forget the labels of ``names`` (e.g. images that got a real mask)."""
        gone = [n for n in names if n in self._index["images"]]
        if not gone:
            return
        files = [self._index["images"].pop(n)["file"] for n in gone]
        self._write_index()
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / f).unlink()

    def prune(self, keep: Collection[str]) -> None:
        """Forget every label whose name is not in ``keep``."""
        keep = set(keep)
        self.remove([n for n in self.names() if n not in keep])

    # ------------------------------------------------------------------ internals

    def _read_index(self) -> dict[str, Any] | None:
        p = self.folder / _INDEX
        if not p.is_file():
            return None
        try:
            index = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"pseudo-label index {p} is unreadable: {exc}") from exc
        if not isinstance(index, dict) or index.get("version") != _VERSION:
            raise ValueError(f"pseudo-label index {p} has an unknown format")
        return index

    def _write_index(self) -> None:
        data = json.dumps(self._index, indent=1, sort_keys=True).encode("utf-8")
        _atomic_write(self.folder / _INDEX, lambda fh: fh.write(data), fsync=self.fsync)
        if self.fsync:
            _fsync_dir(self.folder)

    def _encode(self, prob: np.ndarray) -> np.ndarray:
        p = np.clip(np.nan_to_num(prob, nan=0.0), 0.0, 1.0)
        if self.dtype == "uint8":
            return np.rint(p * 255.0).astype(np.uint8)
        return p.astype(np.float16)

    def _write_map(self, path: Path, prob: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, self._encode(prob), allow_pickle=False)
        data = buf.getvalue()
        _atomic_write(path, lambda fh: fh.write(data), fsync=self.fsync)

    def _sweep(self) -> None:
        """Delete this bank's files that the index does not name (an interrupted update's
        leftovers). Other files in the folder are never touched."""
        known = {e["file"] for e in self._index["images"].values()}
        for p in self.folder.iterdir():
            if not p.is_file() or p.name in known:
                continue
            if _OWN_FILE.match(p.name) or _OWN_TMP.match(p.name):
                with contextlib.suppress(OSError):
                    p.unlink()


class BankUpdate:
    """One EPI update of a :class:`PseudoLabelBank` in progress (see ``begin_update``)."""

    def __init__(self, bank: PseudoLabelBank) -> None:
        self.bank = bank
        self.t = bank.t + 1
        self._entries: dict[str, dict[str, Any]] = {}
        self._abs_sum = 0.0
        self._abs_n = 0
        self.change: float | None = None
        self.done = False

    def __enter__(self) -> BankUpdate:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def _store(self, name: str, new: np.ndarray, n: int) -> None:
        if self.done:
            raise RuntimeError("this bank update is already finished")
        if name in self._entries:
            raise ValueError(f"{name!r} was added twice to one update")
        file = f"{_key(name)}.t{self.t}.npy"
        self.bank._write_map(self.bank.folder / file, new)
        self._entries[name] = {"n": int(n), "file": file}

    def add(self, name: str, prediction: np.ndarray) -> np.ndarray:
        """EPI-update the label of ``name`` with ``prediction`` (``[H, W]`` in [0, 1]).

        A stored label of another size (the model size changed) is resized first. Returns the
        new label (float32).
        """
        pred = np.asarray(prediction, dtype=np.float32)
        while pred.ndim > 2 and pred.shape[0] == 1:
            pred = pred[0]
        if pred.ndim != 2:
            raise ValueError(f"a pseudo label is a 2D map, got shape {pred.shape}")
        bank = self.bank
        prev = bank.get(name)
        if prev is not None and prev.shape != pred.shape:
            from src_models.data.transforms import resize_prob

            prev = resize_prob(prev, pred.shape)
        n = bank.count(name) + 1
        new = np.clip(epi_update(prev, pred, bank.beta, n, bank.schedule), 0.0, 1.0)
        if prev is not None:
            self._abs_sum += float(np.abs(new - prev).mean())
            self._abs_n += 1
        self._store(name, new, n)
        return new

    def add_empty(self, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Force an all-zero label ("no lesion" image); ``shape`` defaults to the stored one."""
        prev = self.bank.get(name)
        if shape is None:
            if prev is None:
                raise ValueError(f"give the shape of the empty label of {name!r}")
            shape = prev.shape
        new = np.zeros(tuple(shape)[-2:], dtype=np.float32)
        if prev is not None and prev.shape == new.shape:
            self._abs_sum += float(prev.mean())
            self._abs_n += 1
        self._store(name, new, self.bank.count(name) + 1)
        return new

    def commit(self) -> float | None:
        """Make the update visible (index written), drop the old files; returns the mean over
        images that had a label before of ``mean |P_t - P_(t-1)|`` (``None`` if none had)."""
        if self.done:
            raise RuntimeError("this bank update is already finished")
        bank = self.bank
        images = bank._index["images"]
        old = [images[n]["file"] for n in self._entries if n in images]
        images.update(self._entries)
        bank._index["t"] = self.t
        bank._write_index()
        for f in old:
            with contextlib.suppress(FileNotFoundError):
                (bank.folder / f).unlink()
        self.done = True
        self.change = self._abs_sum / self._abs_n if self._abs_n else None
        return self.change

    def abort(self) -> None:
        """Discard the maps written so far; the bank keeps its previous labels."""
        if self.done:
            return
        for entry in self._entries.values():
            with contextlib.suppress(FileNotFoundError):
                (self.bank.folder / entry["file"]).unlink()
        self._entries.clear()
        self.done = True

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
per image its update count, its file, the update ``t`` that wrote it and the file it replaced
(``prev``); the maps are ``<key>.t<T>.npy`` (float16 by default, or uint8 = round(255 P)), at
the model size. An update writes all new files first (atomic temp + ``os.replace``), then the
index (atomically), then deletes the maps two updates old; files the index does not name are
removed when the bank is opened. A crash or a cancel in the middle of an update therefore
leaves the previous round's labels intact, and a new bank object on the same folder continues
``t`` and the values exactly.

The previous map of each image stays beside its current one, so that a viewer can show how a
label moved (:meth:`PseudoLabelBank.previous`) and a bad round can be undone
(:meth:`PseudoLabelBank.undo`: the index is rewritten atomically to name the previous maps).
Banks written before this have no ``prev``/``t`` entries: they open unchanged (nothing is
rewritten on open), their first update starts keeping previous maps, and until then there is
nothing to undo. A reader beside a training process opens the bank with ``read_only=True``:
it never sweeps (the writer's new files are not in the index yet) and never writes.
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
_FILE_T = re.compile(r"\.t(\d+)\.npy$")
# "prev" and "t" entries came without a version bump: older code reads such a bank (and sweeps
# its previous maps away, which only ends what can be undone)
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


def _file_t(file: str) -> int:
    m = _FILE_T.search(file)
    return int(m.group(1)) if m else 0


def _entry_t(entry: Mapping[str, Any]) -> int:
    """The update that wrote an entry's map (older banks: read from its file name)."""
    return int(entry["t"]) if "t" in entry else _file_t(entry["file"])


def _entry_files(entry: Mapping[str, Any]) -> list[str]:
    return [entry["file"], *([entry["prev"]] if "prev" in entry else [])]


def _as_float(arr: np.ndarray | None) -> np.ndarray | None:
    if arr is None:
        return None
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * np.float32(1.0 / 255.0)
    return arr.astype(np.float32)


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
        read_only: read an existing bank (``FileNotFoundError`` without one) beside the process
            that updates it: no sweep on open, every write refused.

    ``get(name)`` returns the current label (float32 in [0, 1]) or ``None``, ``previous(name)``
    the one the last update of ``name`` replaced; updates go through :meth:`begin_update`
    (streaming, one map at a time) or :meth:`update` (a mapping); :meth:`undo` takes the last
    update back.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        beta: float | None = None,
        schedule: str | None = None,
        dtype: str = "float16",
        *,
        fsync: bool = True,
        read_only: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.read_only = bool(read_only)
        if not self.read_only:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.fsync = bool(fsync)
        index = self._read_index()
        if index is None and self.read_only:
            raise FileNotFoundError(f"no pseudo-label bank in {self.folder}")
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
        if not self.read_only:
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
        return self._load(name, "file")

    def previous(self, name: str) -> np.ndarray | None:
        """The label of ``name`` before its last update (float32), or ``None`` if it has none
        (its first update, a bank written before previous maps were kept, or undone)."""
        return self._load(name, "prev")

    def reload(self) -> None:
        """Read the index again (a reader's view of a bank that another process updates)."""
        index = self._read_index()
        if index is not None:
            self._index = index

    def _load(self, name: str, which: str) -> np.ndarray | None:
        try:
            arr = self._load_file(name, which)
        except FileNotFoundError:
            if self.read_only:  # our index may be one update old: its files are replaced
                self.reload()
                with contextlib.suppress(FileNotFoundError):
                    arr = self._load_file(name, which)
                    return _as_float(arr)
            if which == "prev":  # e.g. swept by older code: nothing to show or undo
                return None
            raise
        return _as_float(arr)

    def _load_file(self, name: str, which: str) -> np.ndarray | None:
        entry = self._index["images"].get(name)
        if entry is None or which not in entry:
            return None
        return np.load(self.folder / entry[which], allow_pickle=False)

    def can_undo(self) -> bool:
        """Whether :meth:`undo` would work: the last update's labels still have their previous
        maps (one update is kept, so one undo in a row)."""
        return self._undo_plan() is not None

    def _undo_plan(self) -> dict[str, dict[str, Any] | None] | None:
        """name -> its entry after an undo of update ``t`` (``None``: remove it), or ``None``
        when update ``t`` cannot be undone."""
        t = self.t
        last = {n: e for n, e in self._index["images"].items() if _entry_t(e) == t}
        if t == 0 or not last:
            return None
        plan: dict[str, dict[str, Any] | None] = {}
        for name, e in last.items():
            prev = e.get("prev")
            if prev is None:
                if int(e["n"]) > 1:
                    return None  # its previous map was not kept (or was undone already)
                plan[name] = None  # first labelled in update t
            elif not (self.folder / prev).is_file():
                return None
            else:
                plan[name] = {"n": int(e["n"]) - 1, "file": prev, "t": _file_t(prev)}
        return plan

    def undo(self) -> list[str]:
        """Take the last update back: every label it wrote returns to its previous map (labels
        it created are removed) and ``t`` goes down by one, in one atomic index write. Returns
        the names it changed; ``ValueError`` if it cannot (see :meth:`can_undo`)."""
        self._refuse_if_read_only()
        plan = self._undo_plan()
        if plan is None:
            raise ValueError(
                f"pseudo-label bank {self.folder}: update {self.t} cannot be undone (only the "
                "last update's previous maps are kept)"
            )
        images = self._index["images"]
        drop = [images[n]["file"] for n in plan]
        for name, entry in plan.items():
            if entry is None:
                del images[name]
            else:
                images[name] = entry
        self._index["t"] = self.t - 1
        self._write_index()
        for f in drop:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / f).unlink()
        return list(plan)

    # ------------------------------------------------------------------ writing

    def begin_update(self) -> BankUpdate:
        """Start the next update (round ``t + 1``); add maps, then ``commit()`` (or ``abort()``).

        Usable as a context manager: commits on success, aborts on an exception.
        """
        self._refuse_if_read_only()
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

    def flush(self) -> None:
        """Write the index now (a new bank's empty one too), so that readers in other processes
        (the other ranks of a torchrun job, a viewer) can open the bank before its first
        update."""
        self._refuse_if_read_only()
        self._write_index()

    def remove(self, names: Iterable[str]) -> None:
        """Forget the labels of ``names`` (e.g. images that got a real mask)."""
        gone = [n for n in names if n in self._index["images"]]
        if not gone:
            return
        self._refuse_if_read_only()
        files = [f for n in gone for f in _entry_files(self._index["images"].pop(n))]
        self._write_index()
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / f).unlink()

    def prune(self, keep: Collection[str]) -> None:
        """Forget every label whose name is not in ``keep``."""
        keep = set(keep)
        self.remove([n for n in self.names() if n not in keep])

    # ------------------------------------------------------------------ internals

    def _refuse_if_read_only(self) -> None:
        if self.read_only:
            raise PermissionError(f"pseudo-label bank {self.folder} is open read-only")

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
        known = {f for e in self._index["images"].values() for f in _entry_files(e)}
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
        self._entries[name] = {"n": int(n), "file": file, "t": self.t}

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
        """Make the update visible (index written; each replaced map stays as ``prev``), drop
        the maps two updates old; returns the mean over images that had a label before of
        ``mean |P_t - P_(t-1)|`` (``None`` if none had)."""
        if self.done:
            raise RuntimeError("this bank update is already finished")
        bank = self.bank
        images = bank._index["images"]
        old = []
        for name, entry in self._entries.items():
            replaced = images.get(name)
            if replaced is not None:
                entry["prev"] = replaced["file"]
                if "prev" in replaced:
                    old.append(replaced["prev"])
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

"""A whole-volume run of the Segment widget: the Predictor's batched slices
(:meth:`~src_models.inference.Predictor.predict_slices`) in a napari thread worker, or on the
calling thread (tests), with progress after every model batch and Cancel between batches.

The probabilities fill a private array; only a run that reaches the last slice hands them
over (``on_done``), so a cancelled or failed run leaves the viewer's layers as they were.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np

#: ``() -> iterator of (first slice, probabilities [n, H, W])`` (runs on the worker thread)
SliceBatches = Callable[[], Iterator[tuple[int, np.ndarray]]]


class VolumeRun:
    """One run over ``shape`` (``(Z, H, W)``); see the module docstring.

    Callbacks run on the GUI thread: ``on_progress(done, total)`` after each batch,
    ``on_done(probs)`` once every slice is in, ``on_cancelled()`` after :meth:`cancel`,
    ``on_error(exc)`` when a batch fails.
    """

    def __init__(
        self,
        batches: SliceBatches,
        shape: tuple[int, int, int],
        *,
        on_progress: Callable[[int, int], None],
        on_done: Callable[[np.ndarray], None],
        on_cancelled: Callable[[], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self._batches = batches
        self.total = int(shape[0])
        self._probs = np.zeros(shape, np.float32)
        self._cancel = threading.Event()
        self._on_progress, self._on_done = on_progress, on_done
        self._on_cancelled, self._on_error = on_cancelled, on_error
        self.worker = None  # the napari worker, when threaded

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop after the model batch that runs now; nothing is handed over."""
        self._cancel.set()
        if self.worker is not None:
            self.worker.quit()  # a generator worker stops at its next yield

    def _job(self) -> Iterator[int]:
        for start, probs in self._batches():
            if self._cancel.is_set():
                return
            self._probs[start : start + len(probs)] = probs
            yield start + len(probs)
            if self._cancel.is_set():  # before the next batch is computed
                return

    def _progress(self, done: int) -> None:
        if not self._cancel.is_set():
            self._on_progress(done, self.total)

    def _finish(self) -> None:
        if self._cancel.is_set():
            self._on_cancelled()
        else:
            self._on_done(self._probs)

    def run_here(self) -> None:
        """Run on the calling thread (a callback may :meth:`cancel` between batches)."""
        try:
            for done in self._job():
                self._progress(done)
        except Exception as exc:  # noqa: BLE001 - shown to the user by on_error
            self._on_error(exc)
            return
        self._finish()

    def start_worker(self, before_start: Callable[[object], None] | None = None) -> None:
        """Run in a napari thread worker; ``before_start`` sees it before it starts (to
        connect to it before it can finish)."""
        from napari.qt.threading import create_worker

        worker = create_worker(self._job)
        failed: list[Exception] = []

        def errored(exc: Exception) -> None:
            failed.append(exc)
            self._on_error(exc)

        # "finished" comes after every end (returned, aborted by quit(), errored): one place
        # decides, so a Cancel that races the last batch still ends in exactly one callback
        worker.yielded.connect(self._progress)
        worker.errored.connect(errored)
        worker.finished.connect(lambda: None if failed else self._finish())
        self.worker = worker
        if before_start is not None:
            before_start(worker)
        worker.start()

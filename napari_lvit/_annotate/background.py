"""Model work of the annotation loop that runs beside the viewer: whole-volume segmentation
(the Segment widget's batched run) and scoring the unlabelled images for a suggestion. Each
runs as a napari thread worker (or on the calling thread when the Segment widget runs
synchronously: tests), shows its progress on a progress bar and reaches the Segment widget
through its public API only."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from napari_lvit._errors import error_line
from napari_lvit._widget import image_plane

if TYPE_CHECKING:
    from napari.layers import Image
    from qtpy.QtWidgets import QLabel, QProgressBar

    from napari_lvit._annotate.session import AnnotationSession, Ranking
    from napari_lvit._widget import SegmentWidget


class Jobs:
    """Starts generator jobs and knows which are running, by name."""

    def __init__(self, synchronous: Callable[[], bool]) -> None:
        self._synchronous = synchronous
        self._running: dict[str, Any] = {}

    def stop_all(self, *_args: Any) -> None:
        """Ask every running job to stop and drop its callbacks (the widget is going away:
        a late result must not reach a deleted progress bar or layer)."""
        workers, self._running = list(self._running.values()), {}
        for worker in workers:
            for signal in (worker.yielded, worker.errored, worker.returned, worker.finished):
                with contextlib.suppress(RuntimeError, TypeError):
                    signal.disconnect()
            worker.quit()

    def running(self, name: str | None = None) -> bool:
        """Whether the job ``name`` (any job, without a name) runs now."""
        return bool(self._running) if name is None else name in self._running

    def start(
        self,
        name: str,
        job: Callable[[], Iterator[Any]],
        on_item: Callable[[Any], None],
        on_error: Callable[[Exception], None],
        on_done: Callable[[], None],
        before_start: Callable[[Any], None] | None = None,
    ) -> None:
        """Run the generator function ``job``, passing what it yields to ``on_item``, then
        ``on_done`` (or ``on_error``); ``before_start`` sees the worker before it starts.
        ``running(name)`` is False again before ``on_done`` or ``on_error`` is called."""
        if self._synchronous():
            try:
                for item in job():
                    on_item(item)
            except Exception as exc:  # noqa: BLE001 - shown to the user
                on_error(exc)
                return
            on_done()
            return
        from napari.qt.threading import create_worker

        worker = create_worker(job)
        self._running[name] = worker

        def ended(callback: Callable, *args) -> None:
            self._running.pop(name, None)
            callback(*args)

        worker.yielded.connect(on_item)
        worker.errored.connect(lambda exc: ended(on_error, exc))
        worker.returned.connect(lambda _=None: ended(on_done))
        worker.finished.connect(lambda: self._running.pop(name, None))
        if before_start is not None:
            before_start(worker)
        worker.start()


class Progress:
    """A progress bar shown only while some work runs."""

    def __init__(self, bar: QProgressBar) -> None:
        self.bar = bar

    def begin(self, total: int, fmt: str) -> None:
        """Show the bar at 0 of ``total`` (``fmt``: Qt's %v / %m progress format)."""
        self.bar.setRange(0, total)
        self.bar.setValue(0)
        self.bar.setFormat(fmt)
        self.bar.setVisible(True)

    def step(self, value: int) -> None:
        self.bar.setValue(value)

    def end(self) -> None:
        self.bar.setVisible(False)


class VolumeSegmentation:
    """Every slice of a volume with one intensity scale (the image's CT window, else the whole
    volume's range, as in training); also the Segment widget's input plane for a slice."""

    def __init__(self, seg: SegmentWidget, jobs: Jobs, progress: Progress) -> None:
        self.seg, self.jobs, self.progress = seg, jobs, progress
        self._ranges: dict[int, tuple[float, float] | None] = {}

    def forget(self, layer: Image) -> None:
        self._ranges.pop(id(layer), None)

    def value_range(self, layer: Image) -> tuple[float, float] | None:
        from src_models.data.windows import window_applies
        from src_models.project.suggest import volume_range

        window = self.seg.layer_window(layer)  # not cached: the user may pick another
        if window is not None and window_applies(layer.data.dtype, layer.rgb):
            return window.range
        key = id(layer)
        if key not in self._ranges:
            is_vol = layer.ndim == 3 and not layer.rgb
            self._ranges[key] = volume_range(np.asarray(layer.data), False) if is_vol else None
        return self._ranges[key]

    def plane(self, layer: Image, step: tuple) -> tuple[np.ndarray, tuple]:
        """The model's input at the viewer's ``step`` and its index (a ``plane_provider``)."""
        from src_models.project.suggest import model_plane

        plane, index = image_plane(layer, step)
        rng = self.value_range(layer)
        if len(index) == 1 and rng is not None:
            plane = model_plane(layer.data, index[0], rng)
        return plane, index

    def run(self, image: Image) -> None:
        """Segment every slice of ``image`` with the Segment widget's batched run (progress,
        Cancel; its proposal layer, the loop's labels, is written once every slice is done,
        and becomes the widget's proposal: ``proposal_ready``)."""
        self.seg.segment_volume(image)


class Suggestions:
    """Scores the unlabelled images by the model's uncertainty, ranks them and says which
    comes next on ``label``."""

    #: the ranking is ready: (Ranking, whether to go to the top image)
    ranked = Signal(object, bool)
    #: scoring failed, or could not start: why
    failed = Signal(str)

    def __init__(
        self,
        session: AnnotationSession,
        seg: SegmentWidget,
        jobs: Jobs,
        progress: Progress,
        label: QLabel,
    ) -> None:
        self.session, self.seg, self.jobs, self.progress = session, seg, jobs, progress
        self.label = label

    def run(self, go: bool) -> None:
        """Score the unlabelled images with the chosen model (one run at a time)."""
        from src_models.project.suggest import score_images

        if self.session.project is None or self.jobs.running("suggest"):
            return
        seg = self.seg
        try:
            source = seg.model_source
        except ValueError as exc:
            self.failed.emit(error_line(exc))
            return
        records = self.session.to_score()
        if not records:
            self.label.setText("Every image is labelled.")
            return
        device = str(seg.device.value)
        results: list[Any] = []

        def job():
            predictor = seg.predictor(source, device)
            yield from score_images(records, predictor.predict_prob)

        def on_score(score) -> None:
            results.append(score)
            self.session.add_score(score)
            self.progress.step(len(results))

        def on_done() -> None:
            self.progress.end()
            ranking: Ranking = self.session.rank(results)
            self.label.setText(ranking.text())
            self.ranked.emit(ranking, go)

        def on_error(exc: Exception) -> None:
            self.progress.end()
            self.failed.emit(error_line(exc, "Suggestion failed"))

        self.label.setText("Scoring the unlabelled images…")
        self.progress.begin(len(records), "scoring %v of %m images")
        self.jobs.start("suggest", job, on_score, on_error, on_done)

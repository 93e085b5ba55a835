"""The Segment dock widget: pick a model and an image, type a description, get a mask.

The model runs in a napari thread worker, so the viewer stays responsive; the proposal lands in
a Labels layer aligned with the image (same scale, translate and affine). A threshold slider
re-cuts the last probability map without running the model again. Once a model is loaded, a
description is encoded in the background while it is typed (after a short pause), so pressing
Segment runs only the image and fusion parts of the model.

A CT window preset (lung, mediastinum, bone, brain) sets the image layer's contrast limits and
is kept in its metadata (``"window"``: level, width in HU); the model's input follows it.
"Whole volume" segments every slice of a 3D image, slices batched through the model
(:mod:`napari_lvit._volume`), with a progress bar and Cancel; the proposal layer is written
only once every slice is done.

Click mode (the Click mode button, or Shift-P) corrects the proposal with clicks and a box
(:mod:`napari_lvit._click_mode`): a Points layer beside the proposal (left click adds to the
mask, Ctrl+click or the right button removes, Ctrl+Z on it removes the last click) and a Shapes
rectangle; every change re-segments the shown plane in the background with the model's prompt
inputs (a checkpoint trained with ``napari-lvit train --clicks``), starting from the labels as
they are, so the brush still works between clicks.

Other widgets build on it through a small public API (the annotation loop does): the
``proposal_ready`` and ``proposal_recut`` signals, extra model choices resolved by a callable
(:meth:`SegmentWidget.set_model_sources`), hooks that may take over Segment
(``segment_hook``), choose the model's input plane (``plane_provider``) or prepare the thread
that predicts (``thread_setup``), :meth:`SegmentWidget.predictor`,
:meth:`SegmentWidget.proposal_layer`, :meth:`SegmentWidget.adopt_proposal` for work they run
themselves, :meth:`SegmentWidget.segment_volume` and :meth:`SegmentWidget.layer_window`, the
``window_changed`` and ``volume_progress`` signals, and ``offers_whole_volume`` (False hides
the Whole volume button for a widget with its own).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
    TextEdit,
    create_widget,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_info
from psygnal import Signal

from napari_lvit import _ct_window, _errors
from src_models.data.windows import Window, as_window

if TYPE_CHECKING:
    import napari

    from napari_lvit._volume import VolumeRun
    from src_models.inference import Prediction, Predictor

FROM_FILE = "checkpoint file…"
PROPOSAL_SUFFIX = " [proposal]"
TYPING_PAUSE_MS = 300  # encode the description after this long without a keystroke


def model_choices() -> list[str]:
    """``default`` when the shipped checkpoint is installed, the registry, and a file option."""
    from src_models.inference import DEFAULT_CHECKPOINT
    from src_models.models import list_models

    shipped = ["default"] if DEFAULT_CHECKPOINT.is_file() else []
    return [*shipped, *list_models(), FROM_FILE]


def wrap_to_width(label):
    """Let a QLabel wrap its text at whatever width the dock has: a long message then takes
    more lines instead of widening the dock (and squeezing the canvas). Returns the label."""
    from qtpy.QtWidgets import QSizePolicy

    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label


def image_plane(layer: Image, current_step: tuple[int, ...]) -> tuple[np.ndarray, tuple]:
    """The 2D plane of ``layer`` shown at ``current_step``, and its index into the layer.

    For an RGB layer the plane keeps its colour axis. The index selects that plane in a
    Labels array of the layer's spatial shape.
    """
    data = layer.data
    spatial_ndim = layer.ndim
    leading = spatial_ndim - 2
    if leading < 0:
        raise ValueError(f"layer {layer.name!r} has fewer than 2 dimensions")
    # The viewer's dims can have more axes than the layer; the layer's are the last ones.
    steps = tuple(current_step[-spatial_ndim:])[:leading] if leading else ()
    index = tuple(min(max(int(s), 0), data.shape[i] - 1) for i, s in enumerate(steps))
    plane = np.asarray(data[index]) if index else np.asarray(data)
    return plane, index


PlaneProvider = Callable[[Image, tuple], tuple[np.ndarray, tuple]]


#: Image-layer metadata copied onto its proposal layer (what the labels writer needs).
_SOURCE_KEYS = ("source_path", "affine", "dicom_files", "series_uid", "frame_order", "study_uid")


class SegmentWidget(Container):
    """Dock widget: Model, Device, Image, Description, Segment, Threshold."""

    #: a proposal was written to its Labels layer: (image layer, index into it, Prediction)
    proposal_ready = Signal(object, object, object)
    #: the threshold slider re-cut the shown proposal: (labels layer, index into it)
    proposal_recut = Signal(object, object)
    #: a window preset was chosen for an image layer: (image layer, Window or None)
    window_changed = Signal(object, object)
    #: a whole-volume run finished a model batch: (slices done, slices in all)
    volume_progress = Signal(int, int)
    #: click mode re-segmented the shown plane: (labels layer, index into it)
    clicks_applied = Signal(object, object)

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._predictors: dict[tuple[str, str], Predictor] = {}
        self._predictor_lock = threading.Lock()
        self._last: tuple[Labels, tuple, Prediction] | None = None
        self._last_threshold = 0.5
        self._worker = None
        self._typing_timer = None  # a QTimer, made on the first keystroke
        self._model_sources: dict[str, Callable[[], str]] = {}
        self._volume_run: VolumeRun | None = None
        self._syncing_window = False
        self.run_synchronously = False  # tests flip this to run the model on the calling thread
        #: slices per model call in a whole-volume run
        self.volume_batch_size = 8
        #: called first by :meth:`segment`; returning True means it handled (or refused) it
        self.segment_hook: Callable[[], bool] | None = None
        #: (image layer, viewer's current step) -> (model input plane, index into the layer)
        self.plane_provider: PlaneProvider = image_plane
        #: called on the thread that predicts next, once its predictor is ready
        self.thread_setup: Callable[[], None] | None = None
        from napari_lvit._click_mode import ClickMode

        self.click_mode = ClickMode(napari_viewer, self.segment_clicks)
        self._clicks_pending = False

        self.model = ComboBox(label="Model", choices=model_choices())
        self.checkpoint = FileEdit(label="Checkpoint", mode="r", filter="*.safetensors")
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda"], value="auto")
        self.image = create_widget(annotation=Image, label="Image")
        self.window = ComboBox(label="CT window", choices=_ct_window.window_choices())
        self.window.tooltip = (
            "Hounsfield-unit window for a CT: sets the contrast, and the model sees the image "
            "through it (none: the image's own range, or the model's trained window)"
        )
        self.text = TextEdit(label="Description")
        self.segment_button = PushButton(text="Segment")
        self.volume_button = PushButton(text="Whole volume")
        self.volume_button.tooltip = "Segment every slice of the 3D image (slices batched)"
        self.click_button = PushButton(text="Click mode")
        self.click_button.tooltip = (
            "Correct the proposal with clicks: left click adds to the mask, Ctrl+click or the "
            "right button removes, Ctrl+Z undoes the last click; draw a rectangle in the "
            "[box] layer around the object (Shift-P toggles)"
        )
        self.progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self.cancel_button = PushButton(text="Cancel")
        self.threshold = FloatSlider(label="Threshold", min=0.01, max=0.99, step=0.01, value=0.5)
        self.status = Label(value="Type a description and press Segment.")
        self.extend(
            [
                self.model,
                self.checkpoint,
                self.device,
                self.image,
                self.window,
                self.text,
                self.segment_button,
                self.click_button,
                self.volume_button,
                self.progress,
                self.cancel_button,
                self.threshold,
                self.status,
            ]
        )
        self._offers_whole_volume = True
        self.checkpoint.visible = False
        self.progress.visible = self.cancel_button.visible = False
        wrap_to_width(self.status.native)
        # as wide as the dock allows, not as the longest choice (that would widen the dock)
        policy = self.model.native.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        self.model.native.setSizeAdjustPolicy(policy)
        self.model.native.setMinimumContentsLength(14)
        lines = self.text.native.fontMetrics().lineSpacing()
        self.text.native.setMaximumHeight(5 * lines + 12)  # a report of a few lines
        self.model.changed.connect(self._on_model_changed)
        self.image.changed.connect(self._on_image_changed)
        self.segment_button.changed.connect(self.segment)
        self.click_button.changed.connect(self.toggle_click_mode)
        _bind_click_mode_key(napari_viewer, self)
        self.volume_button.changed.connect(lambda: self.segment_volume())
        self.cancel_button.changed.connect(self.cancel_volume)
        self.window.changed.connect(self._on_window_chosen)
        # magicgui's TextEdit.changed never fires (QTextEdit.textChanged carries no value, which
        # magicgui drops as null), so listen to the Qt signal itself.
        self.text.native.textChanged.connect(self._on_text_changed)
        self.threshold.changed.connect(self._recut)
        layers = self._viewer.layers.events
        layers.inserted.connect(self._refresh_images)
        layers.removed.connect(self._refresh_images)
        self._refresh_images()
        self._on_image_changed(self.image.value)

    # --- state -------------------------------------------------------------------------
    @property
    def model_source(self) -> str:
        """The chosen model: a registry name, ``default`` or a checkpoint path. Raises
        ``ValueError`` (with a message for the user) when the choice cannot be used yet."""
        resolve = self._model_sources.get(self.model.value)
        if resolve is not None:
            return resolve()
        if self.model.value == FROM_FILE:
            path = Path(self.checkpoint.value).expanduser()
            if not path.is_file():
                raise ValueError("choose a checkpoint file (*.safetensors) first")
            return str(path)
        return str(self.model.value)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def last_prediction(self) -> Prediction | None:
        """The prediction behind the proposal shown last (``None`` before the first)."""
        return self._last[2] if self._last is not None else None

    def set_model_sources(self, sources: Mapping[str, Callable[[], str]]) -> None:
        """Offer extra model choices first in the list, each resolved to a model source by a
        callable when used (it raises ``ValueError`` when it has none yet)."""
        self._model_sources = dict(sources)
        current = self.model.value
        choices = [*self._model_sources, *model_choices()]
        self.model.choices = choices
        if current in choices:
            self.model.value = current

    def track(self, worker) -> None:
        """Count a worker started elsewhere (e.g. a whole-volume run) as this widget's work:
        busy until it finishes."""
        self._worker = worker
        worker.finished.connect(self._on_finished)

    def _refresh_images(self, event=None) -> None:
        self.image.reset_choices()
        mode = self.click_mode
        if mode.active and mode.image not in self._viewer.layers:
            self._end_click_mode(remove_layers=True)
        elif mode.active and any(
            x is not None and x not in self._viewer.layers for x in (mode.points, mode.shapes)
        ):
            self._end_click_mode()  # the user deleted the clicks or box layer: start again

    def _on_model_changed(self, value: str) -> None:
        self.checkpoint.visible = value == FROM_FILE

    def _on_image_changed(self, layer: Image | None) -> None:
        """Fill the description from the image's metadata (e.g. a report read with it), show
        its window, offer Whole volume for a 3D image."""
        self._show_window(self.layer_window(layer))
        self._update_volume_button()
        if layer is None:
            return
        text = layer.metadata.get("description") or layer.metadata.get("text")
        if text:
            self.text.value = str(text)

    # --- CT windows ----------------------------------------------------------------------
    @staticmethod
    def layer_window(layer: Image | None) -> Window | None:
        """The CT window kept with ``layer`` (``None``: none)."""
        return _ct_window.layer_window(layer)

    def _show_window(self, window: Window | None) -> None:
        """Show ``window`` in the combo without applying it again."""
        self._syncing_window = True
        try:
            self.window.choices = _ct_window.window_choices(window)
            self.window.value = _ct_window.choice_value(window)
        finally:
            self._syncing_window = False

    def _on_window_chosen(self, value: str) -> None:
        if not self._syncing_window:
            self.set_window(None if value == _ct_window.NO_WINDOW else value)

    def set_window(self, window: Window | tuple[float, float] | str | None) -> None:
        """Apply a CT window (a preset name, ``(level, width)`` in HU, ``None``: none) to the
        chosen image: its contrast limits, its metadata, the model's input; emits
        ``window_changed``. An 8-bit or colour image takes none (it holds no HU)."""
        layer = self.image.value
        w = as_window(window)
        if layer is None:
            self._show_window(None)
            return
        refused = _ct_window.apply_window(layer, w)
        if refused is not None:
            self._show_window(self.layer_window(layer))
            self.status.value = refused
            return
        self._show_window(w)
        self.window_changed.emit(layer, w)

    def _on_text_changed(self) -> None:
        """Encode the description ahead once typing pauses (only with a model already loaded)."""
        if not self._predictors:
            return
        if self.run_synchronously:
            self._encode_text_ahead()
            return
        if self._typing_timer is None:
            from qtpy.QtCore import QTimer

            self._typing_timer = QTimer(self.native)  # dies with the widget
            self._typing_timer.setSingleShot(True)
            self._typing_timer.setInterval(TYPING_PAUSE_MS)
            self._typing_timer.timeout.connect(self._encode_text_ahead)
        self._typing_timer.start()  # restarts on every keystroke

    def _encode_text_ahead(self) -> None:
        predictor = self._loaded_predictor()
        text = self.text.value
        if predictor is None or not text.strip():
            return
        if self.run_synchronously:
            predictor.encode_text_ahead(text)
            return
        from napari.qt.threading import create_worker

        # The encoder's cache has a lock: a Segment pressed meanwhile waits for it, then reuses it.
        create_worker(predictor.encode_text_ahead, text, _start_thread=True)

    def _loaded_predictor(self) -> Predictor | None:
        try:
            key = (self.model_source, str(self.device.value))
        except ValueError:
            return None
        return self._predictors.get(key)

    def set_busy(self, message: str | None) -> None:
        """Disable Segment and show ``message`` while working; ``None`` enables it again."""
        self.segment_button.enabled = message is None
        self.segment_button.text = "Segment" if message is None else "Working…"
        if message is not None:
            self.status.value = message

    # --- segmentation ------------------------------------------------------------------
    def predictor(self, source: str, device: str) -> Predictor:
        """The model for ``source`` on ``device``, built on first use (one in memory at a
        time); safe to call from several workers at once. Runs ``thread_setup`` after."""
        from src_models.inference import Predictor

        key = (source, device)
        # Workers (proposal, preload, suggestions) may ask at once: build each model once, and
        # never import transformers from two threads at the same time.
        with self._predictor_lock:
            if key not in self._predictors:
                self._predictors.clear()
                self._predictors[key] = Predictor(source, device=device)
            predictor = self._predictors[key]
        if self.thread_setup is not None:
            self.thread_setup()
        return predictor

    def clear_models(self) -> None:
        """Forget the loaded model (e.g. its checkpoint file was replaced)."""
        with self._predictor_lock:
            self._predictors.clear()

    def segment(self) -> None:
        """Run the model on the shown plane of the chosen image and show the proposal."""
        if self.busy:
            return
        if self.segment_hook is not None and self.segment_hook():
            return
        layer = self.image.value
        if layer is None:
            self.status.value = _errors.report_error("Open an image first.")
            return
        text = self.text.value.strip()
        try:
            source = self.model_source
            plane, index = self.plane_provider(layer, self._viewer.dims.current_step)
        except Exception as exc:  # noqa: BLE001 - shown to the user, not raised
            self.status.value = _errors.report_error(exc)
            return
        device = str(self.device.value)
        threshold = float(self.threshold.value)
        window = self.layer_window(layer)

        def job() -> Prediction:
            predictor = self.predictor(source, device)
            return predictor.predict(plane, text or None, threshold=threshold, window=window)

        self.set_busy(f"Segmenting with {Path(source).name}…")
        self._run_job(job, lambda result: self._on_done(layer, index, result))

    def _run_job(self, job, done) -> None:
        """``done(job())`` in a worker (on the calling thread with ``run_synchronously``); an
        error is reported on the status line instead."""
        if self.run_synchronously:
            try:
                result = job()
            except Exception as exc:  # noqa: BLE001 - shown to the user, not raised
                self.report_error(exc)
            else:
                done(result)
            return
        from napari.qt.threading import create_worker

        worker = create_worker(job)
        worker.returned.connect(done)
        worker.errored.connect(self.report_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def _on_finished(self) -> None:
        self._worker = None
        if self._clicks_pending:
            self._clicks_pending = False
            self.segment_clicks()

    # --- click mode ------------------------------------------------------------------------
    def toggle_click_mode(self) -> None:
        """Start click mode on the chosen image (its proposal layer is made if missing), or
        end it (the clicks stay on screen and are no longer applied)."""
        if self.click_mode.active:
            self._end_click_mode()
            self.status.value = "Click mode off."
            return
        layer = self.image.value
        if layer is None:
            self.status.value = _errors.report_error("Open an image first.")
            return
        self.proposal_layer(layer)
        self.click_mode.start(layer)
        self.click_button.text = "End click mode"
        self.status.value = (
            "Click mode: click into the object to add it, Ctrl+click (or right click) to remove, "
            "Ctrl+Z to undo; or draw a box in the [box] layer."
        )

    def _end_click_mode(self, remove_layers: bool = False) -> None:
        mode = self.click_mode
        layers = (mode.points, mode.shapes)
        mode.stop()
        self.click_button.text = "Click mode"
        if remove_layers:
            for layer in layers:
                if layer is not None and layer in self._viewer.layers:
                    self._viewer.layers.remove(layer)

    def click_prompts(self, index: tuple = ()):
        """The clicks and box of click mode on the plane ``index`` (none when it is off):
        a :class:`~napari_lvit._click_mode.PlanePrompts`."""
        return self.click_mode.prompts(index)

    def segment_clicks(self) -> None:
        """Re-segment the shown plane with the clicks and box of click mode (in a worker; a
        change that comes while it runs is applied right after, the latest prompts only)."""
        mode = self.click_mode
        if not mode.active:
            return
        if self.busy:
            self._clicks_pending = True
            return
        layer = mode.image
        try:
            source = self.model_source
            plane, index = self.plane_provider(layer, self._viewer.dims.current_step)
            prompts = mode.prompts(index)
        except Exception as exc:  # noqa: BLE001 - shown to the user, not raised
            self.status.value = _errors.report_error(exc)
            return
        labels = self.proposal_layer(layer)
        shown = np.asarray(labels.data[index] if index else labels.data) != 0
        action, mask = mode.history.plan(prompts, shown)
        note = (
            f" ({prompts.left_out} click(s) outside the image left out)" if prompts.left_out else ""
        )
        if action == "restore" or prompts.empty:
            mask = mask if action == "restore" else mode.history.base
            self._write(labels, index, mask)
            mode.history.record(prompts, mask)
            self.status.value = f"{len(prompts.clicks)} click(s){note}."
            self.clicks_applied.emit(labels, index)
            return
        device, threshold = str(self.device.value), float(self.threshold.value)
        window, text = self.layer_window(layer), self.text.value.strip() or None

        def job() -> Prediction:
            predictor = self.predictor(source, device)
            return predictor.predict(
                plane,
                text,
                threshold=threshold,
                window=window,
                clicks=list(prompts.clicks) or None,
                box=prompts.box,
                previous=mask,
            )

        def done(result: Prediction) -> None:
            self.set_busy(None)
            if labels not in self._viewer.layers:
                return
            self._write(labels, index, result.mask)
            mode.history.record(prompts, result.mask)
            share = 100.0 * result.mask.mean()
            self.status.value = f"{len(prompts.clicks)} click(s): {share:.1f}% of the image{note}."
            self.clicks_applied.emit(labels, index)

        self.set_busy("Applying the clicks…")
        self._run_job(job, done)

    # --- whole volume --------------------------------------------------------------------
    @property
    def offers_whole_volume(self) -> bool:
        """Whether the Whole volume button is offered (for 3D grayscale images)."""
        return self._offers_whole_volume

    @offers_whole_volume.setter
    def offers_whole_volume(self, value: bool) -> None:
        self._offers_whole_volume = bool(value)
        self._update_volume_button()

    def _update_volume_button(self) -> None:
        layer = self.image.value
        is_volume = layer is not None and layer.ndim == 3 and not layer.rgb
        self.volume_button.visible = self._offers_whole_volume and is_volume

    def segment_volume(self, layer: Image | None = None) -> None:
        """Segment every slice of a 3D image (by default the chosen one), slices batched
        through the model, in a worker with progress and Cancel. The proposal layer is
        written once, when the last slice is done; a cancelled or failed run changes nothing."""
        from napari_lvit._volume import VolumeRun

        if self.busy:
            return
        layer = self.image.value if layer is None else layer
        if layer is None or layer.ndim != 3 or layer.rgb:
            self.status.value = _errors.report_error("Whole volume needs a 3D grayscale image.")
            return
        text = self.text.value.strip() or None
        try:
            source = self.model_source
        except ValueError as exc:
            self.status.value = _errors.report_error(exc)
            return
        device, threshold = str(self.device.value), float(self.threshold.value)
        window, batch_size, data = self.layer_window(layer), self.volume_batch_size, layer.data

        def batches():
            predictor = self.predictor(source, device)
            yield from predictor.predict_slices(data, text, window=window, batch_size=batch_size)

        def done(probs: np.ndarray) -> None:
            self._end_volume()
            result = _prediction(probs, threshold, text)
            self._on_done(layer, (), result)

        def cancelled() -> None:
            self._end_volume()
            self.set_busy(None)
            self.status.value = "Whole volume cancelled: nothing was changed."

        def failed(exc: Exception) -> None:
            self._end_volume()
            self.report_error(exc)

        shape = tuple(int(s) for s in data.shape)
        run = VolumeRun(
            batches,
            shape,
            on_progress=self._on_volume_progress,
            on_done=done,
            on_cancelled=cancelled,
            on_error=failed,
        )
        self._volume_run = run
        self.progress.max, self.progress.value = shape[0], 0
        self.progress.visible = self.cancel_button.visible = True
        self.volume_button.enabled = False
        self.set_busy(f"Segmenting {shape[0]} slices with {Path(source).name}…")
        if self.run_synchronously:
            run.run_here()
        else:
            run.start_worker(before_start=self.track)

    def cancel_volume(self) -> None:
        """Stop the whole-volume run after its current batch (nothing is written)."""
        if self._volume_run is not None:
            self.status.value = "Cancelling…"
            self._volume_run.cancel()

    def _on_volume_progress(self, done: int, total: int) -> None:
        self.progress.value = done
        self.volume_progress.emit(done, total)

    def _end_volume(self) -> None:
        self._volume_run = None
        self.progress.visible = self.cancel_button.visible = False
        self.volume_button.enabled = True

    def report_error(self, exc: Exception) -> None:
        """Show a failed segmentation (one line in napari's notifications, never a traceback)
        and enable Segment."""
        self.set_busy(None)
        self.status.value = _errors.report_error(exc, "Segmentation failed")

    def _on_done(self, layer: Image, index: tuple, result: Prediction) -> None:
        """Show a finished prediction, or, when it cannot be shown, say why and leave the
        layers as they were (never a half-written proposal)."""
        try:
            self._show_proposal(layer, index, result)
        except Exception as exc:  # noqa: BLE001 - shown to the user, not raised
            self.report_error(exc)

    def _show_proposal(self, layer: Image, index: tuple, result: Prediction) -> None:
        if layer not in self._viewer.layers:
            self.set_busy(None)
            self.status.value = "The image was closed before its proposal was ready."
            return
        spatial = layer.data.shape[:-1] if layer.rgb else layer.data.shape
        expected = tuple(spatial[len(index) :])
        if tuple(result.mask.shape) != expected:
            raise ValueError(
                f"the proposal has shape {tuple(result.mask.shape)} but the image plane has "
                f"shape {expected}; nothing was changed"
            )
        name = layer.name + PROPOSAL_SUFFIX
        created = name not in self._viewer.layers
        labels = self.proposal_layer(layer)
        try:
            self._write(labels, index, result.mask)
        except BaseException:
            if created and labels in self._viewer.layers:
                self._viewer.layers.remove(labels)
            raise
        share = 100.0 * result.mask.mean()
        self.adopt_proposal(
            layer,
            labels,
            index,
            result,
            f"Proposal: {share:.1f}% of the image at threshold {result.threshold:.2f}",
        )
        if not result.mask.any():
            show_info("The model found nothing at this threshold; try a lower one.")

    def adopt_proposal(
        self, image: Image, labels: Labels, index: tuple, result: Prediction, message: str
    ) -> None:
        """Take a proposal already written to ``labels`` (at ``index``) as the shown one: the
        threshold slider re-cuts it, ``proposal_ready`` is emitted, Segment is enabled."""
        self.set_busy(None)
        self._last = (labels, index, result)
        self._last_threshold = result.threshold
        self.status.value = message
        self.proposal_ready.emit(image, index, result)

    def proposal_layer(self, image: Image) -> Labels:
        """The Labels layer for proposals on ``image`` (made, aligned with it, when missing)."""
        name = image.name + PROPOSAL_SUFFIX
        shape = image.data.shape[:-1] if image.rgb else image.data.shape
        if name in self._viewer.layers:
            existing = self._viewer.layers[name]
            if isinstance(existing, Labels) and existing.data.shape == shape:
                return existing
            self._viewer.layers.remove(name)
        return self._viewer.add_labels(
            np.zeros(shape, dtype=np.uint8),
            name=name,
            scale=image.scale,
            translate=image.translate,
            affine=image.affine,
            rotate=image.rotate,
            opacity=0.5,
            # the source (file, DICOM series, geometry), for saving the labels (_writer.py)
            metadata={k: v for k, v in image.metadata.items() if k in _SOURCE_KEYS},
        )

    @staticmethod
    def _write(labels: Labels, index: tuple, mask: np.ndarray) -> None:
        data = labels.data
        if index:
            data[index] = mask.astype(data.dtype)
        else:
            data[...] = mask.astype(data.dtype)
        labels.refresh()

    def _recut(self, threshold: float) -> None:
        if self._last is None:
            return
        labels, index, result = self._last
        if labels not in self._viewer.layers:
            self._last = None
            return
        shown = labels.data[index] if index else labels.data
        if not np.array_equal(shown != 0, result.recut(self._last_threshold)):
            # The user painted on the proposal: never overwrite their work.
            self.status.value = "The proposal was edited; the threshold no longer applies to it."
            return
        self._write(labels, index, result.recut(float(threshold)))
        self._last_threshold = float(threshold)
        self.proposal_recut.emit(labels, index)


def _bind_click_mode_key(viewer: napari.viewer.Viewer, widget: SegmentWidget) -> None:
    """Shift-P toggles click mode (the widget held weakly: a key pressed after it is gone does
    nothing)."""
    import contextlib
    import weakref

    from napari_lvit._click_mode import TOGGLE_KEY

    ref = weakref.ref(widget)

    def toggle(_viewer=None) -> None:
        target = ref()
        if target is not None:
            with contextlib.suppress(RuntimeError):  # the Qt widget is gone
                target.toggle_click_mode()

    viewer.bind_key(TOGGLE_KEY, toggle, overwrite=True)


def _prediction(probs: np.ndarray, threshold: float, text: str | None) -> Prediction:
    from src_models.inference import Prediction

    return Prediction(prob=probs, mask=probs >= threshold, threshold=threshold, text=text)

"""The Segment dock widget: pick a model and an image, type a description, get a mask.

The model runs in a napari thread worker, so the viewer stays responsive; the proposal lands in
a Labels layer aligned with the image (same scale, translate and affine). A threshold slider
re-cuts the last probability map without running the model again. Once a model is loaded, a
description is encoded in the background while it is typed (after a short pause), so pressing
Segment runs only the image and fusion parts of the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    Label,
    PushButton,
    TextEdit,
    create_widget,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info

if TYPE_CHECKING:
    import napari

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


class SegmentWidget(Container):
    """Dock widget: Model, Device, Image, Description, Segment, Threshold."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._predictors: dict[tuple[str, str], Predictor] = {}
        self._last: tuple[Labels, tuple, Prediction] | None = None
        self._last_threshold = 0.5
        self._worker = None
        self._typing_timer = None  # a QTimer, made on the first keystroke
        self.run_synchronously = False  # tests flip this to run the model on the calling thread

        self.model = ComboBox(label="Model", choices=model_choices())
        self.checkpoint = FileEdit(label="Checkpoint", mode="r", filter="*.safetensors")
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda"], value="auto")
        self.image = create_widget(annotation=Image, label="Image")
        self.text = TextEdit(label="Description")
        self.segment_button = PushButton(text="Segment")
        self.threshold = FloatSlider(label="Threshold", min=0.01, max=0.99, step=0.01, value=0.5)
        self.status = Label(value="Type a description and press Segment.")
        self.extend(
            [
                self.model,
                self.checkpoint,
                self.device,
                self.image,
                self.text,
                self.segment_button,
                self.threshold,
                self.status,
            ]
        )
        self.checkpoint.visible = False
        self.model.changed.connect(self._on_model_changed)
        self.image.changed.connect(self._on_image_changed)
        self.segment_button.changed.connect(self.segment)
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
        if self.model.value == FROM_FILE:
            path = Path(self.checkpoint.value).expanduser()
            if not path.is_file():
                raise ValueError("choose a checkpoint file (*.safetensors) first")
            return str(path)
        return str(self.model.value)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _refresh_images(self, event=None) -> None:
        self.image.reset_choices()

    def _on_model_changed(self, value: str) -> None:
        self.checkpoint.visible = value == FROM_FILE

    def _on_image_changed(self, layer: Image | None) -> None:
        """Fill the description from the image's metadata (e.g. a report read with it)."""
        if layer is None:
            return
        text = layer.metadata.get("description") or layer.metadata.get("text")
        if text:
            self.text.value = str(text)

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

    def _set_busy(self, message: str | None) -> None:
        self.segment_button.enabled = message is None
        self.segment_button.text = "Segment" if message is None else "Working…"
        if message is not None:
            self.status.value = message

    # --- segmentation ------------------------------------------------------------------
    def _predictor(self, source: str, device: str) -> Predictor:
        from src_models.inference import Predictor

        key = (source, device)
        if key not in self._predictors:
            self._predictors.clear()  # one model in memory at a time
            self._predictors[key] = Predictor(source, device=device)
        return self._predictors[key]

    def segment(self) -> None:
        """Run the model on the shown plane of the chosen image and show the proposal."""
        if self.busy:
            return
        layer = self.image.value
        if layer is None:
            show_error("Open an image first.")
            return
        text = self.text.value.strip()
        try:
            source = self.model_source
            plane, index = self._plane(layer)
        except ValueError as exc:
            show_error(str(exc))
            self.status.value = str(exc)
            return
        device = str(self.device.value)
        threshold = float(self.threshold.value)

        def job() -> Prediction:
            predictor = self._predictor(source, device)
            return predictor.predict(plane, text or None, threshold=threshold)

        self._set_busy(f"Segmenting with {Path(source).name}…")
        if self.run_synchronously:
            try:
                result = job()
            except Exception as exc:  # noqa: BLE001 - shown to the user, not raised
                self._on_error(exc)
            else:
                self._on_done(layer, index, result)
            return
        from napari.qt.threading import create_worker

        worker = create_worker(job)
        worker.returned.connect(lambda result: self._on_done(layer, index, result))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def _plane(self, layer: Image) -> tuple[np.ndarray, tuple]:
        """The 2D input of the model and its index into the layer (a hook for subclasses)."""
        return image_plane(layer, self._viewer.dims.current_step)

    def _on_finished(self) -> None:
        self._worker = None

    def _on_error(self, exc: Exception) -> None:
        self._set_busy(None)
        message = f"Segmentation failed: {exc}"
        self.status.value = message
        show_error(message)

    def _on_done(self, layer: Image, index: tuple, result: Prediction) -> None:
        self._set_busy(None)
        labels = self._proposal_layer(layer)
        self._last = (labels, index, result)
        self._last_threshold = result.threshold
        self._write(labels, index, result.mask)
        share = 100.0 * result.mask.mean()
        self.status.value = (
            f"Proposal: {share:.1f}% of the image at threshold {result.threshold:.2f}"
        )
        if not result.mask.any():
            show_info("The model found nothing at this threshold; try a lower one.")

    def _proposal_layer(self, image: Image) -> Labels:
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

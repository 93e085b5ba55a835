"""The napari layers of the image the annotation loop shows: its pixels and its labels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels

    from napari_lvit._widget import SegmentWidget
    from src_models.project import ImageRecord


def real(obj: Any) -> Any:
    """The object behind napari's public-only proxy (plugins get a proxied viewer, whose
    layers come back proxied too; identity checks need the real layer)."""
    return getattr(obj, "__wrapped__", obj)


class ShownImage:
    """An Image layer and its Labels layer (the Segment widget's proposal layer)."""

    def __init__(self, viewer: napari.viewer.Viewer, seg: SegmentWidget) -> None:
        self.viewer, self.seg = viewer, seg
        self.image: Image | None = None
        self.labels: Labels | None = None

    def show(self, rec: ImageRecord, data: np.ndarray, rgb: bool, loaded: Any = None) -> Image:
        """Add ``rec``'s pixels and an empty labels layer aligned with them; with ``loaded``
        (its :class:`~src_models.data.io.LoadedImage`) both are placed in millimetres and name
        their source (for saving the labels as NIfTI / DICOM SEG)."""
        from napari_lvit._reader import layer_geometry, source_metadata
        from src_models.data.windows import window_applies

        self.remove()
        metadata = {"description": rec.text or "", "project_image_id": rec.id}
        geometry = {}
        if loaded is not None:
            metadata = {**source_metadata(loaded), **metadata}
            geometry = layer_geometry(loaded)
        if rec.window is not None and window_applies(data.dtype, rgb):
            # the project's CT window: the Segment widget shows it and the model follows it
            metadata["window"] = [rec.window.level, rec.window.width]
            geometry["contrast_limits"] = rec.window.range
        self.image = real(
            self.viewer.add_image(data, name=rec.name, rgb=rgb, metadata=metadata, **geometry)
        )
        self.labels = real(self.seg.proposal_layer(self.image))
        return self.image

    def activate(self) -> None:
        """Make the labels the active layer (napari's paint tools act on them) and the image
        the Segment widget's input."""
        self.viewer.layers.selection.active = self.labels
        self.seg.image.reset_choices()
        self.seg.image.value = self.image

    def remove(self) -> None:
        for layer in (self.labels, self.image):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.labels = self.image = None

    def set_labels(self, mask: np.ndarray) -> None:
        self.labels.data = mask.astype(self.labels.data.dtype)

    def labels_data(self) -> np.ndarray | None:
        """The labels (the layer's own array), or ``None`` without a labels layer."""
        return None if self.labels is None else np.asarray(self.labels.data)

    def labels_on_screen(self) -> bool:
        return self.labels is not None and self.labels in self.viewer.layers

    def shown_slice(self) -> int:
        """The slice of a 3D labels layer the viewer shows (0 for 2D)."""
        data = self.labels_data()
        return int(self.viewer.dims.current_step[-3]) if data is not None and data.ndim == 3 else 0

    def refresh(self) -> None:
        if self.labels is not None:
            self.labels.refresh()

    def is_image(self, layer: Any) -> bool:
        return self.image is not None and real(layer) is self.image

    def is_labels(self, layer: Any) -> bool:
        return self.labels is not None and real(layer) is self.labels

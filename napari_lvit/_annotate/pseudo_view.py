"""The pseudo-label view of the annotation loop: a box with the shown image's pseudo label
(rounds, movement, confidence) and its buttons, and the napari layers that draw it (the
probability as a translucent map, its cut as a contour). Display only: the state is in
:mod:`napari_lvit._annotate.pseudo`, the actions in the session and the widget."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QCheckBox, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from napari_lvit._annotate.layers import real
from napari_lvit._widget import wrap_to_width

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels

PROB_SUFFIX = " pseudo label"
CUT_SUFFIX = " pseudo cut"


class PseudoBox(QGroupBox):
    """What EPI believes about the shown image, and Accept / Edit / Review next."""

    def __init__(self) -> None:
        super().__init__("Pseudo label (EPI)")
        lay = QVBoxLayout(self)
        self.info = wrap_to_width(QLabel("No project open."))
        lay.addWidget(self.info)
        self.show_check = QCheckBox("Show the pseudo label")
        self.show_check.setChecked(True)
        self.show_check.setToolTip(
            "Draw the pseudo label over the image: its probability as a translucent map, its "
            "cut (what Accept commits) as a contour"
        )
        lay.addWidget(self.show_check)
        self.accept_button = QPushButton("Accept pseudo label")
        self.accept_button.setToolTip(
            "Commit the pseudo label's cut as this image's label (kind accepted_pseudo); the "
            "next retraining trains on it"
        )
        self.edit_button = QPushButton("Edit")
        self.edit_button.setToolTip(
            "Copy the pseudo label into the labels to correct it, then Commit"
        )
        self.review_button = QPushButton("Review next")
        self.review_button.setToolTip(
            "Go to the unreviewed pseudo label most likely right: high confidence, small change"
        )
        row = QHBoxLayout()
        for b in (self.accept_button, self.edit_button, self.review_button):
            row.addWidget(b)
        lay.addLayout(row)

    def show_state(self, text: str, has_label: bool, can_review: bool) -> None:
        self.info.setText(text)
        self.accept_button.setEnabled(has_label)
        self.edit_button.setEnabled(has_label)
        self.review_button.setEnabled(can_review)


class PseudoLayers:
    """The two layers of the shown image's pseudo label, kept under its Labels layer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.prob: Image | None = None
        self.cut: Labels | None = None

    def show(self, image: Image, labels: Labels, prob: np.ndarray, cut: np.ndarray) -> None:
        """Draw ``prob`` (in [0, 1]) and ``cut`` aligned with ``image``, below ``labels``."""
        self.remove()
        geometry = {
            "scale": image.scale,
            "translate": image.translate,
            "affine": image.affine,
            "rotate": image.rotate,
        }
        self.prob = real(
            self.viewer.add_image(
                prob,
                name=image.name + PROB_SUFFIX,
                colormap="magma",
                contrast_limits=(0.0, 1.0),
                opacity=0.45,
                blending="additive",
                **geometry,
            )
        )
        self.cut = real(
            self.viewer.add_labels(
                cut.astype(np.uint8), name=image.name + CUT_SUFFIX, opacity=0.9, **geometry
            )
        )
        self.cut.contour = 1
        self.cut.editable = False
        layers = self.viewer.layers
        for layer in (self.prob, self.cut):  # just below the user's labels, which stay on top
            layers.move(layers.index(layer), layers.index(labels))

    def remove(self) -> None:
        for layer in (self.cut, self.prob):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.prob = self.cut = None

    @property
    def shown(self) -> bool:
        return self.prob is not None and self.prob in self.viewer.layers

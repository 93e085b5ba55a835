"""The annotation widget's Qt views: the project row, the image list, navigation, the Segment
widget's place, the action buttons, the pseudo-label box and the Retrain panel. Layout and
display only: what the buttons do is in :mod:`napari_lvit._annotate.widget`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_lvit._annotate.panel import RetrainPanel
from napari_lvit._annotate.pseudo_view import PseudoBox
from napari_lvit._annotate.shortcuts import shortcut_help
from napari_lvit._widget import wrap_to_width

if TYPE_CHECKING:
    from src_models.project import ImageRecord

STATUS_COLOR = {
    "unlabeled": "#bbbbbb",
    "proposed": "#e0b040",
    "corrected": "#60c060",
    "no_lesion": "#60a0e0",
}


class ImageList(QListWidget):
    """The project's images, one line each, coloured by status."""

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumHeight(120)

    def show_records(self, records: list[ImageRecord], texts: list[str], current: int) -> None:
        """Refill the list (without emitting a row change); select row ``current`` if >= 0."""
        self.blockSignals(True)
        try:
            self.clear()
            for rec, text in zip(records, texts, strict=True):
                item = QListWidgetItem()
                self._fill(item, rec, text)
                self.addItem(item)
            if current >= 0:
                self.setCurrentRow(current)
        finally:
            self.blockSignals(False)

    def update_record(self, row: int, rec: ImageRecord, text: str) -> None:
        item = self.item(row)
        if item is not None:
            self._fill(item, rec, text)

    def select_quietly(self, row: int) -> None:
        """Select ``row`` without emitting a row change."""
        self.blockSignals(True)
        self.setCurrentRow(row)
        self.blockSignals(False)

    @staticmethod
    def _fill(item: QListWidgetItem, rec: ImageRecord, text: str) -> None:
        item.setText(text)
        item.setForeground(QColor(STATUS_COLOR.get(rec.status, "#bbbbbb")))
        item.setToolTip(f"{rec.name}: {rec.status}\n{rec.text or '(no description)'}")


class AnnotationView(QWidget):
    """The layout of the annotation dock widget around ``segment_native`` (the Segment
    widget's Qt widget), in a vertical scroll area: a window shorter than the widget scrolls
    it instead of squeezing its parts."""

    def __init__(self, segment_native: QWidget) -> None:
        super().__init__()
        content = QWidget()
        outer = QVBoxLayout(content)
        outer.setContentsMargins(4, 4, 4, 4)

        row = QHBoxLayout()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("folder of images, LViT folder or project")
        self.open_button = QPushButton("Open…")
        self.open_button.setToolTip("Open a folder (a project is created in <folder>/.napari-lvit)")
        row.addWidget(self.path_edit)
        row.addWidget(self.open_button)
        outer.addLayout(row)
        self.project_label = wrap_to_width(QLabel("No project open."))
        outer.addWidget(self.project_label)

        self.image_list = ImageList()
        outer.addWidget(self.image_list)
        self.prev_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.suggest_button = QPushButton("Suggest next")
        self.suggest_button.setToolTip(
            "Rank the unlabelled images by the model's uncertainty (mean binary entropy of its "
            "prediction) and go to the least certain one"
        )
        outer.addLayout(_row(self.prev_button, self.next_button, self.suggest_button))
        self.suggest_label = wrap_to_width(QLabel(""))
        outer.addWidget(self.suggest_label)

        outer.addWidget(segment_native)
        form = QFormLayout()
        self.history = QComboBox()
        # as wide as the dock, not as the longest text (that would widen the dock)
        self.history.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.history.setMinimumContentsLength(12)
        self.history.setToolTip("Texts used on this image; pick one to use it again")
        form.addRow("Used texts", self.history)
        outer.addLayout(form)

        self.volume_check = QCheckBox("Whole volume")
        self.volume_check.setToolTip("3D: segment and commit every slice (else the shown one)")
        self.auto_segment_check = QCheckBox("Segment on open")
        self.auto_segment_check.setChecked(True)
        outer.addLayout(_row(self.volume_check, self.auto_segment_check))

        self.commit_button = QPushButton("Commit")
        self.clear_button = QPushButton("Clear")
        self.no_lesion_button = QPushButton("No lesion")
        outer.addLayout(_row(self.commit_button, self.clear_button, self.no_lesion_button))
        self.pseudo_box = PseudoBox()
        outer.addWidget(self.pseudo_box)
        self.work_bar = QProgressBar()
        self.work_bar.setVisible(False)
        outer.addWidget(self.work_bar)

        self.panel = RetrainPanel()
        outer.addWidget(self.panel)
        outer.addStretch(1)
        # The panel's controls under their earlier names (scripts and benchmarks use them).
        p = self.panel
        self.rounds_spin, self.epochs_spin, self.auto_spin = (
            p.rounds_spin,
            p.epochs_spin,
            p.auto_spin,
        )
        self.clcc_check, self.plot = p.clcc_check, p.plot
        self.retrain_button, self.cancel_button = p.retrain_button, p.cancel_button
        self.retrain_bar, self.retrain_label = p.retrain_bar, p.retrain_label
        self.setToolTip("Keyboard shortcuts (canvas focused):\n" + shortcut_help())

        scroll = QScrollArea()
        scroll.setWidget(content)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(scroll)
        self._content, self._scroll = content, scroll
        self.setMinimumWidth(self._content_width(content.minimumSizeHint()))

    def scroll_to(self, widget: QWidget) -> None:
        """Scroll the dock so that ``widget`` (one of its parts) is in view."""
        self._scroll.ensureWidgetVisible(widget, 0, 0)

    def _content_width(self, size: QSize) -> int:
        return size.width() + self._scroll.verticalScrollBar().sizeHint().width()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        """All of the content when the screen has room; else the screen's height less room
        for napari's menus and status bar (the rest scrolls)."""
        hint = self._content.sizeHint()
        screen = self.screen()
        room = screen.availableGeometry().height() - 160 if screen is not None else hint.height()
        return QSize(self._content_width(hint), max(200, min(hint.height(), room)))

    def set_history(self, texts: list[str]) -> None:
        """The "Used texts" choices (long ones shortened; the full text is the item's data)."""
        self.history.clear()
        for t in texts:
            self.history.addItem(t if len(t) <= 80 else t[:77] + "…", t)
            self.history.setItemData(self.history.count() - 1, t, Qt.ItemDataRole.ToolTipRole)

    def enable(self, has_project: bool, has_images: bool, has_image: bool, volume: bool) -> None:
        for b in (self.commit_button, self.clear_button, self.no_lesion_button):
            b.setEnabled(has_image)
        for b in (self.prev_button, self.next_button, self.suggest_button):
            b.setEnabled(has_project and has_images)
        self.volume_check.setEnabled(volume)


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for w in widgets:
        row.addWidget(w)
    return row

"""The annotation loop dock widget: a project, its images, Segment, Commit, Retrain, Next.

Open a folder (or a project), go through its images, get a proposal, correct it with napari's
label tools, commit; retrain in the background and let the widget suggest the image the model
is least sure about. Commits go straight to the project store (crash-safe); the viewer never
waits for training, which runs as a separate process (``python -m src_models.cli retrain
--jsonl``) by default: see ``benchmarks/bench_responsiveness.py`` for why.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QPointF, QProcess, QProcessEnvironment, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_lvit._widget import FROM_FILE, SegmentWidget, image_plane, model_choices

if TYPE_CHECKING:
    import napari

    from src_models.inference import Prediction
    from src_models.project import ImageRecord, Project, ProposalRecord

PROJECT_MODEL = "project model (latest round)"

#: Keyboard shortcuts bound on the viewer (they act when the canvas has the focus).
SHORTCUTS = {
    "Shift-S": ("segment", "Segment"),
    "Shift-C": ("commit", "Commit the labels as this image's correction"),
    "Shift-X": ("no_lesion", "No lesion in this image"),
    "Shift-E": ("clear", "Clear the labels (nothing is saved)"),
    "Shift-N": ("next_image", "Next image"),
    "Shift-B": ("previous_image", "Previous image (back)"),
    "Shift-U": ("go_to_suggested", "Go to the suggested (most uncertain) image"),
}

STATUS_MARK = {"unlabeled": "○", "proposed": "◐", "corrected": "●", "no_lesion": "∅"}
STATUS_COLOR = {
    "unlabeled": "#bbbbbb",
    "proposed": "#e0b040",
    "corrected": "#60c060",
    "no_lesion": "#60a0e0",
}


def _real(obj: Any) -> Any:
    """The object behind napari's public-only proxy (plugins get a proxied viewer, whose
    layers come back proxied too; identity checks need the real layer)."""
    return getattr(obj, "__wrapped__", obj)


def shortcut_help() -> str:
    return "\n".join(f"{key}: {what}" for key, (_, what) in SHORTCUTS.items())


# --------------------------------------------------------------------------- the curve plot


class CurvePlot(QWidget):
    """Training loss (orange, scaled to its maximum) and validation Dice (green, 0-1) per
    epoch, with a grey line where a retraining round begins. Pure QPainter."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss: list[float] = []
        self.dice: list[float | None] = []
        self.round_starts: list[int] = []
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training loss (orange) and validation Dice (green) per epoch")

    def clear(self) -> None:
        self.loss, self.dice, self.round_starts = [], [], []
        self.update()

    def start_round(self) -> None:
        self.round_starts.append(len(self.loss))
        self.update()

    def add_epoch(self, loss: float | None) -> None:
        self.loss.append(float("nan") if loss is None else float(loss))
        self.dice.append(None)
        self.update()

    def set_dice(self, dice: float | None) -> None:
        if self.dice and dice is not None:
            self.dice[-1] = float(dice)
            self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        p = QPainter(self)
        try:
            p.setRenderHint(QPainter.RenderHint.Antialiasing)
            w, h = self.width(), self.height()
            left, right, top, bottom = 6, 6, 14, 6
            pw, ph = max(w - left - right, 1), max(h - top - bottom, 1)
            p.fillRect(0, 0, w, h, QColor("#262930"))
            p.setPen(QPen(QColor("#555555")))
            p.drawRect(left, top, pw, ph)
            n = len(self.loss)
            p.setPen(QColor("#cccccc"))
            if n == 0:
                p.drawText(left + 4, top + ph // 2, "no training yet")
                return
            finite = [v for v in self.loss if np.isfinite(v)]
            top_loss = max(finite) if finite else 1.0
            last_dice = next((d for d in reversed(self.dice) if d is not None), None)
            label = f"loss {finite[-1]:.3f}" if finite else "loss -"
            if last_dice is not None:
                label += f"   val Dice {last_dice:.3f}"
            p.drawText(left, top - 3, label)

            def xy(i: int, v: float) -> QPointF:
                x = left + (pw * (i + 0.5) / n)
                return QPointF(x, top + ph * (1.0 - min(max(v, 0.0), 1.0)))

            p.setPen(QPen(QColor("#777777"), 1, Qt.PenStyle.DashLine))
            for s in self.round_starts:
                if 0 < s < n:
                    x = left + pw * s / n
                    p.drawLine(QPointF(x, top), QPointF(x, top + ph))
            for values, color in (
                ([v / top_loss if top_loss > 0 else 0.0 for v in self.loss], "#f0a040"),
                ([np.nan if d is None else d for d in self.dice], "#60d060"),
            ):
                p.setPen(QPen(QColor(color), 2))
                prev = None
                for i, v in enumerate(values):
                    if not np.isfinite(v):
                        prev = None
                        continue
                    pt = xy(i, v)
                    if prev is not None:
                        p.drawLine(prev, pt)
                    p.drawEllipse(pt, 2.0, 2.0)
                    prev = pt
        finally:
            p.end()


# --------------------------------------------------------------------------- segment part


class _LoopSegmentWidget(SegmentWidget):
    """The Segment widget, wired to the project: proposals are recorded, the project's model
    can be chosen, volumes are read with one intensity scale, edits are never overwritten."""

    def __init__(self, viewer: napari.viewer.Viewer, owner: AnnotationWidget) -> None:
        self._owner_ref = weakref.ref(owner)
        self._predictor_lock = threading.Lock()
        super().__init__(viewer)
        self.image.visible = False  # the image list drives the image

    @property
    def owner(self) -> AnnotationWidget:
        return self._owner_ref()

    @property
    def model_source(self) -> str:
        if self.model.value == PROJECT_MODEL:
            project = self.owner.project
            ckpt = project.current_checkpoint if project is not None else None
            if ckpt is None or not ckpt.is_file():
                raise ValueError("the project has no trained model yet: press Retrain first")
            return str(ckpt)
        return super().model_source

    def _predictor(self, source: str, device: str):
        # Workers (proposal, preload, suggestions) may ask at once: build each model once, and
        # never import transformers from two threads at the same time.
        with self._predictor_lock:
            predictor = super()._predictor(source, device)
        owner = self.owner
        if owner is not None:  # runs on the thread that predicts next
            owner._apply_inference_threads()
        return predictor

    def _plane(self, layer: Image) -> tuple[np.ndarray, tuple]:
        plane, index = image_plane(layer, self._viewer.dims.current_step)
        rng = self.owner._volume_range(layer)
        if index and rng is not None:
            from src_models.project.suggest import model_plane

            plane = model_plane(layer.data, index[0], rng) if len(index) == 1 else plane
        return plane, index

    def segment(self) -> None:
        owner = self.owner
        if owner is not None and not owner._may_replace_labels():
            return
        if owner is not None and owner.whole_volume_active():
            owner.segment_volume()
            return
        super().segment()

    def _on_done(self, layer: Image, index: tuple, result: Prediction) -> None:
        super()._on_done(layer, index, result)
        owner = self.owner
        if owner is not None:
            owner._on_proposal(layer, index, result)

    def _recut(self, threshold: float) -> None:
        owner = self.owner
        was_clean = owner is not None and not owner.labels_edited()
        super()._recut(threshold)
        if was_clean:
            owner._set_baseline(kind="proposal")


# --------------------------------------------------------------------------- the widget


class AnnotationWidget(QWidget):
    """Dock widget: the annotation loop over a project (see the module docstring)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.project: Project | None = None
        self.records: list[ImageRecord] = []
        self.current: ImageRecord | None = None
        self._image_layer: Image | None = None
        self._labels_layer: Labels | None = None
        self._baseline: np.ndarray | None = None  # the labels as the widget last set them
        self._baseline_kind = "empty"  # empty | commit | proposal
        self._proposal: ProposalRecord | None = None
        self._proposal_shown: np.ndarray | None = None
        self._drafts: dict[int, np.ndarray] = {}
        self._replace_armed: int | None = None
        self._ranges: dict[int, tuple[float, float] | None] = {}
        self.scores: dict[int, Any] = {}
        self.suggested: Any = None
        self._commits_since_retrain = 0
        self._retrain_proc: QProcess | None = None
        self._retrain_worker = None
        self._retrain_run = None
        self._stdout_buf = b""
        self._stderr_tail = ""
        self._retrain_last: dict[str, Any] | None = None
        self._retrain_error: str | None = None
        self._volume_worker = None
        self._suggest_worker = None
        self._preload_worker = None
        self._ui_time = 0.0
        self.loaded_checkpoint: Path | None = None
        self.retrain_events: list[dict[str, Any]] = []
        #: "process" (default: a separate process) or "thread" (a napari thread worker)
        self.retrain_mode = "process"
        #: extra RetrainConfig fields, e.g. {"img_size": 64} (also turned into CLI flags)
        self.retrain_options: dict[str, Any] = {}
        self.segment_on_open = True
        self._round_text = ""
        self._stop_proc: _Stopper | None = None
        self._fit_epochs = 1
        self._fit_steps = 1

        self.seg = _LoopSegmentWidget(napari_viewer, self)
        self._build_ui()
        self._bind_keys()
        self.seg.model.changed.connect(self._on_model_changed)
        self._update_buttons()

    # ------------------------------------------------------------------ UI

    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)

        row = QHBoxLayout()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("folder of images, LViT folder or project")
        self.open_button = QPushButton("Open…")
        self.open_button.setToolTip("Open a folder (a project is created in <folder>/.napari-lvit)")
        self.open_button.clicked.connect(self._browse)
        self.path_edit.returnPressed.connect(lambda: self.open(self.path_edit.text()))
        row.addWidget(self.path_edit)
        row.addWidget(self.open_button)
        outer.addLayout(row)
        self.project_label = QLabel("No project open.")
        self.project_label.setWordWrap(True)
        outer.addWidget(self.project_label)

        self.image_list = QListWidget()
        self.image_list.setMinimumHeight(120)
        self.image_list.currentRowChanged.connect(self._on_row_changed)
        outer.addWidget(self.image_list)

        nav = QHBoxLayout()
        self.prev_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.suggest_button = QPushButton("Suggest next")
        self.suggest_button.setToolTip(
            "Rank the unlabelled images by the model's uncertainty (mean binary entropy of its "
            "prediction) and go to the least certain one"
        )
        self.prev_button.clicked.connect(self.previous_image)
        self.next_button.clicked.connect(self.next_image)
        self.suggest_button.clicked.connect(lambda: self.suggest(go=True))
        for b in (self.prev_button, self.next_button, self.suggest_button):
            nav.addWidget(b)
        outer.addLayout(nav)
        self.suggest_label = QLabel("")
        self.suggest_label.setWordWrap(True)
        outer.addWidget(self.suggest_label)

        outer.addWidget(self.seg.native)
        form = QFormLayout()
        self.history = QComboBox()
        self.history.setToolTip("Texts used on this image; pick one to use it again")
        self.history.activated.connect(self._on_history_picked)
        form.addRow("Used texts", self.history)
        outer.addLayout(form)

        opts = QHBoxLayout()
        self.volume_check = QCheckBox("Whole volume")
        self.volume_check.setToolTip("3D: segment and commit every slice (else the shown one)")
        self.auto_segment_check = QCheckBox("Segment on open")
        self.auto_segment_check.setChecked(True)
        self.auto_segment_check.toggled.connect(lambda v: setattr(self, "segment_on_open", v))
        opts.addWidget(self.volume_check)
        opts.addWidget(self.auto_segment_check)
        outer.addLayout(opts)

        acts = QHBoxLayout()
        self.commit_button = QPushButton("Commit")
        self.clear_button = QPushButton("Clear")
        self.no_lesion_button = QPushButton("No lesion")
        self.commit_button.clicked.connect(self.commit)
        self.clear_button.clicked.connect(self.clear)
        self.no_lesion_button.clicked.connect(self.no_lesion)
        for b in (self.commit_button, self.clear_button, self.no_lesion_button):
            acts.addWidget(b)
        outer.addLayout(acts)
        self.work_bar = QProgressBar()
        self.work_bar.setVisible(False)
        outer.addWidget(self.work_bar)

        box = QGroupBox("Retrain")
        lay = QVBoxLayout(box)
        spins = QHBoxLayout()
        self.rounds_spin = QSpinBox()
        self.rounds_spin.setRange(1, 100)
        self.rounds_spin.setValue(1)
        self.rounds_spin.setPrefix("rounds ")
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(5)
        self.epochs_spin.setPrefix("epochs ")
        self.auto_spin = QSpinBox()
        self.auto_spin.setRange(0, 1000)
        self.auto_spin.setValue(0)
        self.auto_spin.setPrefix("auto every ")
        self.auto_spin.setSuffix(" commits")
        self.auto_spin.setSpecialValueText("auto: off")
        self.clcc_check = QCheckBox("CLCC")
        self.clcc_check.setToolTip(
            "Also train with cross-level contrast and patch consistency (CLCC) on every image, "
            "unlabelled ones included; slower rounds"
        )
        for s in (self.rounds_spin, self.epochs_spin, self.auto_spin, self.clcc_check):
            spins.addWidget(s)
        lay.addLayout(spins)
        buttons = QHBoxLayout()
        self.retrain_button = QPushButton("Retrain")
        self.retrain_button.setToolTip(
            "Train on the committed corrections (and, with EPI, the unlabelled images with a "
            "text) in the background; the new model is loaded when a round ends"
        )
        self.cancel_button = QPushButton("Cancel")
        self.retrain_button.clicked.connect(self.retrain)
        self.cancel_button.clicked.connect(self.cancel_retrain)
        buttons.addWidget(self.retrain_button)
        buttons.addWidget(self.cancel_button)
        lay.addLayout(buttons)
        self.retrain_bar = QProgressBar()
        self.retrain_bar.setFormat("%p%")
        lay.addWidget(self.retrain_bar)
        self.plot = CurvePlot()
        lay.addWidget(self.plot)
        self.retrain_label = QLabel("")
        self.retrain_label.setWordWrap(True)
        lay.addWidget(self.retrain_label)
        outer.addWidget(box)
        outer.addStretch(1)
        self.setToolTip("Keyboard shortcuts (canvas focused):\n" + shortcut_help())

    def _bind_keys(self) -> None:
        ref = weakref.ref(self)
        for key, (method, _) in SHORTCUTS.items():

            def action(viewer, method=method):
                widget = ref()
                if widget is not None:
                    with contextlib.suppress(RuntimeError):  # the Qt widget is gone
                        getattr(widget, method)()

            self.viewer.bind_key(key, action, overwrite=True)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images or project")
        if folder:
            self.open(folder)

    # ------------------------------------------------------------------ convenience

    @property
    def run_synchronously(self) -> bool:
        return self.seg.run_synchronously

    @run_synchronously.setter
    def run_synchronously(self, value: bool) -> None:
        self.seg.run_synchronously = bool(value)

    @property
    def idle(self) -> bool:
        """Nothing runs in the background (no training, model loading, scoring, segmenting)."""
        return not (
            self.retraining
            or self.seg.busy
            or self._suggest_worker is not None
            or self._volume_worker is not None
            or self._preload_worker is not None
        )

    @property
    def retraining(self) -> bool:
        return self._retrain_proc is not None or self._retrain_worker is not None

    def _message(self, text: str, error: bool = False) -> None:
        self.seg.status.value = text
        if error:
            show_error(text)

    def _update_buttons(self) -> None:
        has_project = self.project is not None
        has_image = self.current is not None
        for b in (self.commit_button, self.clear_button, self.no_lesion_button):
            b.setEnabled(has_image)
        for b in (self.prev_button, self.next_button, self.suggest_button):
            b.setEnabled(has_project and bool(self.records))
        self.retrain_button.setEnabled(has_project and not self.retraining)
        self.cancel_button.setEnabled(self.retraining)
        self.volume_check.setEnabled(bool(self.current and self.current.is_volume))

    # ------------------------------------------------------------------ project

    def open(self, path: str | os.PathLike, project: str | os.PathLike | None = None) -> bool:
        """Open a project, an LViT folder (imported) or a folder of images (added)."""
        from src_models.project import ProjectError
        from src_models.project.retrain import recover_stale_rounds
        from src_models.project.workspace import open_workspace

        path = str(path).strip()
        if not path:
            self._message("Choose a folder first.", error=True)
            return False
        try:
            opened, how = open_workspace(path, project)
        except (ProjectError, ValueError, OSError) as exc:
            self._message(f"Cannot open '{path}': {exc}", error=True)
            return False
        self.close_project()
        self.project = opened
        self.path_edit.setText(str(path))
        try:
            recover_stale_rounds(opened)
        except Exception as exc:  # noqa: BLE001 - housekeeping must not block opening
            show_info(f"Could not check earlier retraining rounds: {exc}")
        self._commits_since_retrain = 0
        self.plot.clear()
        self._load_round_history()
        self._refresh_model_choices(select_project=opened.current_checkpoint is not None)
        self.refresh_list()
        counts = opened.counts()
        self.project_label.setText(
            f"Project {opened.folder} ({how}): {len(self.records)} images, "
            f"{counts['corrected'] + counts['no_lesion']} labelled"
        )
        if self.records:
            first = next((i for i, r in enumerate(self.records) if not r.is_labeled), 0)
            self.show_image(first)
        self._update_buttons()
        return True

    def close_project(self) -> None:
        if self.project is None:
            return
        self._remove_layers()
        self.current = None
        self.project.close()
        self.project = None
        self.records = []
        self.image_list.clear()
        self._drafts.clear()
        self.scores.clear()
        self.suggested = None

    def refresh_list(self) -> None:
        """Reload the image records and their statuses."""
        if self.project is None:
            return
        self.records = self.project.images()
        current_id = self.current.id if self.current is not None else None
        self.image_list.blockSignals(True)
        try:
            self.image_list.clear()
            for rec in self.records:
                item = QListWidgetItem(self._item_text(rec))
                item.setForeground(QColor(STATUS_COLOR.get(rec.status, "#bbbbbb")))
                item.setToolTip(f"{rec.name}: {rec.status}\n{rec.text or '(no description)'}")
                self.image_list.addItem(item)
            if current_id is not None:
                for i, rec in enumerate(self.records):
                    if rec.id == current_id:
                        self.current = rec
                        self.image_list.setCurrentRow(i)
        finally:
            self.image_list.blockSignals(False)

    def _item_text(self, rec: ImageRecord) -> str:
        text = f"{STATUS_MARK.get(rec.status, '?')} {rec.name}"
        if rec.is_volume:
            text += f"  ({rec.n_slices} slices)"
        if rec.id in self._drafts:
            text += "  ✎ unsaved edits"
        score = self.scores.get(rec.id)
        if score is not None and score.score is not None and not rec.is_labeled:
            text += f"  H={score.score:.3f}"
        return text

    def _on_row_changed(self, row: int) -> None:
        if 0 <= row < len(self.records) and (
            self.current is None or self.records[row].id != self.current.id
        ):
            self.show_image(row)

    # ------------------------------------------------------------------ images

    def _remove_layers(self) -> None:
        for layer in (self._labels_layer, self._image_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._labels_layer = self._image_layer = None

    def _stash_draft(self) -> None:
        """Keep uncommitted edits of the current image in memory (restored on return)."""
        if self.current is None or self._labels_layer is None:
            return
        if self.labels_edited():
            self._drafts[self.current.id] = np.asarray(self._labels_layer.data).copy()
            show_info(
                f"Uncommitted edits of '{self.current.name}' are kept until you come back "
                f"(they are not saved: commit them)"
            )
        else:
            self._drafts.pop(self.current.id, None)

    def show_image(self, row: int) -> None:
        """Open image ``row`` of the list: its pixels, its committed label (or a kept draft),
        its text; segment it when "Segment on open" is on and it has no label."""
        from src_models.data.io import load_image

        if self.project is None or not 0 <= row < len(self.records):
            return
        if self.seg.busy:
            self._message("Wait for the running segmentation to finish.")
            self.image_list.blockSignals(True)
            if self.current is not None:
                self.image_list.setCurrentRow(self._row_of(self.current.id))
            self.image_list.blockSignals(False)
            return
        self._stash_draft()
        rec = self.project.image(self.records[row].id)
        try:
            loaded = load_image(rec.path)
        except Exception as exc:  # noqa: BLE001 - shown, not raised
            self._message(f"Cannot read '{rec.path}': {exc}", error=True)
            return
        self._remove_layers()
        self.current = rec
        self._proposal = None
        self._proposal_shown = None
        self._replace_armed = None
        self.records[row] = rec
        data = loaded.data
        layer = _real(
            self.viewer.add_image(
                data,
                name=rec.name,
                rgb=bool(loaded.rgb),
                metadata={"description": rec.text or "", "project_image_id": rec.id},
            )
        )
        self._image_layer = layer
        self._ranges.pop(id(layer), None)
        labels = _real(self.seg._proposal_layer(layer))
        self._labels_layer = labels
        committed = self.project.current_mask(rec)
        if committed is not None:
            labels.data = committed.astype(labels.data.dtype)
            self._set_baseline(kind="commit")
        else:
            self._set_baseline(kind="empty")
        draft = self._drafts.pop(rec.id, None)
        if draft is not None and draft.shape == labels.data.shape:
            labels.data = draft
        self.viewer.layers.selection.active = labels
        self.seg.image.reset_choices()
        self.seg.image.value = layer
        self.seg.text.value = rec.text or ""
        self._refresh_history()
        self.image_list.blockSignals(True)
        self.image_list.setCurrentRow(row)
        self.image_list.item(row).setText(self._item_text(rec))
        self.image_list.blockSignals(False)
        state = {"corrected": "committed", "no_lesion": "no lesion"}.get(rec.status, rec.status)
        self._message(f"{rec.name} ({row + 1}/{len(self.records)}): {state}")
        self._update_buttons()
        if (
            self.segment_on_open
            and committed is None
            and draft is None
            and (rec.text or "").strip()
        ):
            self.seg.segment()

    def segment(self) -> None:
        """Segment the shown image (or, with "Whole volume", every slice)."""
        self.seg.segment()

    def _row_of(self, image_id: int) -> int:
        return next((i for i, r in enumerate(self.records) if r.id == image_id), -1)

    def next_image(self) -> None:
        if self.records:
            row = self._row_of(self.current.id) if self.current is not None else -1
            self.show_image(min(row + 1, len(self.records) - 1))

    def previous_image(self) -> None:
        if self.records:
            row = self._row_of(self.current.id) if self.current is not None else 1
            self.show_image(max(row - 1, 0))

    def _volume_range(self, layer: Image) -> tuple[float, float] | None:
        from src_models.project.suggest import volume_range

        key = id(layer)
        if key not in self._ranges:
            is_vol = layer.ndim == 3 and not layer.rgb
            self._ranges[key] = volume_range(np.asarray(layer.data), False) if is_vol else None
        return self._ranges[key]

    def whole_volume_active(self) -> bool:
        return bool(
            self.current is not None and self.current.is_volume and self.volume_check.isChecked()
        )

    # ------------------------------------------------------------------ labels state

    def _set_baseline(self, kind: str) -> None:
        if self._labels_layer is not None:
            self._baseline = np.asarray(self._labels_layer.data).copy()
            self._baseline_kind = kind

    def labels_edited(self) -> bool:
        """True if the labels differ from what the widget last put there (user edits)."""
        labels = self._labels_layer
        if labels is None or self._baseline is None:
            return False
        data = np.asarray(labels.data)
        return data.shape != self._baseline.shape or not np.array_equal(
            data != 0, self._baseline != 0
        )

    def _may_replace_labels(self) -> bool:
        """Segment over uncommitted edits only when asked twice."""
        if self.current is None or not self.labels_edited():
            self._replace_armed = None
            return True
        if self._replace_armed == self.current.id:
            self._replace_armed = None
            return True
        self._replace_armed = self.current.id
        self._message(
            "The labels have uncommitted edits: Commit them, or press Segment again to "
            "replace them with a new proposal."
        )
        return False

    def _on_model_changed(self, value: str) -> None:
        self.seg.checkpoint.visible = value == FROM_FILE

    def _refresh_model_choices(self, select_project: bool = False) -> None:
        choices = model_choices()
        if self.project is not None:
            choices = [PROJECT_MODEL, *choices]
        current = self.seg.model.value
        self.seg.model.choices = choices
        if select_project and PROJECT_MODEL in choices:
            self.seg.model.value = PROJECT_MODEL
        elif current in choices:
            self.seg.model.value = current

    def _model_version(self) -> str:
        try:
            source = self.seg.model_source
        except ValueError:
            return "unknown"
        path = Path(source)
        if path.suffix == ".safetensors":
            return path.name[: -len(".safetensors")]
        return source if source == "default" else f"{source} (untrained)"

    # ------------------------------------------------------------------ proposals

    def _on_proposal(self, layer: Image, index: tuple, result: Prediction) -> None:
        """A proposal is shown: record it in the project (status 'proposed', text history)."""
        if self.project is None or self.current is None or _real(layer) is not self._image_layer:
            return
        self._set_baseline(kind="proposal")
        rec = self.current
        mask = np.asarray(result.mask)
        slice_ = int(index[0]) if (index and rec.is_volume) else None
        try:
            self._proposal = self.project.save_proposal(
                rec, mask, self._model_version(), text=result.text, slice=slice_
            )
            self._proposal_shown = np.asarray(self._labels_layer.data).copy()
        except Exception as exc:  # noqa: BLE001 - the proposal is still on screen
            self._proposal = None
            show_info(f"The proposal could not be recorded: {exc}")
        self._after_store_change(rec)

    def _after_store_change(self, rec: ImageRecord) -> None:
        if self.project is None:
            return
        fresh = self.project.image(rec.id)
        if self.current is not None and self.current.id == fresh.id:
            self.current = fresh
        row = self._row_of(fresh.id)
        if row >= 0:
            self.records[row] = fresh
            item = self.image_list.item(row)
            item.setText(self._item_text(fresh))
            item.setForeground(QColor(STATUS_COLOR.get(fresh.status, "#bbbbbb")))
        self._refresh_history()

    def _refresh_history(self) -> None:
        self.history.clear()
        if self.project is None or self.current is None:
            return
        seen: list[str] = []
        for t in reversed(self.project.text_history(self.current)):
            if t.text and t.text not in seen:
                seen.append(t.text)
        for t in seen:
            self.history.addItem(t if len(t) <= 80 else t[:77] + "…", t)

    def _on_history_picked(self, index: int) -> None:
        text = self.history.itemData(index)
        if text:
            self.seg.text.value = text

    # ------------------------------------------------------------------ volume segmentation

    def segment_volume(self) -> None:
        """Segment every slice of the current volume (a generator worker, with progress)."""
        from src_models.inference import Prediction
        from src_models.project.suggest import model_plane

        layer = self._image_layer
        if layer is None or self.current is None or not self.current.is_volume:
            return
        text = self.seg.text.value.strip()
        try:
            source = self.seg.model_source
        except ValueError as exc:
            self._message(str(exc), error=True)
            return
        device = str(self.seg.device.value)
        threshold = float(self.seg.threshold.value)
        data = layer.data
        rng = self._volume_range(layer)
        n = int(data.shape[0])
        seg = self.seg

        def job():
            predictor = seg._predictor(source, device)
            for z in range(n):
                yield z, predictor.predict_prob(model_plane(data, z, rng), text or None)

        probs = np.zeros(data.shape[:3], np.float32)
        labels = self._labels_layer

        def on_slice(item) -> None:
            z, prob = item
            probs[z] = prob
            labels.data[z] = (prob >= threshold).astype(labels.data.dtype)
            labels.refresh()
            self.work_bar.setValue(z + 1)

        def on_done() -> None:
            self.work_bar.setVisible(False)
            self._volume_worker = None
            seg._set_busy(None)
            result = Prediction(prob=probs, mask=probs >= threshold, threshold=threshold, text=text)
            seg._last = (labels, (), result)
            seg._last_threshold = threshold
            seg.status.value = f"Volume proposal: {100.0 * result.mask.mean():.1f}% of the voxels"
            self._on_proposal(layer, (), result)

        def on_error(exc: Exception) -> None:
            self.work_bar.setVisible(False)
            self._volume_worker = None
            seg._on_error(exc)

        self.work_bar.setRange(0, n)
        self.work_bar.setValue(0)
        self.work_bar.setFormat("segmenting slice %v of %m")
        self.work_bar.setVisible(True)
        seg._set_busy(f"Segmenting {n} slices…")
        worker = self._job_worker(job, on_slice, on_error, on_done)
        if worker is None:
            return
        seg._worker = worker
        worker.finished.connect(seg._on_finished)
        self._volume_worker = worker
        worker.start()

    def _job_worker(self, job, on_item, on_error, on_done):
        """Run the generator function ``job``: on the calling thread when
        ``run_synchronously`` (tests; returns None), else as a napari thread worker that is
        returned wired but not started, so the caller can connect more before starting it."""
        if self.run_synchronously:
            try:
                for item in job():
                    on_item(item)
            except Exception as exc:  # noqa: BLE001 - shown to the user
                on_error(exc)
                return None
            on_done()
            return None
        from napari.qt.threading import create_worker

        worker = create_worker(job)
        worker.yielded.connect(on_item)
        worker.errored.connect(on_error)
        worker.returned.connect(lambda _=None: on_done())
        return worker

    # ------------------------------------------------------------------ commit / clear

    def _commit_target(self) -> tuple[np.ndarray, int | None] | None:
        labels = self._labels_layer
        if labels is None or self.current is None or labels not in self.viewer.layers:
            return None
        data = np.asarray(labels.data)
        if self.current.is_volume and not self.volume_check.isChecked():
            z = int(self.viewer.dims.current_step[-3]) if data.ndim == 3 else 0
            z = min(max(z, 0), data.shape[0] - 1)
            return data[z], z
        return data, None

    def commit(self) -> None:
        """Save the labels as the image's correction (with the proposal they replaced)."""
        if self.project is None or self.current is None:
            self._message("Open a project and an image first.", error=True)
            return
        if self.seg.busy:
            self._message("Wait for the running segmentation to finish, then commit.")
            return
        target = self._commit_target()
        if target is None:
            self._message("Nothing to commit: segment or paint first.", error=True)
            return
        mask, slice_ = target
        proposal: Any = None
        if self._baseline_kind == "proposal" and self._baseline is not None:
            shown = self._baseline if slice_ is None else self._baseline[slice_]
            saved = self._proposal
            same_slice = saved is not None and saved.slice == slice_
            if (
                same_slice
                and self._proposal_shown is not None
                and np.array_equal(self._proposal_shown != 0, self._baseline != 0)
            ):
                proposal = saved
            else:
                proposal = shown != 0
        text = self.seg.text.value.strip() or None
        rec = self.current
        try:
            commit = self.project.commit(
                rec,
                mask,
                text=text,
                model_version=self._model_version(),
                proposal=proposal,
                slice=slice_,
            )
        except Exception as exc:  # noqa: BLE001 - shown, the labels stay on screen
            self._message(f"Commit failed (nothing was saved): {exc}", error=True)
            return
        self._drafts.pop(rec.id, None)
        self._set_baseline(kind="commit")
        where = f" slice {slice_}" if slice_ is not None else ""
        self._message(f"Committed {rec.name}{where} (version {commit.version}).")
        self._after_store_change(rec)
        self._count_commit()

    def no_lesion(self) -> None:
        """One click: this image (or slice) has no lesion; commit an empty label."""
        if self.project is None or self.current is None:
            self._message("Open a project and an image first.", error=True)
            return
        rec = self.current
        labels = self._labels_layer
        slice_ = None
        if rec.is_volume and not self.volume_check.isChecked():
            target = self._commit_target()
            slice_ = target[1] if target is not None else None
        text = self.seg.text.value.strip() or None
        try:
            commit = self.project.commit_no_lesion(
                rec, text=text, model_version=self._model_version(), slice=slice_
            )
        except Exception as exc:  # noqa: BLE001
            self._message(f"Could not record 'no lesion': {exc}", error=True)
            return
        if labels is not None:
            if slice_ is None:
                labels.data[...] = 0
            else:
                labels.data[slice_] = 0
            labels.refresh()
        self._drafts.pop(rec.id, None)
        self._set_baseline(kind="commit")
        self._message(f"{rec.name}: no lesion (version {commit.version}).")
        self._after_store_change(rec)
        self._count_commit()

    def clear(self) -> None:
        """Empty the labels on screen (the shown slice of a volume); nothing is saved."""
        labels = self._labels_layer
        if labels is None:
            return
        target = self._commit_target()
        if target is not None and target[1] is not None:
            labels.data[target[1]] = 0
        else:
            labels.data[...] = 0
        labels.refresh()
        self._message("Cleared (not saved): paint the lesion, then Commit.")

    def _count_commit(self) -> None:
        self._commits_since_retrain += 1
        every = int(self.auto_spin.value())
        if every and self._commits_since_retrain >= every and not self.retraining:
            self._message(f"{self._commits_since_retrain} new commits: retraining starts.")
            self.retrain()

    # ------------------------------------------------------------------ suggestions

    def suggest(self, go: bool = False) -> None:
        """Score the unlabelled images by uncertainty in a worker; show (and go to) the top."""
        from src_models.project.suggest import score_images

        if self.project is None:
            return
        if self._suggest_worker is not None:
            return
        try:
            source = self.seg.model_source
        except ValueError as exc:
            self._message(str(exc), error=True)
            return
        device = str(self.seg.device.value)
        records = self.project.images(["unlabeled", "proposed"])
        if not records:
            self.suggest_label.setText("Every image is labelled.")
            return
        seg = self.seg

        def job():
            predictor = seg._predictor(source, device)
            yield from score_images(records, predictor.predict_prob)

        results: list[Any] = []

        def on_score(score) -> None:
            results.append(score)
            self.scores[score.image_id] = score
            self.work_bar.setValue(len(results))

        def on_done() -> None:
            self._suggest_worker = None
            self.work_bar.setVisible(False)
            ranked = sorted(
                (s for s in results if s.score is not None), key=lambda s: -float(s.score)
            )
            self.refresh_list()
            if not ranked:
                reasons = {s.reason for s in results if s.reason}
                self.suggest_label.setText(
                    "No image could be scored" + (f" ({', '.join(reasons)})" if reasons else "")
                )
                self.suggested = None
                return
            top = ranked[0]
            self.suggested = top
            self.suggest_label.setText(
                f"Next suggested: {top.name} (uncertainty {top.score:.3f} bits/pixel; "
                f"{len(ranked)} images ranked) — Shift-U to go there"
            )
            if go:
                self.go_to_suggested()

        def on_error(exc: Exception) -> None:
            self._suggest_worker = None
            self.work_bar.setVisible(False)
            self._message(f"Suggestion failed: {exc}", error=True)

        self.work_bar.setRange(0, len(records))
        self.work_bar.setValue(0)
        self.work_bar.setFormat("scoring %v of %m images")
        self.work_bar.setVisible(True)
        self.suggest_label.setText("Scoring the unlabelled images…")
        worker = self._job_worker(job, on_score, on_error, on_done)
        if worker is None:
            return
        self._suggest_worker = worker
        worker.start()

    def go_to_suggested(self) -> None:
        if self.suggested is None:
            self.suggest(go=True)
            return
        row = self._row_of(self.suggested.image_id)
        if row >= 0:
            self.show_image(row)

    # ------------------------------------------------------------------ retraining

    def _base_model_arg(self) -> str:
        value = self.seg.model.value
        if value == PROJECT_MODEL:
            return "auto"
        try:
            return self.seg.model_source
        except ValueError:
            return "auto"

    def training_threads(self) -> int:
        """CPU threads of the training: all cores but one (the viewer's), at least one."""
        n = self.retrain_options.get("num_threads")
        return int(n) if n else max(1, (os.cpu_count() or 1) - 1)

    def inference_threads(self) -> int:
        """CPU threads for proposals: all cores but one (the event loop's and the canvas's),
        and while training runs the cores it leaves; at least one. More threads than free
        cores make OpenMP's spinning threads fight, and a 20 ms proposal takes seconds
        (benchmarks/bench_responsiveness.py)."""
        cores = os.cpu_count() or 1
        if self.retraining:
            return max(1, cores - self.training_threads())
        return max(1, cores - 1)

    def _apply_inference_threads(self) -> None:
        """Called on the thread that runs the model (OpenMP's thread count is per thread)."""
        torch = sys.modules.get("torch")
        if torch is None:
            return
        n = self.inference_threads()
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def _retrain_options(self) -> dict[str, Any]:
        """RetrainConfig fields beyond rounds/epochs/device/model: the panel's, then overrides."""
        options: dict[str, Any] = {"clcc": True} if self.clcc_check.isChecked() else {}
        return {**options, **self.retrain_options, "num_threads": self.training_threads()}

    def _retrain_cli_args(self) -> list[str]:
        args = [
            "retrain",
            str(self.project.folder),
            "--jsonl",
            "--rounds",
            str(self.rounds_spin.value()),
            "--epochs",
            str(self.epochs_spin.value()),
            "--device",
            str(self.seg.device.value),
            "--model",
            self._base_model_arg(),
        ]
        for key, value in self._retrain_options().items():
            flag = "--" + key.replace("_", "-")
            if key == "num_threads":
                flag = "--threads"
            if isinstance(value, bool):
                if value:
                    args.append(flag)
            elif value is not None:
                args += [flag, str(value)]
        return args

    def retrain(self) -> None:
        """Start retraining rounds in the background (a separate process by default)."""
        if self.project is None:
            self._message("Open a project first.", error=True)
            return
        if self.retraining:
            return
        if not self.project.labeled():
            self._message("Commit at least one correction before retraining.", error=True)
            return
        self._commits_since_retrain = 0
        self.retrain_events = []
        self._retrain_last = None
        self._retrain_error = None
        self._stderr_tail = ""
        self._stdout_buf = b""
        self.retrain_bar.setRange(0, 1)  # (a busy indicator would repaint the window nonstop)
        self.retrain_bar.setValue(0)
        self.retrain_label.setText("Starting the training process…")
        if self.retrain_mode == "thread":
            self._start_thread()
        else:
            self._start_process()
        self._update_buttons()

    def _start_process(self) -> None:
        proc = QProcess()
        env = QProcessEnvironment.systemEnvironment()
        root = str(Path(__file__).resolve().parents[1])
        env.insert("PYTHONPATH", os.pathsep.join(p for p in (root, env.value("PYTHONPATH")) if p))
        defaults = {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONUNBUFFERED": "1",
        }
        for key, value in defaults.items():
            if not env.contains(key):
                env.insert(key, value)
        proc.setProcessEnvironment(env)
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._on_process_finished)
        proc.errorOccurred.connect(self._on_process_error)
        self._retrain_proc = proc
        self._stop_proc = _terminate_on_destroy(self, proc)
        proc.start(sys.executable, ["-m", "src_models.cli", *self._retrain_cli_args()])

    def _start_thread(self) -> None:
        from napari.qt.threading import create_worker

        from src_models.project.retrain import RetrainConfig, event_to_dict, retrain

        options = self._retrain_options()
        options.setdefault("model", self._base_model_arg())
        config = RetrainConfig(
            rounds=int(self.rounds_spin.value()),
            epochs=int(self.epochs_spin.value()),
            device=str(self.seg.device.value),
            **options,
        )
        run = retrain(self.project.folder, config=config)
        self._retrain_run = run

        def job():
            for event in run:
                yield event_to_dict(event)

        worker = create_worker(job)
        worker.yielded.connect(self._on_retrain_event)
        worker.errored.connect(
            lambda exc: self._on_retrain_event({"type": "Error", "message": str(exc)})
        )
        worker.finished.connect(lambda: self._on_retrain_finished(None))
        self._retrain_worker = worker
        worker.start()

    def cancel_retrain(self) -> None:
        """Stop the running round between events; it is recorded as cancelled."""
        if self._retrain_proc is not None:
            self.retrain_label.setText("Cancelling (the running step finishes first)…")
            self._retrain_proc.terminate()  # SIGTERM: the CLI cancels between events
        elif self._retrain_run is not None:
            self.retrain_label.setText("Cancelling (the running step finishes first)…")
            self._retrain_run.cancel()

    def _read_stdout(self) -> None:
        proc = self._retrain_proc
        if proc is None:
            return
        self._stdout_buf += bytes(proc.readAllStandardOutput())
        *lines, self._stdout_buf = self._stdout_buf.split(b"\n")
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # not an event line
            self._on_retrain_event(event)

    def _read_stderr(self) -> None:
        proc = self._retrain_proc
        if proc is None:
            return
        text = bytes(proc.readAllStandardError()).decode("utf-8", "replace")
        self._stderr_tail = (self._stderr_tail + text)[-4000:]

    def _on_process_error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._retrain_error = "the training process could not start"
            self._on_retrain_finished(None)

    def _on_process_finished(self, exit_code: int = 0, exit_status=None) -> None:
        self._read_stdout()
        self._read_stderr()
        crashed = exit_status == QProcess.ExitStatus.CrashExit
        self._on_retrain_finished(None if crashed else int(exit_code), crashed=crashed)

    def _on_retrain_event(self, event: dict[str, Any]) -> None:
        """One event from the training (process or worker): progress, curve, model reload."""
        self.retrain_events.append(event)
        kind = event.get("type")
        bar = self.retrain_bar
        if kind == "RetrainRoundStart":
            self.plot.start_round()
            self._round_text = (
                f"Round {event['round_id']} ({event['index']}/{event['rounds']}, "
                f"{event['engine']}): {event['n_labeled']} labelled"
                + (f", {event['n_unlabeled']} unlabelled" if event.get("n_unlabeled") else "")
            )
            self.retrain_label.setText(self._round_text + " — preparing")
        elif kind == "PseudoLabelProgress":
            bar.setRange(0, int(event["total"]))
            bar.setValue(int(event["done"]))
            self.retrain_label.setText(
                f"{self._round_text} — pseudo labels {event['done']}/{event['total']}"
            )
        elif kind == "FitStart":
            self._fit_epochs = int(event["epochs"])
            self._fit_steps = max(int(event["steps_per_epoch"]), 1)
            bar.setRange(0, self._fit_epochs * self._fit_steps)
            bar.setValue(0)
        elif kind == "BatchEnd":
            # Every repaint of a window with an OpenGL canvas recomposes the whole window
            # (~15 ms in software GL): redraw the progress at most twice a second.
            now = time.monotonic()
            last_batch = int(event["batch"]) == self._fit_steps
            if now - self._ui_time < 0.5 and not last_batch:
                return
            self._ui_time = now
            bar.setValue((int(event["epoch"]) - 1) * self._fit_steps + int(event["batch"]))
            self.retrain_label.setText(
                f"{self._round_text} — epoch {event['epoch']}/"
                f"{self._fit_epochs}, loss {event['loss']:.4f}"
            )
        elif kind == "EpochEnd":
            self.plot.add_epoch(event.get("train_loss"))
        elif kind == "ValidationEnd":
            self.plot.set_dice(event.get("dice"))
        elif kind == "RetrainRoundEnd":
            self._retrain_last = event
            status = event["status"]
            metrics = event.get("metrics") or {}
            dice = metrics.get("best_dice")
            dice_text = "" if dice is None else f", val Dice {dice:.3f}"
            if status == "done" and event.get("checkpoint"):
                if event.get("current", True):
                    self.retrain_label.setText(f"Round {event['round_id']} done{dice_text}.")
                    self._load_new_checkpoint(Path(event["checkpoint"]))
                else:
                    self.retrain_label.setText(
                        f"Round {event['round_id']} done{dice_text}: below the current model's "
                        f"{metrics['start_dice']:.3f}, so the current model stays."
                    )
            elif status == "failed":
                self._retrain_error = event.get("error") or "unknown error"
                self._message(f"Retraining failed: {self._retrain_error}", error=True)
                self.retrain_label.setText(f"Round {event['round_id']} failed.")
            else:
                self.retrain_label.setText(f"Round {event['round_id']} {status}.")
        elif kind == "RetrainDone":
            self._retrain_last = event
        elif kind == "Error":
            self._retrain_error = str(event.get("message"))
            self._message(f"Retraining failed: {self._retrain_error}", error=True)
            self.retrain_label.setText("Retraining failed.")

    def _on_retrain_finished(self, exit_code: int | None, crashed: bool = False) -> None:
        if self._retrain_proc is None and self._retrain_worker is None:
            return
        if self._stop_proc is not None:
            self._stop_proc.disconnect()
            self._stop_proc = None
        self._retrain_proc = None
        self._retrain_worker = None
        self._retrain_run = None
        self.retrain_bar.setRange(0, 1)
        self.retrain_bar.setValue(1 if exit_code == 0 else 0)
        last = self._retrain_last
        if crashed and self._retrain_error is None:
            tail = self._stderr_tail.strip().splitlines()[-3:]
            self._retrain_error = "the training process stopped unexpectedly" + (
                f": {' / '.join(tail)}" if tail else ""
            )
            self._message(f"Retraining failed: {self._retrain_error}", error=True)
            self.retrain_label.setText("Retraining stopped unexpectedly; commits are safe.")
        elif (
            exit_code not in (None, 0)
            and self._retrain_error is None
            and (last is None or last.get("status") == "failed")
        ):
            tail = self._stderr_tail.strip().splitlines()[-3:]
            self._retrain_error = f"exit code {exit_code}" + (
                f": {' / '.join(tail)}" if tail else ""
            )
            self._message(f"Retraining failed: {self._retrain_error}", error=True)
        elif last is not None and last.get("type") == "RetrainDone":
            status = last.get("status")
            if status == "cancelled":
                self.retrain_label.setText("Retraining cancelled; the previous model stays.")
        self.refresh_list()
        self._update_buttons()
        if last is not None and last.get("type") == "RetrainDone" and last.get("rounds_done"):
            self.suggest(go=False)  # rank the unlabelled images with the new model

    def _load_new_checkpoint(self, path: Path) -> None:
        """Use the project's new model for the next proposals (preloaded in a worker)."""
        self._refresh_model_choices(select_project=True)
        self.seg._predictors.clear()
        self.loaded_checkpoint = path
        name = (
            path.name[: -len(".safetensors")] if path.name.endswith(".safetensors") else path.name
        )
        self._message(f"New model {name} loaded: the next proposals use it.")
        device = str(self.seg.device.value)
        seg = self.seg

        def job():
            seg._predictor(str(path), device)

        if self.run_synchronously:
            try:
                job()
            except Exception as exc:  # noqa: BLE001
                self._message(f"Could not load the new model: {exc}", error=True)
            return
        from napari.qt.threading import create_worker

        worker = create_worker(job)
        worker.errored.connect(
            lambda exc: self._message(f"Could not load the new model: {exc}", error=True)
        )
        worker.finished.connect(lambda: setattr(self, "_preload_worker", None))
        self._preload_worker = worker
        worker.start()

    def _load_round_history(self) -> None:
        """Fill the curve from the project's finished rounds."""
        if self.project is None:
            return
        for r in self.project.rounds():
            if r.status != "done":
                continue
            self.plot.start_round()
            for e in r.metrics.get("epochs", []):
                self.plot.add_epoch(e.get("train_loss"))
                self.plot.set_dice(e.get("val_dice"))


class _Stopper:
    """Connections that stop a training process when the widget or the app goes away."""

    def __init__(self, widget: QWidget, stop) -> None:
        from qtpy.QtWidgets import QApplication

        self._connections = []
        for signal in (widget.destroyed, getattr(QApplication.instance(), "aboutToQuit", None)):
            if signal is not None:
                signal.connect(stop)
                self._connections.append((signal, stop))

    def disconnect(self) -> None:
        for signal, slot in self._connections:
            with contextlib.suppress(RuntimeError, TypeError):
                signal.disconnect(slot)
        self._connections = []


def _terminate_on_destroy(widget: QWidget, proc: QProcess) -> _Stopper:
    """When the widget or the application goes away, ask the training process to cancel
    (SIGTERM) and wait a little, so that its round is recorded as cancelled, not left running."""

    def stop(*_args) -> None:
        try:
            if proc.state() != QProcess.ProcessState.NotRunning:
                proc.terminate()
                if not proc.waitForFinished(5000):
                    proc.kill()
                    proc.waitForFinished(1000)
        except RuntimeError:  # already deleted
            pass

    return _Stopper(widget, stop)


# --------------------------------------------------------------------------- napari-lvit annotate


def run_annotate(
    path: str | os.PathLike | None = None,
    project: str | os.PathLike | None = None,
    model: str | None = None,
    block: bool = True,
):
    """Open napari with the annotation widget docked and ``path`` opened in it.

    With ``block=False`` the viewer and the widget are returned instead of entering the Qt
    event loop (tests, scripts)."""
    import napari

    viewer = napari.Viewer(title="napari-lvit: annotation loop")
    _, widget = viewer.window.add_plugin_dock_widget("napari-lvit", "Annotation loop")
    if model is not None:
        if model in widget.seg.model.choices:
            widget.seg.model.value = model
        else:
            widget.seg.model.value = FROM_FILE
            widget.seg.checkpoint.value = model
    if path is not None:
        widget.open(path, project)
    if block:
        napari.run()
    return viewer, widget

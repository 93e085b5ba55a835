"""The Retrain panel: its settings (labelled, readable at napari's default dock width), the
Retrain and Cancel buttons, progress, the curves and the round's status line."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_lvit._annotate.events import round_end_text, round_start_text, start_probe_text
from napari_lvit._annotate.plot import CurvePlot
from napari_lvit._annotate.session import PANEL_DEFAULTS, build_retrain_config
from napari_lvit._widget import wrap_to_width

if TYPE_CHECKING:
    from src_models.project.retrain import RetrainConfig

PROGRESS_EVERY_S = 0.5  # redraw the batch progress at most this often
#: the "Working resolution" choices: (label, RetrainConfig.resolution)
RESOLUTIONS = (("auto", "auto"), ("whole image", "whole"), ("patches", "patches"))


def _spin(low: int, high: int, value: int, tip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


class RetrainPanel(QGroupBox):
    """Settings, buttons, progress and curves of the retraining; shows its events."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Retrain", parent)
        lay = QVBoxLayout(self)
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.rounds_spin = _spin(
            1, 100, PANEL_DEFAULTS["rounds"], "Retraining rounds per press (EPI iterations)"
        )
        self.epochs_spin = _spin(
            0,
            1000,
            PANEL_DEFAULTS["epochs"] or 0,
            "Training epochs in each round; auto: sized by the number of corrections "
            "(max(300, 100 per labelled image) optimizer steps, within the time per round)",
        )
        self.epochs_spin.setSpecialValueText("auto")
        self.time_spin = _spin(
            0,
            3600,
            int(PANEL_DEFAULTS["time_budget_s"]),
            "With auto epochs: stop planning more steps than fit in about this many seconds "
            "(measured on the previous round; 0: no limit)",
        )
        self.time_spin.setSpecialValueText("no limit")
        self.resolution_combo = QComboBox()
        for label, value in RESOLUTIONS:
            self.resolution_combo.addItem(label, value)
        self.resolution_combo.setToolTip(
            "How images reach the model: auto chooses from the image and object sizes; whole "
            "image resizes each image to the model size; patches trains and predicts on "
            "patches of large images (small objects stay visible)"
        )
        self.auto_spin = _spin(
            0, 1000, 0, "Start a retraining by itself after this many new commits (0: never)"
        )
        self.auto_spin.setSpecialValueText("off")
        self.clcc_check = QCheckBox("CLCC on all images (slower)")
        self.clcc_check.setChecked(PANEL_DEFAULTS["clcc"])
        self.resolution_combo.setCurrentIndex(
            [v for _, v in RESOLUTIONS].index(PANEL_DEFAULTS["resolution"])
        )
        self.clcc_check.setToolTip(
            "Also train with cross-level contrast and patch consistency (CLCC) on every image, "
            "unlabelled ones included; slower rounds"
        )
        form.addRow("Rounds:", self.rounds_spin)
        form.addRow("Epochs per round:", self.epochs_spin)
        form.addRow("Time per round (s):", self.time_spin)
        form.addRow("Working resolution:", self.resolution_combo)
        form.addRow("Auto after commits:", self.auto_spin)
        form.addRow(self.clcc_check)
        lay.addLayout(form)

        buttons = QHBoxLayout()
        self.retrain_button = QPushButton("Retrain")
        self.retrain_button.setToolTip(
            "Train on the committed corrections (and, with EPI, the unlabelled images with a "
            "text) in the background; the new model is loaded when a round ends"
        )
        self.cancel_button = QPushButton("Cancel")
        buttons.addWidget(self.retrain_button)
        buttons.addWidget(self.cancel_button)
        lay.addLayout(buttons)
        self.retrain_bar = QProgressBar()
        self.retrain_bar.setFormat("%p%")
        lay.addWidget(self.retrain_bar)
        self.plot = CurvePlot()
        lay.addWidget(self.plot)
        self.retrain_label = wrap_to_width(QLabel(""))
        lay.addWidget(self.retrain_label)

        self._round_text = ""
        self._phase = ""  # "trying start 1/2 (...), " while a new project's round probes starts
        self._fit_epochs = 1
        self._fit_steps = 1
        self._ui_time = 0.0

    def config(self, device: str, model: str, overrides: dict[str, Any]) -> RetrainConfig:
        """The :class:`RetrainConfig` of these settings, then ``overrides`` (any field)."""
        panel = {
            "time_budget_s": float(self.time_spin.value()),
            "resolution": str(self.resolution_combo.currentData()),
        }
        return build_retrain_config(
            rounds=self.rounds_spin.value(),
            epochs=self.epochs_spin.value() or None,  # 0 ("auto"): sized by the work
            device=device,
            model=model,
            clcc=self.clcc_check.isChecked(),
            overrides={**panel, **overrides},
        )

    def set_running(self, running: bool, can_start: bool) -> None:
        self.retrain_button.setEnabled(can_start and not running)
        self.cancel_button.setEnabled(running)

    def starting(self) -> None:
        self.retrain_bar.setRange(0, 1)  # (a busy indicator would repaint the window nonstop)
        self.retrain_bar.setValue(0)
        self.retrain_label.setText("Starting the training process…")

    def finished(self, exit_code: int | None, crashed: bool, last: dict[str, Any] | None) -> None:
        """The run ended (``last``: its last round or run event)."""
        self.retrain_bar.setRange(0, 1)
        self.retrain_bar.setValue(1 if exit_code == 0 else 0)
        if crashed:
            self.retrain_label.setText("Retraining stopped unexpectedly; commits are safe.")
        elif last and last.get("type") == "RetrainDone" and last.get("status") == "cancelled":
            self.retrain_label.setText("Retraining cancelled; the previous model stays.")

    def load_history(self, rounds: list[list[tuple[float | None, float | None]]]) -> None:
        """Fill the curves from the project's finished rounds."""
        self.plot.clear()
        for epochs in rounds:
            self.plot.start_round()
            for loss, dice in epochs:
                self.plot.add_epoch(loss)
                self.plot.set_dice(dice)

    def show_event(self, event: dict[str, Any]) -> None:
        """Show one training event: progress, the status line, the curves."""
        kind = event.get("type")
        bar = self.retrain_bar
        if kind == "RetrainRoundStart":
            self.plot.start_round()
            self._round_text = round_start_text(event)
            self._phase = ""
            self.retrain_label.setText(self._round_text + " — preparing")
        elif kind == "RetrainStartProbe":
            text = start_probe_text(event)
            self._phase = "" if event.get("done", True) else text + ", "
            self.retrain_label.setText(f"{self._round_text} — {text}")
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
            if now - self._ui_time < PROGRESS_EVERY_S and not last_batch:
                return
            self._ui_time = now
            bar.setValue((int(event["epoch"]) - 1) * self._fit_steps + int(event["batch"]))
            self.retrain_label.setText(
                f"{self._round_text} — {self._phase}epoch {event['epoch']}/"
                f"{self._fit_epochs}, loss {event['loss']:.4f}"
            )
        elif kind == "EpochEnd":
            self.plot.add_epoch(event.get("train_loss"))
        elif kind == "ValidationEnd":
            self.plot.set_dice(event.get("dice"))
        elif kind == "RetrainRoundEnd":
            self.retrain_label.setText(round_end_text(event))
        elif kind == "Error":
            self.retrain_label.setText("Retraining failed.")

"""The Retrain panel's curves (matplotlib in Qt; needs a display: run under xvfb-run)."""

from __future__ import annotations

from qtpy.QtCore import QPoint
from qtpy.QtTest import QTest

from napari_lvit._annotate.panel import RetrainPanel


def test_curves_over_rounds_and_the_value_under_the_cursor(qtbot):
    panel = RetrainPanel()
    qtbot.addWidget(panel)
    panel.resize(360, 520)
    panel.show()
    qtbot.waitExposed(panel)
    plot = panel.plot
    assert plot._readout.get_text() == "no training yet"
    panel.load_history([[(0.9, 0.2), (0.7, 0.4)], [(0.6, None), (0.5, 0.6)]])
    assert plot.loss == [0.9, 0.7, 0.6, 0.5] and plot.dice == [0.2, 0.4, None, 0.6]
    assert plot.round_starts == [0, 2]
    assert plot._readout.get_text() == "latest epoch 4 (round 2): loss 0.5000, Dice 0.600"
    assert plot.ax.get_xlabel() == "epoch" and plot.twin.get_ylabel() == "validation Dice"
    labels = [t.get_text() for t in plot.ax.get_legend().get_texts()]
    assert labels == ["loss", "Dice"]

    plot.draw()
    x = plot.ax.transData.transform((3, 0))[0] / plot.device_pixel_ratio
    QTest.mouseMove(plot, QPoint(int(x), plot.height() // 2))
    qtbot.waitUntil(lambda: "epoch 3 " in plot._readout.get_text(), timeout=2000)
    assert plot._readout.get_text() == "epoch 3 (round 2): loss 0.6000"

    panel.show_event({"type": "EpochEnd", "train_loss": 0.45})
    panel.show_event({"type": "ValidationEnd", "dice": 0.65})
    assert plot.loss[-1] == 0.45 and plot.dice[-1] == 0.65
    panel.finished(0, False, {"type": "RetrainDone", "status": "cancelled"})
    assert panel.retrain_label.text() == "Retraining cancelled; the previous model stays."
    assert panel.retrain_bar.value() == panel.retrain_bar.maximum()


def test_the_settings_have_labels_and_build_one_config(qtbot):
    panel = RetrainPanel()
    qtbot.addWidget(panel)
    form = panel.layout().itemAt(0).layout()
    labels = [form.labelForField(w).text() for w in (panel.rounds_spin, panel.epochs_spin)]
    assert labels == ["Rounds:", "Epochs per round:"]
    assert panel.auto_spin.text() == "off" and panel.rounds_spin.prefix() == ""
    panel.epochs_spin.setValue(7)
    panel.clcc_check.setChecked(True)
    config = panel.config("cpu", "lvit_tiny", {"num_threads": 1})
    assert (config.epochs, config.clcc, config.device, config.num_threads) == (7, True, "cpu", 1)

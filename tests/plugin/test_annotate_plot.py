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


def test_a_new_projects_start_probe_shows_which_start_it_tries(qtbot):
    panel = RetrainPanel()
    qtbot.addWidget(panel)
    start = {"round_id": 1, "index": 1, "rounds": 1, "engine": "supervised", "n_labeled": 2}
    panel.show_event({"type": "RetrainRoundStart", **start})
    probe = {"type": "RetrainStartProbe", "round_id": 1, "total": 2, "base": "default"}
    panel.show_event({**probe, "index": 1, "done": False, "dice": None})
    panel.show_event({"type": "FitStart", "epochs": 1, "steps_per_epoch": 50})
    panel.show_event({"type": "BatchEnd", "epoch": 1, "batch": 50, "loss": 0.5})
    assert "trying start 1/2 (default), epoch 1/1, loss 0.5000" in panel.retrain_label.text()
    panel.show_event({**probe, "index": 1, "done": True, "dice": 0.41})
    assert panel.retrain_label.text().endswith("trying start 1/2 (default): val Dice 0.410")
    panel.show_event({**probe, "index": 2, "base": "fresh", "done": True, "dice": 0.52})
    panel.show_event({"type": "FitStart", "epochs": 5, "steps_per_epoch": 50})
    panel.show_event({"type": "BatchEnd", "epoch": 1, "batch": 50, "loss": 0.4})
    assert panel.retrain_label.text().endswith("— epoch 1/5, loss 0.4000")  # the round itself
    assert panel.plot.loss == []  # probes draw no curve

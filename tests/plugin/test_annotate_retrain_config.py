"""Every RetrainConfig field set in the annotation widget reaches the trainer identically
whether the widget retrains in a napari thread worker or in its separate process (the config
crosses as JSON on the process's stdin). Needs a display: run under xvfb-run."""

from __future__ import annotations

import dataclasses

import pytest
from retrain_cases import FULL, make_project, recorded  # (tests/ is on sys.path)

from napari_lvit._annotate import AnnotationWidget

pytestmark = [
    pytest.mark.filterwarnings("ignore:model 'sks_lvit_tiny' is untrained"),
    pytest.mark.usefixtures("one_torch_thread"),
]

#: the fields the retrain panel and the Segment widget set; the rest come as overrides
PANEL_FIELDS = ("rounds", "epochs", "clcc", "device")


def _retrain_from_the_widget(make_napari_viewer, qtbot, folder, mode: str) -> AnnotationWidget:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-lvit", "Annotation loop")
    assert widget.open(folder)
    widget.panel.rounds_spin.setValue(FULL.rounds)
    widget.panel.epochs_spin.setValue(FULL.epochs)
    widget.panel.clcc_check.setChecked(FULL.clcc)
    widget.seg.device.value = FULL.device
    widget.retrain_options = {
        f.name: getattr(FULL, f.name)
        for f in dataclasses.fields(FULL)
        if f.name not in PANEL_FIELDS
    }
    assert widget.retrain_config() == FULL
    widget.retrain_mode = mode
    widget.retrain()
    qtbot.waitUntil(lambda: widget.idle, timeout=180_000)  # the model reload after it too
    last = widget.retrain_events[-1]
    assert last["type"] == "RetrainDone" and last["status"] == "done", widget.retrain_events[-3:]
    return widget


def test_every_field_set_in_the_widget_reaches_the_trainer_alike_in_thread_and_process(
    make_napari_viewer, qtbot, tmp_path
):
    seen = {}
    for mode in ("thread", "process"):
        folder = make_project(tmp_path / mode)
        _retrain_from_the_widget(make_napari_viewer, qtbot, folder, mode)
        seen[mode] = recorded(folder)
    assert seen["thread"] == seen["process"]
    for config, trainer in seen["process"]:
        assert config == FULL.to_dict()
        assert trainer["train"]["batch_size"] == FULL.batch_size
        assert trainer["train"]["use_text"] is True
        assert trainer["semi"]["beta"] == FULL.semi_options["beta"]
        assert trainer["clcc"]["grid"] == FULL.clcc_grid

"""EPI's pseudo labels in the annotation widget: after a round, an unlabelled image shows its
pseudo label; Accept commits it as a label of its own kind, which the next round trains on.
Needs a display: run under xvfb-run."""

from __future__ import annotations

import numpy as np
import pytest
from retrain_cases import make_project  # (tests/ is on sys.path)

from napari_lvit._annotate import AnnotationWidget
from src_models.project import Project
from src_models.project.retrain import RetrainRoundStart, retrain

pytestmark = [
    pytest.mark.filterwarnings("ignore:model 'lvit_tiny' is untrained"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def _press(viewer, key: str) -> None:
    from napari.utils.key_bindings import coerce_keybinding

    viewer.keymap[coerce_keybinding(key)](viewer)


def _list_texts(widget: AnnotationWidget) -> dict[str, str]:
    items = [widget.image_list.item(i).text() for i in range(widget.image_list.count())]
    return {rec.name: text for rec, text in zip(widget.records, items, strict=True)}


def test_an_epi_round_then_see_accept_and_train_on_a_pseudo_label(
    make_napari_viewer, qtbot, tmp_path
):
    folder = make_project(tmp_path)  # synth_0003 and synth_0004 unlabelled, with texts
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-lvit", "Annotation loop")
    widget.seg.model.value = "lvit_tiny"
    widget.seg.device.value = "cpu"
    widget.retrain_options = {"num_threads": 1}
    widget.run_synchronously = True
    assert widget.open(folder)
    assert widget.pseudo_box.info.text().startswith("No pseudo labels yet")
    assert not widget.pseudo_box.review_button.isEnabled()

    # one EPI round (in a thread worker; the test waits for it and what follows it)
    widget.retrain_mode = "thread"
    widget.epochs_spin.setValue(1)
    widget.retrain()
    qtbot.waitUntil(lambda: widget.idle, timeout=180_000)
    events = widget.retrain_events
    assert events[-1]["status"] == "done", events[-3:]
    assert next(e for e in events if e["type"] == "RetrainRoundStart")["engine"] == "epi"
    marked = {n for n, t in _list_texts(widget).items() if "◇" in t}
    assert marked == {"synth_0003", "synth_0004"}  # the list shows which have one, how sure

    # Review next: the pseudo label most likely right, drawn under the labels
    widget.review_next()
    rec = widget.current
    assert rec.name in marked and widget.pseudo_layers.shown
    prob = viewer.layers[rec.name + " pseudo label"]
    cut = viewer.layers[rec.name + " pseudo cut"]
    assert prob.data.shape == cut.data.shape == (64, 64) and cut.contour == 1
    assert prob.data.min() >= 0.0 and prob.data.max() <= 1.0
    names = [layer.name for layer in viewer.layers]
    assert names.index(prob.name) < names.index(widget.labels_layer.name)  # labels on top
    info = widget.pseudo_box.info.text()
    assert "1 round" in info and "% confident" in info
    assert widget.pseudo_box.accept_button.isEnabled()
    expected = np.asarray(cut.data) != 0
    (other_name,) = marked - {rec.name}
    assert widget.session.pseudo.next_to_review().name == other_name  # this one is seen now

    # Accept (its key): a commit of the accepted kind, shown as the label
    _press(viewer, "Shift-K")
    commit = widget.project.latest_commit(rec)
    assert commit is not None and commit.kind == "accepted_pseudo", widget.seg.status.value
    np.testing.assert_array_equal(commit.load_mask(), expected)
    np.testing.assert_array_equal(np.asarray(widget.labels_layer.data) != 0, expected)
    assert not widget.pseudo_layers.shown and not widget.labels_edited()
    assert "◇" not in _list_texts(widget)[rec.name]
    assert "Accepted the pseudo label" in widget.seg.status.value

    # Edit on the other one copies its cut into the labels, to correct before committing
    widget.review_next()
    other = widget.current
    assert other.name == other_name
    widget.edit_pseudo()
    other_cut = np.asarray(viewer.layers[other.name + " pseudo cut"].data) != 0
    np.testing.assert_array_equal(np.asarray(widget.labels_layer.data) != 0, other_cut)
    assert widget.session.baseline_kind == "pseudo"

    # the next round trains on the accepted label: one more labelled, one fewer unlabelled
    rounds = list(retrain(folder, epochs=1, model="lvit_tiny", device="cpu", num_threads=1))
    start = next(e for e in rounds if isinstance(e, RetrainRoundStart))
    assert (start.n_labeled, start.n_unlabeled) == (4, 1)
    with Project.open(folder) as p:
        trained = {it.image.name: it.kind for it in p.labeled()}
        assert trained[rec.name] == "accepted_pseudo"
        assert [r.status for r in p.rounds()] == ["done", "done"]

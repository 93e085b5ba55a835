"""The annotation loop dock widget: a project, its images, Segment, Commit, Retrain, Next.

Open a folder (or a project), go through its images, get a proposal, correct it with napari's
label tools, commit; retrain in the background and let the widget suggest the image the model
is least sure about. After an EPI round, an unlabelled image shows its pseudo label beside the
proposal: Accept commits it as the image's label, Edit copies it into the labels to correct,
Review next goes to the one most likely right. Commits go straight to the project store
(crash-safe); the viewer never waits for training (:mod:`napari_lvit._annotate.runner`).

The widget composes: an :class:`AnnotationSession` (the state, no Qt), the views, a
:class:`SegmentWidget` used through its public API only, the background model work
(:mod:`napari_lvit._annotate.background`) and a :class:`RetrainRunner`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QFileDialog

from napari_lvit import _errors
from napari_lvit._annotate.background import Jobs, Progress, Suggestions, VolumeSegmentation
from napari_lvit._annotate.layers import ShownImage
from napari_lvit._annotate.models import LoopModels
from napari_lvit._annotate.pseudo_view import PseudoLayers
from napari_lvit._annotate.runner import RetrainRunner
from napari_lvit._annotate.session import AnnotationSession
from napari_lvit._annotate.shortcuts import bind_shortcuts
from napari_lvit._annotate.views import AnnotationView
from napari_lvit._widget import SegmentWidget

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels

    from src_models.inference import Prediction
    from src_models.project import ImageRecord, Project
    from src_models.project.retrain import RetrainConfig


class AnnotationWidget(AnnotationView):
    """Dock widget: the annotation loop over a project (see the module docstring)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        seg = SegmentWidget(napari_viewer)
        super().__init__(seg.native)
        self.viewer = napari_viewer
        self.seg = seg
        self.session = AnnotationSession()
        self.shown = ShownImage(napari_viewer, seg)
        self.pseudo_layers = PseudoLayers(napari_viewer)
        self.loaded_checkpoint: Path | None = None
        #: "process" (default: a separate process) or "thread" (a napari thread worker)
        self.retrain_mode = "process"
        #: RetrainConfig fields over the panel's, e.g. {"img_size": 64}
        self.retrain_options: dict[str, Any] = {}
        self.segment_on_open = True
        self.jobs = Jobs(lambda: self.run_synchronously)
        self.destroyed.connect(self.jobs.stop_all)
        progress = Progress(self.work_bar)
        self.volumes = VolumeSegmentation(seg, self.jobs, progress)
        self.suggestions = Suggestions(self.session, seg, self.jobs, progress, self.suggest_label)
        self.suggestions.ranked.connect(self._on_ranked)
        self.models = LoopModels(
            seg, self.session, self.jobs, lambda: self.retraining, lambda: self.retrain_options
        )
        for failing in (self.suggestions.failed, self.models.failed):
            failing.connect(self._error)
        self.runner = RetrainRunner(self)
        self.runner.event.connect(self.panel.show_event)
        self.runner.checkpoint_ready.connect(self._load_new_checkpoint)
        self.runner.failed.connect(lambda why: self._error(f"Retraining failed: {why}"))
        self.runner.finished.connect(self._on_retrain_finished)

        seg.image.visible = False  # the image list drives the image
        seg.offers_whole_volume = False  # the "Whole volume" box does (segment_volume)
        seg.window_changed.connect(self._window_changed)
        seg.segment_hook = self._segment_hook
        seg.plane_provider = self.volumes.plane
        seg.thread_setup = self.models.apply_inference_threads
        seg.proposal_ready.connect(self._proposal_ready)
        seg.proposal_recut.connect(self._proposal_recut)
        self._connect()
        bind_shortcuts(napari_viewer, self)
        self._update_buttons()

    def _connect(self) -> None:
        """The views' buttons and fields to the actions."""
        self.open_button.clicked.connect(self._browse)
        self.path_edit.returnPressed.connect(lambda: self.open(self.path_edit.text()))
        self.image_list.currentRowChanged.connect(self._on_row_changed)
        self.prev_button.clicked.connect(self.previous_image)
        self.next_button.clicked.connect(self.next_image)
        self.suggest_button.clicked.connect(lambda: self.suggest(go=True))
        self.history.activated.connect(self._on_history_picked)
        self.auto_segment_check.toggled.connect(lambda v: setattr(self, "segment_on_open", v))
        self.commit_button.clicked.connect(self.commit)
        self.clear_button.clicked.connect(self.clear)
        self.no_lesion_button.clicked.connect(self.no_lesion)
        self.retrain_button.clicked.connect(self.retrain)
        self.cancel_button.clicked.connect(self.cancel_retrain)
        box = self.pseudo_box
        box.accept_button.clicked.connect(self.accept_pseudo)
        box.edit_button.clicked.connect(self.edit_pseudo)
        box.review_button.clicked.connect(self.review_next)
        box.show_check.toggled.connect(lambda _: self._show_pseudo())

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images or project")
        if folder:
            self.open(folder)

    # ------------------------------------------------------------------ state

    @property
    def project(self) -> Project | None:
        return self.session.project

    @property
    def records(self) -> list[ImageRecord]:
        return self.session.records

    @property
    def current(self) -> ImageRecord | None:
        return self.session.current

    @property
    def image_layer(self) -> Image | None:
        return self.shown.image

    @property
    def labels_layer(self) -> Labels | None:
        return self.shown.labels

    @property
    def retrain_events(self) -> list[dict[str, Any]]:
        """The events of the last (or running) retraining, in order."""
        return self.runner.events

    @property
    def run_synchronously(self) -> bool:
        return self.seg.run_synchronously

    @run_synchronously.setter
    def run_synchronously(self, value: bool) -> None:
        self.seg.run_synchronously = bool(value)

    @property
    def idle(self) -> bool:
        """Nothing runs in the background (no training, model loading, scoring, segmenting)."""
        return not (self.retraining or self.seg.busy or self.jobs.running())

    @property
    def retraining(self) -> bool:
        return self.runner.running

    def labels_edited(self) -> bool:
        """True if the labels differ from what the widget last put there (user edits)."""
        return self.session.is_edited(self.shown.labels_data())

    def whole_volume_active(self) -> bool:
        current = self.session.current
        return bool(current is not None and current.is_volume and self.volume_check.isChecked())

    def _target_slice(self) -> int | None:
        """The slice a commit or clear acts on (``None``: all of the labels on screen)."""
        if not self.shown.labels_on_screen():
            return None
        labels, z = self.shown.labels_data(), self.shown.shown_slice()
        return self.session.target_slice(labels, self.volume_check.isChecked(), z)

    def _message(self, text: str, error: bool = False) -> None:
        if error:
            self._error(text)
        else:
            self.seg.status.value = text

    def _error(self, error: BaseException | str, context: str | None = None) -> None:
        """Report ``error`` (one line in napari's notifications and on the status line)."""
        self.seg.status.value = _errors.report_error(error, context)

    def _update_buttons(self) -> None:
        s = self.session
        volume = bool(s.current is not None and s.current.is_volume)
        self.enable(s.project is not None, bool(s.records), s.current is not None, volume)
        self.panel.set_running(self.retraining, s.project is not None)
        has_pseudo = s.current is not None and bool(s.pseudo.of(s.current.id))
        text = s.pseudo.text(s.current) if s.current is not None else "No image shown."
        self.pseudo_box.show_state(text, has_pseudo, s.pseudo.next_to_review() is not None)

    # ------------------------------------------------------------------ project

    def open(self, path: str | os.PathLike, project: str | os.PathLike | None = None) -> bool:
        """Open a project, an LViT folder (imported) or a folder of images (added)."""
        from src_models.project import ProjectError

        path = str(path).strip()
        if not path:
            self._message("Choose a folder first.", error=True)
            return False
        try:
            warning = self.session.open(path, project)
        except (ProjectError, ValueError, OSError) as exc:
            self._error(exc, f"Cannot open '{path}'")
            return False
        self.pseudo_layers.remove()
        self.shown.remove()
        self.path_edit.setText(path)
        if warning:
            show_info(warning)
        self.panel.load_history(self.session.round_history())
        self.models.refresh_choices(select_project=self.project.current_checkpoint is not None)
        self.refresh_list()
        self.project_label.setText(self.session.summary())
        if self.records:
            self.show_image(self.session.first_row())
        self._update_buttons()
        return True

    def close_project(self) -> None:
        if self.project is None:
            return
        self.pseudo_layers.remove()
        self.shown.remove()
        self.session.close()
        self.image_list.clear()

    def refresh_list(self) -> None:
        """Reload the image records and their statuses."""
        s = self.session
        if s.project is None:
            return
        s.refresh()
        texts = [s.item_text(r) for r in s.records]
        self.image_list.show_records(s.records, texts, s.current_row())

    def _after_store_change(self, rec: ImageRecord) -> None:
        """Show the (re-read) record of ``rec`` in the list, and its texts."""
        s = self.session
        row = s.row_of(rec.id)
        if row >= 0:
            self.image_list.update_record(row, s.records[row], s.item_text(s.records[row]))
        self.set_history(s.texts())
        self.project_label.setText(s.summary())

    def _on_row_changed(self, row: int) -> None:
        s = self.session
        if 0 <= row < len(s.records) and (s.current is None or s.records[row].id != s.current.id):
            self.show_image(row)

    def _on_history_picked(self, index: int) -> None:
        text = self.history.itemData(index)
        if text:
            self.seg.text.value = text

    # ------------------------------------------------------------------ images

    def show_image(self, row: int) -> None:
        """Open image ``row`` of the list: its pixels, its committed label (or a kept draft),
        its text; segment it when "Segment on open" is on and it has no label."""
        from src_models.data.io import load_image

        s = self.session
        if s.project is None or not 0 <= row < len(s.records):
            return
        if self.seg.busy:
            self._message("Wait for the running segmentation to finish.")
            if s.current is not None:
                self.image_list.select_quietly(s.current_row())
            return
        leaving = s.current
        if s.stash_draft(self.shown.labels_data()):
            show_info(
                f"Uncommitted edits of '{leaving.name}' are kept until you come back "
                f"(they are not saved: commit them)"
            )
        rec = s.fetch(row)
        try:
            loaded = load_image(rec.path)
        except Exception as exc:  # noqa: BLE001 - shown, not raised
            self._error(exc, f"Cannot show {rec.name}")
            return
        committed = s.enter(row, rec)
        self.pseudo_layers.remove()
        self.volumes.forget(self.shown.show(rec, loaded.data, bool(loaded.rgb), loaded))
        self._show_pseudo()
        s.pseudo.seen(rec.id)
        if committed is not None:
            self.shown.set_labels(committed)
        s.set_baseline(self.shown.labels_data(), "empty" if committed is None else "commit")
        draft = s.take_draft(rec.id, self.shown.labels_data().shape)
        if draft is not None:
            self.shown.set_labels(draft)
        self.shown.activate()
        self.seg.text.value = rec.text or ""
        self.set_history(s.texts())
        self.image_list.select_quietly(row)
        self.image_list.update_record(row, rec, s.item_text(rec))
        self._message(s.state_text(row))
        self._update_buttons()
        if (
            self.segment_on_open
            and committed is None
            and draft is None
            and (rec.text or "").strip()
        ):
            self.seg.segment()

    # ------------------------------------------------------------------ pseudo labels

    def _show_pseudo(self) -> None:
        """Draw the shown image's pseudo label (when it has one and the box says so)."""
        s = self.session
        maps = None
        if s.current is not None and self.pseudo_box.show_check.isChecked():
            try:
                maps = s.pseudo.maps(s.current)
            except Exception as exc:  # noqa: BLE001 - the image stays usable without it
                self._error(exc, "Cannot show the pseudo label")
        if maps is None or self.image_layer is None or not self.shown.labels_on_screen():
            self.pseudo_layers.remove()
            return
        self.pseudo_layers.show(self.image_layer, self.labels_layer, *maps)
        self.viewer.layers.selection.active = self.labels_layer  # the paint tools act there

    def accept_pseudo(self) -> None:
        """Commit the shown image's pseudo label (the shown slice of a volume, all of them with
        "Whole volume") as its label, of kind ``accepted_pseudo``."""
        s = self.session
        if s.project is None or s.current is None or not s.pseudo.of(s.current.id):
            self._message("This image has no pseudo label to accept.", error=True)
            return
        if self.seg.busy:
            self._message("Wait for the running segmentation to finish, then accept.")
            return
        if not s.may_replace(self.shown.labels_data()):
            self._message(
                "The labels have uncommitted edits: Commit them, or press Accept again to "
                "replace them with the pseudo label."
            )
            return
        rec, slice_ = s.current, self._target_slice()
        try:
            commits = s.accept_pseudo(self.shown.labels_data(), slice_, self._text())
        except Exception as exc:  # noqa: BLE001 - shown; nothing was saved for a refusal
            self._error(exc, "Could not accept the pseudo label")
            return
        self.shown.refresh()
        versions = ", ".join(str(c.version) for c in commits)
        self._message(f"Accepted the pseudo label of {rec.name} as its label (version {versions}).")
        self._after_commit(rec)

    def edit_pseudo(self) -> None:
        """Copy the shown image's pseudo label into the labels, to correct and Commit."""
        s = self.session
        labels = self.shown.labels_data()
        if s.current is None or labels is None or not s.pseudo.of(s.current.id):
            self._message("This image has no pseudo label to edit.", error=True)
            return
        if not s.may_replace(labels):
            self._message(
                "The labels have uncommitted edits: Commit them, or press Edit again to "
                "replace them with the pseudo label."
            )
            return
        try:
            s.edit_pseudo(labels, self._target_slice())
        except ValueError as exc:
            self._error(exc)
            return
        self.shown.refresh()
        self._message("The pseudo label is in the labels: correct it, then Commit.")

    def review_next(self) -> None:
        """Go to the unreviewed pseudo label most likely right (high confidence, small change)."""
        nxt = self.session.pseudo.next_to_review()
        if nxt is None:
            self._message("Every pseudo label has been reviewed (or there are none yet).")
            return
        row = self.session.row_of(nxt.image_id)
        if row >= 0:
            self.show_image(row)
            if nxt.slice is not None:
                self.viewer.dims.set_current_step(0, nxt.slice)

    def segment(self) -> None:
        """Segment the shown image (or, with "Whole volume", every slice)."""
        self.seg.segment()

    def next_image(self) -> None:
        if self.records:
            self.show_image(self.session.next_row())

    def previous_image(self) -> None:
        if self.records:
            self.show_image(self.session.previous_row())

    # ------------------------------------------------------------------ the Segment widget's hooks

    def _segment_hook(self) -> bool:
        """Before Segment: refuse once over uncommitted edits; run whole volumes here."""
        if not self.session.may_replace(self.shown.labels_data()):
            self._message(
                "The labels have uncommitted edits: Commit them, or press Segment again to "
                "replace them with a new proposal."
            )
            return True
        if self.whole_volume_active():
            self.segment_volume()
            return True
        return False

    def _window_changed(self, layer: Image, window) -> None:
        """A CT window picked for the shown image: kept with the project image, so that its
        training data and later proposals use it too."""
        s = self.session
        if s.project is None or s.current is None or not self.shown.is_image(layer):
            return
        try:
            s.project.set_window(s.current, window)
        except Exception as exc:  # noqa: BLE001 - shown; the window still applies on screen
            self._error(exc, "Could not keep the window in the project")
            return
        s.touch(s.current)

    def _proposal_ready(self, layer: Image, index: tuple, result: Prediction) -> None:
        self._on_proposal(layer, index, result)  # looked up on each call (probes wrap it)

    def _on_proposal(self, layer: Image, index: tuple, result: Prediction) -> None:
        """A proposal is shown: record it in the project (status 'proposed', text history)."""
        s = self.session
        if s.project is None or s.current is None or not self.shown.is_image(layer):
            return
        version = self.models.version()
        warning = s.record_proposal(
            self.shown.labels_data(), result.mask, result.text, index, version
        )
        if warning:
            show_info(warning)
        self._after_store_change(s.current)

    def _proposal_recut(self, labels: Labels, index: tuple) -> None:
        if self.shown.is_labels(labels):
            self.session.set_baseline(labels.data, kind="proposal")

    # ------------------------------------------------------------------ commit / clear

    def commit(self) -> None:
        """Save the labels as the image's correction (with the proposal they replaced)."""
        s = self.session
        if s.project is None or s.current is None:
            self._message("Open a project and an image first.", error=True)
            return
        if self.seg.busy:
            self._message("Wait for the running segmentation to finish, then commit.")
            return
        if not self.shown.labels_on_screen():
            self._message("Nothing to commit: segment or paint first.", error=True)
            return
        slice_, rec = self._target_slice(), s.current
        prompts = self._click_prompts(slice_)
        try:
            commit = s.commit(
                self.shown.labels_data(),
                slice_,
                self._text(),
                self.models.version(),
                clicks=prompts.clicks if prompts else None,
                box=prompts.box if prompts else None,
            )
        except Exception as exc:  # noqa: BLE001 - shown, the labels stay on screen
            self._error(exc, "Commit failed (nothing was saved)")
            return
        where = f" slice {slice_}" if slice_ is not None else ""
        with_clicks = f", {len(commit.clicks)} click(s)" if commit.clicks else ""
        self._message(f"Committed {rec.name}{where} (version {commit.version}{with_clicks}).")
        if prompts is not None:
            self.seg.click_mode.clear()  # the next correction starts without clicks
        self._after_commit(rec)

    def _click_prompts(self, slice_: int | None):
        """The clicks and box of click mode on the shown image's plane that ``slice_`` commits
        (``None``: click mode is off, on another image, or the commit is a whole volume)."""
        mode = self.seg.click_mode
        if not mode.active or not self.shown.is_image(mode.image):
            return None
        data = self.shown.labels_data()
        if data is not None and data.ndim == 3 and slice_ is None:
            return None
        prompts = self.seg.click_prompts(() if slice_ is None else (int(slice_),))
        return None if prompts.empty else prompts

    def toggle_click_mode(self) -> None:
        """Click mode on the shown image: correct its labels with clicks and a box."""
        self.seg.toggle_click_mode()

    def no_lesion(self) -> None:
        """One click: this image (or slice) has no lesion; commit an empty label."""
        s = self.session
        if s.project is None or s.current is None:
            self._message("Open a project and an image first.", error=True)
            return
        slice_, rec = self._target_slice(), s.current
        labels = self.shown.labels_data()
        try:
            commit = s.no_lesion(labels, slice_, self._text(), self.models.version())
        except Exception as exc:  # noqa: BLE001
            self._error(exc, "Could not record 'no lesion' (nothing was saved)")
            return
        self.shown.refresh()
        self._message(f"{rec.name}: no lesion (version {commit.version}).")
        self._after_commit(rec)

    def clear(self) -> None:
        """Empty the labels on screen (the shown slice of a volume); nothing is saved."""
        labels = self.shown.labels_data()
        if labels is None:
            return
        self.session.clear(labels, self._target_slice())
        self.shown.refresh()
        self._message("Cleared (not saved): paint the lesion, then Commit.")

    def _text(self) -> str | None:
        return self.seg.text.value.strip() or None

    def _after_commit(self, rec: ImageRecord) -> None:
        self._after_store_change(rec)
        self._show_pseudo()  # a labelled image (slice) has no pseudo label any more
        self._update_buttons()
        n = self.session.commits_since_retrain
        if self.session.retrain_due(int(self.auto_spin.value())) and not self.retraining:
            self._message(f"{n} new commits: retraining starts.")
            self.retrain()

    # ------------------------------------------------------------------ background model work

    def segment_volume(self) -> None:
        """Segment every slice of the current volume (slices batched, in a worker, with
        progress and Cancel)."""
        current = self.session.current
        if self.image_layer is None or current is None or not current.is_volume:
            return
        self.volumes.run(self.image_layer)

    def suggest(self, go: bool = False) -> None:
        """Score the unlabelled images by uncertainty in a worker; show (and go to) the top."""
        self.suggestions.run(go)

    def _on_ranked(self, ranking, go: bool) -> None:
        self.refresh_list()
        if go and ranking.top is not None:
            self.go_to_suggested()

    def go_to_suggested(self) -> None:
        suggested = self.session.suggested
        if suggested is None:
            self.suggest(go=True)
            return
        row = self.session.row_of(suggested.image_id)
        if row >= 0:
            self.show_image(row)

    # ------------------------------------------------------------------ retraining

    def retrain_config(self) -> RetrainConfig:
        """The config of the next Retrain press: the panel's settings, then ``retrain_options``."""
        device = str(self.seg.device.value)
        return self.panel.config(device, self.models.base_model(), self.retrain_options)

    def retrain(self) -> None:
        """Start retraining rounds in the background (a separate process by default)."""
        if self.retraining:
            return
        why = self.session.can_retrain()
        if why is not None:
            self._message(why, error=True)
            return
        try:
            config = self.retrain_config()
        except (TypeError, ValueError) as exc:
            self._error(exc, "Cannot retrain with these settings")
            return
        try:
            self.runner.start(self.project.folder, config, self.retrain_mode)
        except Exception as exc:  # noqa: BLE001 - e.g. another retraining holds the project
            self._error(exc, "Cannot start retraining")
            return
        self.session.commits_since_retrain = 0
        self.panel.starting()
        self._update_buttons()

    def cancel_retrain(self) -> None:
        """Stop the running round between events; it is recorded as cancelled."""
        if self.runner.cancel():
            self.retrain_label.setText("Cancelling (the running step finishes first)…")

    def _on_retrain_finished(self, exit_code: int | None, crashed: bool) -> None:
        last = self.runner.last
        self.panel.finished(exit_code, crashed, last)
        warning = self.session.reload_pseudo()  # the round refined the pseudo labels
        if warning:
            show_info(warning)
        self.refresh_list()
        self._show_pseudo()
        self._update_buttons()
        if last is not None and last.get("type") == "RetrainDone" and last.get("rounds_done"):
            self.suggest(go=False)  # rank the unlabelled images with the new model

    def _load_new_checkpoint(self, checkpoint: str) -> None:
        """Use the project's new model for the next proposals (preloaded in a worker)."""
        path = self.loaded_checkpoint = Path(checkpoint)
        name = path.name.removesuffix(".safetensors")
        self._message(f"New model {name} loaded: the next proposals use it.")
        self.models.load(path)

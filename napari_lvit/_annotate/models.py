"""Which model the annotation loop uses: the project's latest round offered as a choice of the
Segment widget, the version a proposal or commit records, what a retraining starts from, the
preload of a new round's model, and the CPU threads of proposals."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psygnal import Signal

from napari_lvit._annotate.session import (
    PROJECT_MODEL,
    inference_threads,
    model_version,
    training_threads,
)

if TYPE_CHECKING:
    from napari_lvit._annotate.background import Jobs
    from napari_lvit._annotate.session import AnnotationSession
    from napari_lvit._widget import SegmentWidget


class LoopModels:
    """The models side of the loop, through the Segment widget's public API."""

    #: a new model could not be loaded: why
    failed = Signal(str)

    def __init__(
        self,
        seg: SegmentWidget,
        session: AnnotationSession,
        jobs: Jobs,
        retraining: Callable[[], bool],
        training_options: Callable[[], dict[str, Any]],
    ) -> None:
        self.seg, self.session, self.jobs = seg, session, jobs
        self._retraining = retraining
        self._training_options = training_options

    def project_model(self) -> str:
        """The project's current checkpoint (the :data:`PROJECT_MODEL` choice)."""
        project = self.session.project
        ckpt = project.current_checkpoint if project is not None else None
        if ckpt is None or not ckpt.is_file():
            raise ValueError("the project has no trained model yet: press Retrain first")
        return str(ckpt)

    def refresh_choices(self, select_project: bool = False) -> None:
        """Offer the project's model while a project is open (and choose it if asked)."""
        has_project = self.session.project is not None
        self.seg.set_model_sources({PROJECT_MODEL: self.project_model} if has_project else {})
        if select_project and has_project:
            self.seg.model.value = PROJECT_MODEL

    def version(self) -> str:
        """The chosen model as commits and proposals record it."""
        try:
            return model_version(self.seg.model_source)
        except ValueError:
            return "unknown"

    def base_model(self) -> str:
        """What a retraining starts from when the project has no model yet."""
        if self.seg.model.value == PROJECT_MODEL:
            return "auto"
        try:
            return self.seg.model_source
        except ValueError:
            return "auto"

    def apply_inference_threads(self) -> None:
        """Set torch's threads on the thread that runs the model next (OpenMP's thread count
        is per thread): fewer while a training runs beside it."""
        torch = sys.modules.get("torch")
        if torch is None:
            return
        training = training_threads(self._training_options())
        n = inference_threads(self._retraining(), training)
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def load(self, checkpoint: str | Path) -> Path:
        """Use the project's new model for the next proposals: choose it, forget the old one
        and preload the new one in a worker."""
        path = Path(checkpoint)
        self.refresh_choices(select_project=True)
        self.seg.clear_models()
        device = str(self.seg.device.value)

        def job():
            yield self.seg.predictor(str(path), device)

        def on_error(exc: Exception) -> None:
            from napari_lvit._errors import error_line

            self.failed.emit(error_line(exc, "Could not load the new model"))

        self.jobs.start("preload", job, lambda _: None, on_error, lambda: None)
        return path

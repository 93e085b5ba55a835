"""The annotation session without a display: the open project, its images, the shown image's
labels state (what the widget last put there, kept drafts, the proposal), commits, EPI's
pseudo labels (:mod:`.pseudo`: accept, edit), the suggestions' data and the retraining config.

No Qt and no napari here: the widget passes label arrays in and shows what comes back, so all
of this runs (and is tested) without a display.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_lvit._annotate.pseudo import PseudoState
from src_models.errors import describe

if TYPE_CHECKING:
    from src_models.project import CommitRecord, ImageRecord, Project, ProposalRecord
    from src_models.project.retrain import RetrainConfig
    from src_models.project.suggest import Score

PROJECT_MODEL = "project model (latest round)"

STATUS_MARK = {"unlabeled": "○", "proposed": "◐", "corrected": "●", "no_lesion": "∅"}
STATUS_WORD = {"corrected": "committed", "no_lesion": "no lesion"}


def model_version(source: str | None) -> str:
    """How a commit or proposal names the model: a checkpoint's stem, ``default``, or
    ``<registry name> (untrained)``; ``unknown`` without a source."""
    if source is None:
        return "unknown"
    path = Path(source)
    if path.suffix == ".safetensors":
        return path.stem
    return source if source == "default" else f"{source} (untrained)"


def training_threads(overrides: dict[str, Any]) -> int:
    """CPU threads of the training: all cores but one (the viewer's), at least one."""
    n = overrides.get("num_threads")
    return int(n) if n else max(1, (os.cpu_count() or 1) - 1)


def inference_threads(retraining: bool, training: int) -> int:
    """CPU threads for proposals: all cores but one (the event loop's and the canvas's), and
    while training runs the cores it leaves; at least one. More threads than free cores make
    OpenMP's spinning threads fight, and a 20 ms proposal takes seconds
    (benchmarks/bench_responsiveness.py)."""
    cores = os.cpu_count() or 1
    return max(1, cores - training) if retraining else max(1, cores - 1)


#: The retrain panel's settings when it opens (what one press of Retrain uses by default).
PANEL_DEFAULTS: dict[str, Any] = {
    "rounds": 1,
    "epochs": None,  # sized by the work: steps for the number of corrections
    "time_budget_s": 90.0,
    "resolution": "auto",
    "clcc": False,
}


def button_retrain_config(model: str = "default", device: str = "auto") -> RetrainConfig:
    """The config of one press of Retrain with the panel's defaults (benchmarks/bench_loop.py
    drives a project with it). ``model``/``device``: the Segment widget's defaults."""
    d = PANEL_DEFAULTS
    return build_retrain_config(
        rounds=d["rounds"],
        epochs=d["epochs"],
        device=device,
        model=model,
        clcc=d["clcc"],
        overrides={"time_budget_s": d["time_budget_s"], "resolution": d["resolution"]},
    )


def build_retrain_config(
    *,
    rounds: int,
    epochs: int | None,
    device: str,
    model: str,
    clcc: bool,
    overrides: dict[str, Any],
) -> RetrainConfig:
    """The one :class:`RetrainConfig` of a Retrain press: the panel's values, then the
    ``overrides`` (any RetrainConfig field), with the training's thread count last."""
    from src_models.project.retrain import RetrainConfig

    fields: dict[str, Any] = {
        "rounds": int(rounds),
        "epochs": None if epochs is None else int(epochs),
        "device": str(device),
        "model": model,
        "clcc": bool(clcc),
    }
    fields.update(overrides)
    fields["num_threads"] = training_threads(overrides)
    return RetrainConfig(**fields)


@dataclass(frozen=True)
class Ranking:
    """The outcome of scoring: the top image (or ``None``), how many were ranked, and why
    images could not be scored."""

    top: Score | None
    n_ranked: int
    reasons: tuple[str, ...] = ()

    def text(self) -> str:
        if self.top is None:
            why = f" ({', '.join(self.reasons)})" if self.reasons else ""
            return "No image could be scored" + why
        return (
            f"Next suggested: {self.top.name} (uncertainty {self.top.score:.3f} bits/pixel; "
            f"{self.n_ranked} images ranked) — Shift-U to go there"
        )


class AnnotationSession:
    """One open project and the state of the image shown from it."""

    def __init__(self) -> None:
        self.project: Project | None = None
        self.how = ""  # how the project was opened (created, imported, opened)
        self.records: list[ImageRecord] = []
        self.current: ImageRecord | None = None
        self.drafts: dict[int, np.ndarray] = {}  # uncommitted edits by image id
        self.scores: dict[int, Score] = {}
        self.suggested: Score | None = None
        self.baseline: np.ndarray | None = None  # the labels as the widget last set them
        self.baseline_kind = "empty"  # empty | commit | proposal | pseudo
        self.proposal: ProposalRecord | None = None
        self.proposal_shown: np.ndarray | None = None
        self.replace_armed: int | None = None
        self.commits_since_retrain = 0
        self.pseudo = PseudoState()

    # ------------------------------------------------------------------ project

    def open(self, path: str | os.PathLike, project: str | os.PathLike | None = None) -> str | None:
        """Open a project, an LViT folder (imported) or a folder of images (added); closes the
        previous one. Raises ``ProjectError``, ``ValueError`` or ``OSError``; returns a warning
        (stale rounds could not be checked) or ``None``."""
        from src_models.project.retrain import recover_stale_rounds
        from src_models.project.workspace import open_workspace

        path = str(path).strip()
        if not path:
            raise ValueError("choose a folder first")
        opened, how = open_workspace(path, project)
        self.close()
        self.project, self.how = opened, how
        warning = None
        if getattr(opened, "read_only", False):
            warning = (
                f"The project '{opened.folder}' is open read-only (its folder cannot be "
                "written): browse and segment, but commits and retraining are off; copy it "
                "somewhere you may write to in order to annotate."
            )
        else:
            try:
                recover_stale_rounds(opened)
            except Exception as exc:  # noqa: BLE001 - housekeeping must not block opening
                warning = f"Could not check earlier retraining rounds: {describe(exc)[0]}"
        self.commits_since_retrain = 0
        self.refresh()
        warning = self.reload_pseudo() or warning
        return warning

    def close(self) -> None:
        if self.project is not None:
            self.project.close()
        self.project = None
        self.records = []
        self.current = None
        self.drafts.clear()
        self.scores.clear()
        self.suggested = None
        self.pseudo.clear()

    def reload_pseudo(self) -> str | None:
        """Read EPI's pseudo labels again (after a retraining); returns a warning when the
        bank cannot be read (the images are shown without pseudo labels then)."""
        try:
            self.pseudo.load(self.project)
        except Exception as exc:  # noqa: BLE001 - a damaged bank must not block annotating
            self.pseudo.clear()
            return f"The pseudo labels could not be read: {describe(exc)[0]}"
        return None

    def summary(self) -> str:
        if self.project is None:
            return "No project open."
        counts = self.project.counts()
        return (
            f"Project {self.project.folder} ({self.how}): {len(self.records)} images, "
            f"{counts['corrected'] + counts['no_lesion']} labelled"
        )

    def refresh(self) -> None:
        """Reload the image records (the current one too)."""
        if self.project is None:
            return
        self.records = self.project.images()
        if self.current is not None:
            row = self.row_of(self.current.id)
            if row >= 0:
                self.current = self.records[row]

    def touch(self, rec: ImageRecord) -> int:
        """Re-read one record after the store changed it; returns its row (-1: not listed)."""
        fresh = self.project.image(rec.id)
        if self.current is not None and self.current.id == fresh.id:
            self.current = fresh
        row = self.row_of(fresh.id)
        if row >= 0:
            self.records[row] = fresh
        return row

    def item_text(self, rec: ImageRecord) -> str:
        """The image list's line for ``rec``: status mark, name, slices, draft, uncertainty."""
        text = f"{STATUS_MARK.get(rec.status, '?')} {rec.name}"
        if rec.is_volume:
            text += f"  ({rec.n_slices} slices)"
        if rec.id in self.drafts:
            text += "  ✎ unsaved edits"
        score = self.scores.get(rec.id)
        if score is not None and score.score is not None and not rec.is_labeled:
            text += f"  H={score.score:.3f}"
        mark = self.pseudo.mark(rec.id)
        if mark:
            text += f"  {mark}"
        return text

    # ------------------------------------------------------------------ navigation

    def row_of(self, image_id: int) -> int:
        return next((i for i, r in enumerate(self.records) if r.id == image_id), -1)

    def current_row(self) -> int:
        return self.row_of(self.current.id) if self.current is not None else -1

    def first_row(self) -> int:
        """The first image without a label (else the first image)."""
        return next((i for i, r in enumerate(self.records) if not r.is_labeled), 0)

    def next_row(self) -> int:
        return min(self.current_row() + 1, len(self.records) - 1)

    def previous_row(self) -> int:
        row = self.current_row() if self.current is not None else 1
        return max(row - 1, 0)

    def fetch(self, row: int) -> ImageRecord:
        """The fresh record of the image in ``row`` (not yet the current one)."""
        return self.project.image(self.records[row].id)

    def enter(self, row: int, rec: ImageRecord) -> np.ndarray | None:
        """Make ``rec`` (fetched for ``row``) the current image; returns its committed label."""
        self.current = rec
        self.records[row] = rec
        self.proposal = None
        self.proposal_shown = None
        self.replace_armed = None
        return self.project.current_mask(rec)

    def state_text(self, row: int) -> str:
        rec = self.records[row]
        state = STATUS_WORD.get(rec.status, rec.status)
        return f"{rec.name} ({row + 1}/{len(self.records)}): {state}"

    # ------------------------------------------------------------------ labels state

    def set_baseline(self, labels: np.ndarray, kind: str) -> None:
        """Remember ``labels`` as what the widget put there (``kind``: empty, commit, proposal,
        pseudo: a pseudo label copied in by Edit)."""
        self.baseline = np.asarray(labels).copy()
        self.baseline_kind = kind

    def is_edited(self, labels: np.ndarray | None) -> bool:
        """True if ``labels`` differ from what the widget last put there (user edits)."""
        if labels is None or self.baseline is None:
            return False
        data = np.asarray(labels)
        return data.shape != self.baseline.shape or not np.array_equal(
            data != 0, self.baseline != 0
        )

    def may_replace(self, labels: np.ndarray | None) -> bool:
        """Segment over uncommitted edits only when asked twice in a row."""
        if self.current is None or not self.is_edited(labels):
            self.replace_armed = None
            return True
        if self.replace_armed == self.current.id:
            self.replace_armed = None
            return True
        self.replace_armed = self.current.id
        return False

    def stash_draft(self, labels: np.ndarray | None) -> bool:
        """Keep uncommitted edits of the current image in memory (restored on return);
        returns True when something was kept."""
        if self.current is None or labels is None:
            return False
        if self.is_edited(labels):
            self.drafts[self.current.id] = np.asarray(labels).copy()
            return True
        self.drafts.pop(self.current.id, None)
        return False

    def take_draft(self, image_id: int, shape: tuple[int, ...]) -> np.ndarray | None:
        draft = self.drafts.pop(image_id, None)
        return draft if draft is not None and draft.shape == tuple(shape) else None

    # ------------------------------------------------------------------ proposals

    def record_proposal(
        self, shown: np.ndarray, mask: np.ndarray, text: str | None, index: tuple, version: str
    ) -> str | None:
        """A proposal is on screen (``shown``: the labels now): remember it as the baseline and
        save it (status 'proposed', text history). Returns a warning when it was not saved."""
        self.set_baseline(shown, kind="proposal")
        rec = self.current
        slice_ = int(index[0]) if (index and rec.is_volume) else None
        warning = None
        try:
            self.proposal = self.project.save_proposal(
                rec, np.asarray(mask), version, text=text, slice=slice_
            )
            self.proposal_shown = np.asarray(shown).copy()
        except Exception as exc:  # noqa: BLE001 - the proposal is still on screen
            self.proposal = None
            warning = f"The proposal could not be recorded: {describe(exc)[0]}"
        self.touch(rec)
        return warning

    def texts(self) -> list[str]:
        """The texts used on the current image, newest first, each once."""
        if self.project is None or self.current is None:
            return []
        seen: list[str] = []
        for t in reversed(self.project.text_history(self.current)):
            if t.text and t.text not in seen:
                seen.append(t.text)
        return seen

    # ------------------------------------------------------------------ commit / clear

    def target_slice(self, labels: np.ndarray, whole_volume: bool, z: int) -> int | None:
        """The slice a commit, clear or "no lesion" acts on: ``None`` for a 2D image or the
        whole volume, else the shown slice ``z`` (clipped)."""
        if self.current is None or not self.current.is_volume or whole_volume:
            return None
        if np.ndim(labels) != 3:
            return 0
        return min(max(int(z), 0), np.shape(labels)[0] - 1)

    def _replaced_proposal(self, slice_: int | None) -> Any:
        """What a commit replaced: the saved proposal when it is what was shown, else the shown
        proposal's (or pseudo label's) mask, else ``None`` (the labels came from neither)."""
        if self.baseline_kind not in ("proposal", "pseudo") or self.baseline is None:
            return None
        saved = self.proposal
        if (
            saved is not None
            and saved.slice == slice_
            and self.proposal_shown is not None
            and np.array_equal(self.proposal_shown != 0, self.baseline != 0)
        ):
            return saved
        shown = self.baseline if slice_ is None else self.baseline[slice_]
        return shown != 0

    def commit(
        self,
        labels: np.ndarray,
        slice_: int | None,
        text: str | None,
        version: str,
        *,
        clicks: Any = None,
        box: Any = None,
    ) -> CommitRecord:
        """Save ``labels`` (their ``slice_``) as the current image's correction, with the
        proposal they replaced and the ``clicks`` and ``box`` of click mode (pixel coordinates
        of the plane); an edited pseudo label committed unchanged is an accepted one. Raises
        when the store refuses (nothing is saved then)."""
        rec = self.current
        mask = labels if slice_ is None else labels[slice_]
        unchanged_pseudo = self.baseline_kind == "pseudo" and not self.is_edited(labels)
        commit = self.project.commit(
            rec,
            mask,
            text=text,
            model_version=version,
            proposal=None if unchanged_pseudo else self._replaced_proposal(slice_),
            slice=slice_,
            kind="accepted_pseudo" if unchanged_pseudo else "correction",
            clicks=clicks,
            box=box,
        )
        self.pseudo.forget(rec.id, slice_)
        self._committed(rec, labels)
        return commit

    def no_lesion(
        self, labels: np.ndarray | None, slice_: int | None, text: str | None, version: str
    ) -> CommitRecord:
        """Record "no lesion" for the current image (or slice) and empty ``labels`` there."""
        rec = self.current
        commit = self.project.commit_no_lesion(rec, text=text, model_version=version, slice=slice_)
        self.pseudo.forget(rec.id, slice_)
        if labels is not None:
            self.clear(labels, slice_)
            self._committed(rec, labels)
        else:
            self._committed(rec, None)
        return commit

    # ------------------------------------------------------------------ pseudo labels

    def _pseudo_targets(self, slice_: int | None) -> list:
        """The current image's pseudo labels an action takes: a 2D image's, a volume's
        ``slice_`` (``None``: every slice that has one)."""
        found = self.pseudo.labels(self.current) if self.current is not None else []
        if slice_ is not None:
            found = [lb for lb in found if lb.item.slice == slice_]
        if not found:
            where = "" if slice_ is None else f" on slice {slice_}"
            raise ValueError(f"'{self.current.name}' has no pseudo label{where} to use")
        return found

    @staticmethod
    def _write_cut(labels: np.ndarray, label) -> None:
        k = label.item.slice
        target = labels if labels.ndim == 2 else labels[int(k or 0)]
        target[...] = label.mask().astype(labels.dtype)

    def accept_pseudo(self, labels: np.ndarray | None, slice_: int | None, text: str | None):
        """Commit the current image's pseudo label (a volume's ``slice_``; ``None``: every
        slice with one) as its label, of kind ``accepted_pseudo``, and show it in ``labels``.
        Returns the commits; raises when there is none or the store refuses."""
        from src_models.project.pseudo_review import accept

        rec = self.current
        commits = []
        for label in self._pseudo_targets(slice_):
            commits.append(accept(self.project, label, text=text))
            self.pseudo.forget(rec.id, label.item.slice)
            if labels is not None:
                self._write_cut(labels, label)
        self._committed(rec, labels)
        return commits

    def edit_pseudo(self, labels: np.ndarray, slice_: int | None) -> int:
        """Copy the current image's pseudo label cut (a volume's ``slice_``, else all slices
        with one) into ``labels`` to correct it before committing; returns how many."""
        found = self._pseudo_targets(slice_)
        for label in found:
            self._write_cut(labels, label)
        self.set_baseline(labels, kind="pseudo")
        return len(found)

    def _committed(self, rec: ImageRecord, labels: np.ndarray | None) -> None:
        self.drafts.pop(rec.id, None)
        if labels is not None:
            self.set_baseline(labels, kind="commit")
        self.commits_since_retrain += 1
        self.touch(rec)

    @staticmethod
    def clear(labels: np.ndarray, slice_: int | None) -> None:
        """Empty ``labels`` in place (only ``slice_`` of a volume when given)."""
        if slice_ is None:
            labels[...] = 0
        else:
            labels[slice_] = 0

    def retrain_due(self, every: int) -> bool:
        """True when ``every`` (> 0) commits were made since the last retraining."""
        return bool(every) and self.commits_since_retrain >= every

    # ------------------------------------------------------------------ suggestions

    def to_score(self) -> list[ImageRecord]:
        """The images a suggestion ranks: those without a label."""
        return self.project.images(["unlabeled", "proposed"]) if self.project else []

    def add_score(self, score: Score) -> None:
        self.scores[score.image_id] = score

    def rank(self, results: list[Score]) -> Ranking:
        """Rank scored images (most uncertain first); the top one becomes the suggestion."""
        ranked = sorted((s for s in results if s.score is not None), key=lambda s: -float(s.score))
        reasons = tuple(sorted({s.reason for s in results if s.reason}))
        self.suggested = ranked[0] if ranked else None
        return Ranking(self.suggested, len(ranked), () if ranked else reasons)

    # ------------------------------------------------------------------ retraining

    def can_retrain(self) -> str | None:
        """Why a retraining cannot start now, or ``None``."""
        if self.project is None:
            return "Open a project first."
        if not self.project.labeled():
            return "Commit at least one correction before retraining."
        return None

    def round_history(self) -> list[list[tuple[float | None, float | None]]]:
        """(train loss, validation Dice) per epoch of each finished round, oldest first."""
        if self.project is None:
            return []
        return [
            [(e.get("train_loss"), e.get("val_dice")) for e in r.metrics.get("epochs", [])]
            for r in self.project.rounds()
            if r.status == "done"
        ]

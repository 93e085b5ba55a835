"""The annotation loop's pseudo labels without a display: which images have one and how sure
each is (the image list's marks), the shown image's maps and its line in the panel, which one
"Review next" goes to, and which have been looked at.

No Qt and no napari: :class:`PseudoState` reads the project's EPI bank through
:class:`~src_models.project.pseudo_review.PseudoReview`; the session's actions (accept, edit)
and the widget's layers build on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from src_models.project import ImageRecord, Project
    from src_models.project.pseudo_review import PseudoLabel, PseudoReview, PseudoSummary

PSEUDO_MARK = "◇"


class PseudoState:
    """The pseudo labels of the open project's unlabelled images, by image id."""

    def __init__(self) -> None:
        self.review: PseudoReview | None = None
        self.by_image: dict[int, list[PseudoSummary]] = {}
        #: bank key -> the label's round count when it was shown: reviewed until it moves again
        self.reviewed: dict[str, int] = {}

    def load(self, project: Project | None) -> None:
        """(Re)read the bank: after opening a project and after a retraining."""
        from src_models.project.pseudo_review import PseudoReview

        self.by_image = {}
        self.review = None if project is None else PseudoReview(project)
        if self.review is None:
            return
        for s in self.review.summaries():
            self.by_image.setdefault(s.image_id, []).append(s)

    def clear(self) -> None:
        self.review, self.by_image = None, {}
        self.reviewed.clear()

    @property
    def rounds(self) -> int:
        return 0 if self.review is None else self.review.rounds

    def of(self, image_id: int) -> list[PseudoSummary]:
        """The image's pseudo labels (one for a 2D image, one per slice of a volume)."""
        return self.by_image.get(image_id, [])

    def confidence(self, image_id: int) -> float | None:
        """The image's confidence (a volume: the mean over its slices), or ``None``."""
        found = self.of(image_id)
        return float(np.mean([s.confidence for s in found])) if found else None

    def mark(self, image_id: int) -> str:
        """The image list's mark, e.g. ``◇ 92%`` (``◇✓`` once reviewed); ``""`` without one."""
        c = self.confidence(image_id)
        if c is None:
            return ""
        seen = all(self.reviewed.get(s.key, 0) >= s.rounds for s in self.of(image_id))
        return f"{PSEUDO_MARK}{'✓' if seen else ''} {100 * c:.0f}%"

    def text(self, rec: ImageRecord) -> str:
        """The panel's line for ``rec``."""
        found = self.of(rec.id)
        if not found:
            if rec.is_labeled:
                return "Labelled: no pseudo label needed."
            if self.rounds == 0:
                return "No pseudo labels yet: Retrain (EPI) makes them for unlabelled images."
            return "No pseudo label for this image (EPI labels images that have a description)."
        if not rec.is_volume:
            return f"Pseudo label: {found[0].text()}."
        share = 100 * self.confidence(rec.id)
        return (
            f"Pseudo labels on {len(found)} of {rec.n_slices} slices, {share:.0f}% confident "
            "on average; Accept takes the shown slice (all with Whole volume)."
        )

    def seen(self, image_id: int) -> None:
        """The image is on screen: its pseudo labels count as reviewed at their rounds."""
        for s in self.of(image_id):
            self.reviewed[s.key] = s.rounds

    def next_to_review(self) -> PseudoSummary | None:
        """The unreviewed pseudo label most likely right (see ``review_order``), or ``None``."""
        from src_models.project.pseudo_review import review_order

        every = [s for found in self.by_image.values() for s in found]
        order = review_order(every, self.reviewed)
        return order[0] if order else None

    def labels(self, rec: ImageRecord) -> list[PseudoLabel]:
        """The image's pseudo labels with their maps (read from the bank now)."""
        if self.review is None or not self.of(rec.id):
            return []
        slices = [None] if not rec.is_volume else [s.slice for s in self.of(rec.id)]
        found = [self.review.label(rec, k) for k in slices]
        return [lb for lb in found if lb is not None]

    def maps(self, rec: ImageRecord) -> tuple[np.ndarray, np.ndarray] | None:
        """``(probabilities, cut)`` of the image at its size (a volume ``[Z, H, W]``, zero on
        slices without a pseudo label), or ``None`` if it has none."""
        labels = self.labels(rec)
        if not labels:
            return None
        if not rec.is_volume:
            prob = labels[0].prob_at()
            return prob, prob >= labels[0].threshold
        prob = np.zeros(rec.shape, np.float32)
        for lb in labels:
            prob[int(lb.item.slice or 0)] = lb.prob_at()
        return prob, prob >= labels[0].threshold

    def forget(self, image_id: int, slice_: int | None = None) -> None:
        """A pseudo label became a label: drop it (``slice_`` of a volume; ``None``: all)."""
        kept = [s for s in self.of(image_id) if slice_ is not None and s.slice != slice_]
        if kept:
            self.by_image[image_id] = kept
        else:
            self.by_image.pop(image_id, None)

"""The annotation project store: images, texts, committed label versions, proposals,
pseudo labels and retraining rounds of one project, in a folder with an SQLite manifest.

>>> with Project.create("my_project") as project:  # doctest: +SKIP
...     rec = project.add_image("chest.png", text="Lesion in the lower left lung.")
...     project.commit(rec, mask, model_version="lvit-small@3")

Never imports napari, Qt or torch (image readers from :mod:`src_models.data` load lazily).
"""

from .records import (
    CommitRecord,
    ExportSummary,
    ImageRecord,
    ImportSummary,
    ProposalRecord,
    RoundRecord,
    TextRecord,
    TrainingItem,
)
from .schema import COMMIT_KINDS, IMAGE_STATUSES, ROUND_STATUSES, SCHEMA_VERSION
from .store import MANIFEST_NAME, ImageRef, Project, ProjectError, is_project

__all__ = [
    "COMMIT_KINDS",
    "IMAGE_STATUSES",
    "MANIFEST_NAME",
    "ROUND_STATUSES",
    "SCHEMA_VERSION",
    "CommitRecord",
    "ExportSummary",
    "ImageRecord",
    "ImageRef",
    "ImportSummary",
    "Project",
    "ProjectError",
    "ProposalRecord",
    "RoundRecord",
    "TextRecord",
    "TrainingItem",
    "is_project",
]

"""Open "what the user pointed at" as a project: a project folder, an LViT split folder or a plain
folder of images.

- A project folder (it holds ``project.sqlite``) is opened.
- An LViT split folder (``img/``, optional ``labelcol/`` and a text table) is imported into a
  project (its masks become commits unless ``with_masks=False``; descriptions become texts).
- Any other folder: its image files are added (referenced, not copied).

Unless ``project`` names another place, the project of a folder lives in
``<folder>/.napari-lvit``. Opening the same folder again reopens that project and adds the
images that appeared since. No torch, no Qt.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .store import Project, ProjectError, is_project

__all__ = ["PROJECT_SUBDIR", "open_workspace"]

#: Where the project of a plain folder lives by default.
PROJECT_SUBDIR = ".napari-lvit"


def _is_lvit_split(folder: Path) -> bool:
    return (folder / "img").is_dir()


def open_workspace(
    path: str | os.PathLike,
    project: str | os.PathLike | None = None,
    *,
    with_masks: bool = True,
) -> tuple[Project, str]:
    """Return ``(project, how)`` with ``how`` one of ``"opened"``, ``"imported"``,
    ``"added"``; see the module docstring. Raises :class:`ProjectError` for a path that is
    neither a project nor a folder."""
    src = Path(path).expanduser().resolve()
    if is_project(src) and project is None:
        return Project.open(src), "opened"
    if not src.is_dir():
        raise ProjectError(f"'{src}' is neither a project nor a folder of images")
    target = Path(project).expanduser().resolve() if project is not None else src / PROJECT_SUBDIR
    existed, fresh = target.exists(), not is_project(target)
    proj = Project.open_or_create(target)
    if proj.read_only:  # browse what is there; adding the folder's new images would write
        return proj, "opened"
    try:
        if _is_lvit_split(src):
            has_masks = with_masks and (src / "labelcol").is_dir()
            proj.import_lvit(src, with_masks=has_masks)
            return proj, "imported"
        added = proj.add_folder(src, exist_ok=True)
        if not added and len(proj) == 0:
            raise ProjectError(
                f"no image files in '{src}' (supported: png, jpg, tif, dcm, nii, ...)"
            )
        return proj, "added"
    except BaseException:
        proj.close()
        if fresh:  # a failed first open leaves nothing behind
            _remove_new_project(target, existed)
        raise


def _remove_new_project(folder: Path, existed: bool) -> None:
    """Undo the :meth:`Project.create` of a failed first open: the whole folder when it was
    made for the project; else only the manifest and the subfolders it left empty (the folder
    may hold other files)."""
    from .store import _SUBDIRS, MANIFEST_NAME

    if not existed:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for name in (MANIFEST_NAME, MANIFEST_NAME + "-wal", MANIFEST_NAME + "-shm"):
        (folder / name).unlink(missing_ok=True)
    for sub in _SUBDIRS:
        with contextlib.suppress(OSError):
            (folder / sub).rmdir()  # only when empty

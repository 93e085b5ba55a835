"""``napari-lvit export PROJECT --format nifti|dicom-seg|lvit OUT``: a project's committed
labels, where clinicians need them.

- ``nifti``: ``OUT/<name>.nii.gz`` per labelled image, with the source image's affine (DICOM
  series, NIfTI and TIFF geometry; 1 mm voxels when the source has none);
- ``dicom-seg``: ``OUT/<name>.dcm`` per labelled DICOM image or series, a DICOM SEG
  referencing its slices (highdicom); other images, and labels with nothing marked, are skipped;
- ``lvit``: the LViT dataset layout (:meth:`Project.export_lvit`: ``img/``, ``labelcol/``,
  ``text.csv``; 2D images only).

Prints one line: how many masks were written and which images were skipped, and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ExportReport", "cmd_export", "export_project"]

FORMATS = ("nifti", "dicom-seg", "lvit")


@dataclass
class ExportReport:
    out_dir: Path
    written: list[Path] = field(default_factory=list)  # nifti / dicom-seg: the files
    n_masks: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image name, why)


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a project's committed labels as NIfTI, DICOM SEG or an LViT dataset",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("project", type=Path, help="project folder (holds project.sqlite)")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("out", type=Path, help="output folder (created if needed)")
    p.set_defaults(func=cmd_export)


def export_project(project, out_dir: str | os.PathLike, fmt: str) -> ExportReport:
    """Write the committed labels of ``project`` (a :class:`~src_models.project.Project`)
    to ``out_dir`` in ``fmt`` (one of ``nifti``, ``dicom-seg``, ``lvit``)."""
    from src_models.data.io import load_image
    from src_models.data.writers import label_values, write_dicom_seg, write_nifti
    from src_models.project._db import _safe_file_stem

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out_dir).expanduser()
    report = ExportReport(out)
    if fmt == "lvit":
        summary = project.export_lvit(out)
        report.n_masks = summary.n_masks
        report.skipped = [(name, "volumes have no LViT form") for name in summary.skipped]
        return report
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for rec in project.images():
        mask = project.current_mask(rec)
        if mask is None:
            continue
        stem = _safe_file_stem(rec.name)
        if stem.lower() in used:
            stem = f"{stem}-{rec.id}"
        used.add(stem.lower())
        loaded = load_image(rec.path, max_pixels=None)
        if fmt == "nifti":
            path = out / f"{stem}.nii.gz"
            report.written.append(write_nifti(path, mask, loaded.affine, inputs=[rec.path]))
            continue
        if (loaded.meta or {}).get("format") != "dicom":
            report.skipped.append((rec.name, "not a DICOM image"))
            continue
        if not label_values(mask):
            report.skipped.append((rec.name, "nothing is marked (a DICOM SEG needs a segment)"))
            continue
        path = out / f"{stem}.dcm"
        report.written.append(
            write_dicom_seg(
                path,
                mask,
                loaded.source_files,
                frame_order=(loaded.meta or {}).get("frame_order"),
            )
        )
    report.n_masks = len(report.written)
    return report


def cmd_export(args) -> int:
    from src_models.project import Project

    with Project.open(args.project) as project:
        report = export_project(project, args.out, args.format)
    line = f"exported {report.n_masks} mask(s) as {args.format} to {report.out_dir}"
    if report.skipped:
        line += "; skipped " + ", ".join(f"{n} ({why})" for n, why in report.skipped)
    print(line)
    return 0

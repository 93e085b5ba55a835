"""Import from and export to the LViT dataset layout (``img/``, ``labelcol/``, text table)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ._db import _IMPORT_BATCH, _safe_file_stem, _split_suffix
from ._fs import atomic_copy, atomic_write_bytes, encode_mask_png
from ._labels import LabelsMixin
from .records import ExportSummary, ImportSummary

_COPY_AS_IS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class LvitIOMixin(LabelsMixin):
    """LViT import/export of a :class:`~.store.Project`."""

    # ------------------------------------------------------------------ LViT import/export

    def import_lvit(
        self,
        split_dir: str | os.PathLike,
        with_masks: bool = True,
        *,
        copy: bool | None = None,
        model_version: str = "import",
    ) -> ImportSummary:
        """Import an LViT split folder (``img/``, ``labelcol/``, text table).

        Images are added with their descriptions (names = image file stems); with
        ``with_masks`` each mask becomes a commit of kind ``correction`` with model version
        ``"import"``, and images without a mask are skipped (with a warning from
        :func:`~src_models.data.dataset.scan_split`); without it every image is imported
        unlabelled. Images already imported from the same file are skipped (no second commit).
        Runs in batches of transactions, so an interrupted import can simply be re-run.
        """
        from ..data.dataset import scan_split
        from ..data.io import load_image, mask_from_array

        records = scan_split(split_dir, require_masks=with_masks, require_text=False)
        copy = self.copy_images if copy is None else bool(copy)
        summary = ImportSummary()
        for start in range(0, len(records), _IMPORT_BATCH):
            batch = []
            for r in records[start : start + _IMPORT_BATCH]:
                src = Path(r.image_path).resolve()
                shape, rgb = self._probe(src)
                if with_masks and r.mask_path is not None:
                    loaded = load_image(r.mask_path)
                    m = mask_from_array(loaded.data, rgb=loaded.rgb)
                    if m.shape != shape:
                        raise ValueError(
                            f"mask '{r.mask_path}' shape {m.shape} does not match image "
                            f"'{src}' shape {shape}"
                        )
                    mask = m
                else:
                    mask = None
                batch.append((r, src, shape, rgb, mask))
            with self._write() as conn:
                for r, src, shape, rgb, mask in batch:
                    rec, created = self._insert_image(
                        conn, src, r.name, shape, rgb, r.text, copy, exist_ok=True
                    )
                    if not created:
                        summary.skipped.append(rec.name)
                        continue
                    summary.added.append(rec)
                    if mask is not None:  # joins this transaction (re-entrant write lock)
                        self.commit(rec, mask, model_version=model_version)
                        summary.n_masks += 1
        return summary

    def export_lvit(self, out_dir: str | os.PathLike, only_labeled: bool = True) -> ExportSummary:
        """Write the project as an LViT split folder: ``img/`` (the images), ``labelcol/`` (the
        current masks, PNG 0/255, named ``<name>.png``) and ``text.csv`` (``Image`` = the mask
        file name, ``Description``).

        PNG/JPEG/BMP/TIFF images are copied as they are; other formats (DICOM, NIfTI) are
        written as TIFF with their pixel values. Volumes have no LViT form and are skipped
        (listed in the summary). ``only_labeled=False`` also writes unlabelled images (their
        table rows name the image file, as there is no mask).
        """
        out = Path(out_dir).expanduser().resolve()
        (out / "img").mkdir(parents=True, exist_ok=True)
        (out / "labelcol").mkdir(parents=True, exist_ok=True)
        summary = ExportSummary(out)
        latest = {}
        for c in (self._commit_record(r) for r in self._query("SELECT * FROM commits ORDER BY id")):
            latest[c.image_id] = c
        used: set[str] = set()
        rows: list[tuple[str, str]] = []
        for rec in self.images():
            c = latest.get(rec.id)
            if only_labeled and c is None:
                continue
            if rec.is_volume:
                summary.skipped.append(rec.name)
                continue
            stem = _safe_file_stem(rec.name)
            if stem.lower() in used:
                stem = f"{stem}-{rec.id}"
            used.add(stem.lower())
            suffix = _split_suffix(rec.path.name)[1].lower()
            if suffix in _COPY_AS_IS:
                atomic_copy(rec.path, out / "img" / f"{stem}{suffix}")
            else:
                import tifffile

                from ..data.io import read_image

                buf = io.BytesIO()
                tifffile.imwrite(buf, read_image(rec.path))
                atomic_write_bytes(out / "img" / f"{stem}.tif", buf.getvalue())
                suffix = ".tif"
            summary.n_images += 1
            text = (c.text if c is not None and c.text else rec.text) or ""
            if c is not None:
                mask_name = f"{stem}.png"
                atomic_write_bytes(out / "labelcol" / mask_name, encode_mask_png(c.load_mask()))
                summary.n_masks += 1
                rows.append((mask_name, text))
            else:
                rows.append((f"{stem}{suffix}", text))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["Image", "Description"])
        writer.writerows(rows)
        atomic_write_bytes(out / "text.csv", buf.getvalue().encode("utf-8"))
        return summary

"""Image-level labels in the text table (``Label`` / ``Lesion`` column)."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from src_models.data import SegmentationDataset
from src_models.data.dataset import DatasetError, read_label_table, scan_split


def _split(tmp_path, rows, header="Image,Description,Lesion"):
    (tmp_path / "img").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "img" / f"{name}.png")
    (tmp_path / "text.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return tmp_path


def test_label_values_and_missing_cells(tmp_path):
    d = _split(tmp_path, ["a.png,x,yes", "b.png,y,0", "c.png,z,"])
    assert read_label_table(d / "text.csv") == {"a.png": 1, "b.png": 0}
    recs = scan_split(d, require_masks=False)
    assert [r.label for r in recs] == [1, 0, None]
    assert SegmentationDataset(recs, 16).labels.tolist() == [1, 0, -1]


def test_no_label_column_and_bad_values(tmp_path):
    d = _split(tmp_path, ["a.png,x", "b.png,y"], header="Image,Description")
    assert read_label_table(d / "text.csv") == {}
    (d / "text.csv").write_text("Image,Description,Label\na.png,x,maybe\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="maybe"):
        read_label_table(d / "text.csv")


def test_volume_labels_per_slice(tmp_path):
    (tmp_path / "img").mkdir()
    vol = np.zeros((3, 16, 16), np.uint8)
    tifffile.imwrite(tmp_path / "img" / "v0.tif", vol, photometric="minisblack")
    tifffile.imwrite(tmp_path / "img" / "v1.tif", vol, photometric="minisblack")
    (tmp_path / "text.csv").write_text("Image,Description,Label\nv0.tif,,0\nv1.tif,,1\n")
    data = SegmentationDataset(scan_split(tmp_path, require_masks=False), 16)
    # "no lesion in the volume" holds for every slice; "lesion" does not say which slice
    assert data.labels.tolist() == [0, 0, 0, -1, -1, -1]

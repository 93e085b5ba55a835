"""LViT dataset folders: text tables, record scanning, the torch Dataset."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import openpyxl
import pytest
import tifffile
import torch
from PIL import Image

from src_models.data.dataset import (
    DatasetError,
    SegmentationDataset,
    collate,
    find_text_table,
    read_text_table,
    scan_split,
)


def _make_split(root, names, size=(20, 24), mask_prefix="", text_rows=None):
    (root / "img").mkdir(parents=True)
    (root / "labelcol").mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            root / "img" / f"{name}.png"
        )
        m = np.zeros(size, np.uint8)
        m[2:8, 3:9] = 255
        Image.fromarray(m).save(root / "labelcol" / f"{mask_prefix}{name}.png")
    return root


def _write_xlsx(path, rows, header=("Image", "Description")):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(list(header))
    for r in rows:
        ws.append(list(r))
    wb.save(path)


# ----------------------------------------------------------------- tables


def test_csv_table_found_and_read(qata_split):
    assert find_text_table(qata_split) == qata_split / "text.csv"
    table = read_text_table(qata_split / "text.csv")
    assert len(table) == 8 and table["synth_0000.png"].endswith("lung.")


def test_xlsx_inside_split_monuseg_style(tmp_path):
    d = _make_split(tmp_path / "Train_Folder", ["a", "b"])
    _write_xlsx(d / "Train_text.xlsx", [("a.png", " The nuclei are dense. "), ("b.png", "Sparse.")])
    assert find_text_table(d) == d / "Train_text.xlsx"
    recs = scan_split(d, require_text=True)
    assert [(r.name, r.text) for r in recs] == [("a", "The nuclei are dense."), ("b", "Sparse.")]


def test_qata_layout_mask_prefix_and_table_beside_folder(tmp_path):
    d = _make_split(tmp_path / "Val_Folder", ["covid_1", "covid_2"], mask_prefix="mask_")
    _write_xlsx(
        tmp_path / "Val_text.xlsx",
        [("mask_covid_1.png", "Left."), ("mask_covid_2.png", "Right.")],
        header=(" image ", "DESCRIPTION"),
    )
    assert find_text_table(d) == tmp_path / "Val_text.xlsx"
    recs = scan_split(d, require_text=True)
    assert [r.mask_path.name for r in recs] == ["mask_covid_1.png", "mask_covid_2.png"]
    assert [r.text for r in recs] == ["Left.", "Right."]


def test_table_keyed_by_image_name_without_suffix(tmp_path):
    d = _make_split(tmp_path / "S", ["x1"])
    (d / "text.csv").write_text("Image;Description\nx1;Some text\n", encoding="utf-8")
    assert scan_split(d, require_text=True)[0].text == "Some text"


def test_table_errors(tmp_path):
    d = _make_split(tmp_path / "S", ["a"])
    (d / "text.csv").write_text("Name,Text\na.png,hello\n")
    with pytest.raises(DatasetError, match="'Image' and 'Description'"):
        scan_split(d)
    (d / "text.csv").write_text("Image,Description\na.png,one\na.png,two\n")
    with pytest.raises(DatasetError, match="two different descriptions"):
        read_text_table(d / "text.csv")


def test_missing_text_row_is_an_error_when_required(tmp_path):
    d = _make_split(tmp_path / "S", ["a", "b"])
    (d / "text.csv").write_text("Image,Description\na.png,hello\n")
    assert [r.text for r in scan_split(d)] == ["hello", None]
    with pytest.raises(DatasetError, match=r"'b\.png'"):
        scan_split(d, require_text=True)


# ----------------------------------------------------------------- scanning errors


def test_image_without_mask_warns_with_its_name(tmp_path):
    d = _make_split(tmp_path / "S", ["a", "b"])
    (d / "labelcol" / "b.png").unlink()
    with pytest.warns(UserWarning, match=r"b\.png"):
        recs = scan_split(d)
    assert [r.name for r in recs] == ["a"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recs = scan_split(d, require_masks=False)
    assert [r.mask_path is None for r in recs] == [False, True]


def test_mismatched_mask_size(tmp_path):
    d = _make_split(tmp_path / "S", ["a"])
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(d / "labelcol" / "a.png")
    with pytest.raises(DatasetError, match=r"a\.png.*\(5, 5\)"):
        scan_split(d)
    with pytest.raises(DatasetError, match="size"):
        SegmentationDataset(scan_split(d, check_sizes=False), 16)


def test_corrupt_image_and_empty_split(tmp_path):
    d = _make_split(tmp_path / "S", ["a"])
    (d / "img" / "a.png").write_bytes(b"\x89PNG garbage" * 10)
    with pytest.raises(DatasetError, match=r"a\.png"):
        SegmentationDataset(d, 16)
    empty = tmp_path / "E"
    (empty / "img").mkdir(parents=True)
    (empty / "labelcol").mkdir()
    with pytest.raises(DatasetError, match="No images"):
        scan_split(empty)
    with pytest.raises(DatasetError, match="no 'img'"):
        scan_split(tmp_path)


# ----------------------------------------------------------------- dataset


def test_dataset_items(qata_split):
    ds = SegmentationDataset(qata_split, 32)
    assert len(ds) == 8 and len(ds.texts) == 8 and all(ds.texts)
    item = ds[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0
    assert item["mask"].shape == (1, 32, 32) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0} and item["mask"].sum() > 0
    assert item["name"] == "synth_0003" and item["index"] == 3 and item["text"] == ds.texts[3]
    assert ds.spatial_text  # QaTa texts name sides
    assert ds.original_shapes[0] == (64, 64)
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 1, 32, 32)
    assert batch["text"] == ds.texts[:2] and batch["index"].tolist() == [0, 1]
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    assert next(iter(loader))["image"].shape == (4, 3, 32, 32)


def test_set_epoch_reproducible_augmentation(qata_split):
    ds = SegmentationDataset(qata_split, 32, augment=True, spatial_text=False, seed=3)
    first = [ds[i]["mask"].clone() for i in range(len(ds))]
    again = [ds[i]["mask"] for i in range(len(ds))]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    ds.set_epoch(1)
    epoch1 = [ds[i]["mask"] for i in range(len(ds))]
    assert not all(torch.equal(a, b) for a, b in zip(first, epoch1, strict=True))
    other = SegmentationDataset(qata_split, 32, augment=True, spatial_text=False, seed=3)
    other.set_epoch(1)  # a fresh dataset resumed at epoch 1 sees the same augmentations
    assert all(torch.equal(other[i]["mask"], epoch1[i]) for i in range(len(ds)))
    for i in range(len(ds)):
        item = ds[i]
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0


def test_spatial_text_auto(tmp_path, referring_split):
    assert SegmentationDataset(referring_split, 32).spatial_text
    d = _make_split(tmp_path / "S", ["a"])
    (d / "text.csv").write_text("Image,Description\na.png,The nuclei are evenly distributed.\n")
    assert not SegmentationDataset(d, 16).spatial_text
    assert SegmentationDataset(d, 16, spatial_text=True).spatial_text


def test_unlabeled_records_and_gray_input(tmp_path):
    d = _make_split(tmp_path / "S", ["a", "b"])
    (d / "labelcol" / "b.png").unlink()
    ds = SegmentationDataset(d, 16, in_chans=1, require_masks=False)
    assert ds[0]["image"].shape == (1, 16, 16)
    assert ds[0]["has_mask"] and not ds[1]["has_mask"] and ds[1]["mask"].sum() == 0
    assert ds[1]["text"] == ""
    assert collate([ds[0], ds[1]])["has_mask"].tolist() == [True, False]


def test_volumes_become_slices(tmp_path):
    d = tmp_path / "V"
    (d / "img").mkdir(parents=True)
    (d / "labelcol").mkdir()
    vol = np.zeros((3, 20, 20), np.uint16)
    vol[1], vol[2] = 3000, 1500  # constant slices: per-slice min-max would make them all 0
    lab = np.zeros((3, 20, 20), np.uint8)
    lab[1, 5:10, 5:10] = 255
    tifffile.imwrite(d / "img" / "ct.tif", vol, photometric="minisblack")
    tifffile.imwrite(d / "labelcol" / "ct.tif", lab, photometric="minisblack")
    ds = SegmentationDataset(d, 16)
    assert len(ds) == 3 and ds.names == ["ct_z000", "ct_z001", "ct_z002"]
    assert [bool(ds[i]["mask"].any()) for i in range(3)] == [False, True, False]
    # One intensity scale for the whole volume.
    means = [float(ds[i]["image"].mean()) for i in range(3)]
    np.testing.assert_allclose(means, [0.0, 1.0, 0.5], atol=0.01)


def test_real_layout_copy_not_needed(tmp_path, qata_split):
    # Records can be passed directly, e.g. a subset for few-label experiments.
    recs = scan_split(qata_split)[:3]
    ds = SegmentationDataset(recs, 24)
    assert len(ds) == 3 and ds.root is None
    shutil.rmtree(tmp_path, ignore_errors=True)

"""Label writers: NIfTI round trip keeps the affine, DICOM SEG read back by highdicom,
TIFF/PNG, TIFF resolution tags, atomic and never over an input; ``napari-lvit export``."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from src_models.data.dicom import write_dicom_series  # noqa: E402
from src_models.data.io import load_image  # noqa: E402
from src_models.data.writers import write_dicom_seg, write_labels, write_nifti  # noqa: E402
from src_models.errors import UserError  # noqa: E402


def _ct(shape=(5, 32, 40), seed=0):
    return np.random.default_rng(seed).integers(0, 3000, shape).astype(np.uint16)


@pytest.mark.parametrize(
    "ras",
    [
        np.array([[0.7, 0, 0, -50.0], [0, 0.7, 0, 30.0], [0, 0, 5.0, 12.5], [0, 0, 0, 1]]),  # RAS
        np.array([[-0.8, 0, 0, 60.0], [0, -0.8, 0, 70.0], [0, 0, 3.0, -9.0], [0, 0, 0, 1]]),  # LPS
        np.array(  # oblique
            [[0.6, -0.3, 0, 1.0], [0.3, 0.6, 0, 2.0], [0, 0, 4.0, 3.0], [0, 0, 0, 1]]
        ),
    ],
    ids=["ras", "lps", "oblique"],
)
def test_nifti_round_trip_keeps_the_affine(tmp_path, ras):
    vol = np.random.default_rng(1).normal(size=(24, 20, 6)).astype(np.float32)  # x, y, z
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol, ras), src)
    loaded = load_image(src)
    assert loaded.data.shape == (6, 20, 24) and loaded.affine is not None
    mask = (loaded.data > 0.5).astype(np.uint8)  # "segment"
    out = write_nifti(tmp_path / "mask.nii.gz", mask, loaded.affine, inputs=[src])
    back = load_image(out)
    np.testing.assert_array_equal(back.data, mask)
    np.testing.assert_allclose(back.affine, loaded.affine, atol=1e-5)
    # every marked voxel is at the same place in the scanner (RAS) in both files
    idx_src = np.argwhere(vol > 0.5)
    world_src = (ras @ np.c_[idx_src, np.ones(len(idx_src))].T)[:3].T
    written = nib.load(out)
    idx_out = np.argwhere(np.asanyarray(written.dataobj) != 0)
    world_out = (written.affine @ np.c_[idx_out, np.ones(len(idx_out))].T)[:3].T
    key = lambda w: np.round(w, 3).tolist()  # noqa: E731
    assert sorted(map(tuple, key(world_src))) == sorted(map(tuple, key(world_out)))


def test_nifti_of_a_dicom_series_sits_on_the_series(tmp_path):
    write_dicom_series(tmp_path / "ct", _ct(), spacing=(5.0, 0.7, 0.7), origin=(-10, 20, 30))
    loaded = load_image(tmp_path / "ct")
    mask = np.zeros(loaded.data.shape, dtype=bool)
    mask[2, 3, 4] = True
    out = write_labels(tmp_path / "m.nii", mask, affine=loaded.affine)
    img = nib.load(out)
    [(i, j, k)] = np.argwhere(np.asanyarray(img.dataobj))
    ras = img.affine @ [i, j, k, 1]
    lps = (-10 + 4 * 0.7, 20 + 3 * 0.7, 30 + 2 * 5.0)
    assert ras[:3] == pytest.approx([-lps[0], -lps[1], lps[2]])
    assert int(img.header["sform_code"]) == 1


def test_dicom_seg_is_read_back_by_highdicom(tmp_path):
    hd = pytest.importorskip("highdicom")
    files = write_dicom_series(tmp_path / "ct", _ct(), spacing=(5.0, 0.7, 0.7))
    loaded = load_image(tmp_path / "ct")
    mask = np.zeros(loaded.data.shape, dtype=np.uint8)
    mask[1, 4:12, 5:20] = 1
    mask[3, 10:20, 10:30] = 2
    out = write_dicom_seg(tmp_path / "seg.dcm", mask, loaded.source_files)
    seg = hd.seg.segread(out)
    assert seg.Modality == "SEG"
    assert list(seg.get_segment_numbers()) == [1, 2]
    ref_series = seg.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == loaded.meta["series_uid"]
    referenced = {i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence}
    assert referenced == set(loaded.meta["sop_instance_uids"])
    uids = loaded.meta["sop_instance_uids"]  # slice order
    assert uids == [str(__import__("pydicom").dcmread(f).SOPInstanceUID) for f in files]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2], ignore_spatial_locations=True
    )
    assert pixels.shape == (5, 32, 40, 2)
    np.testing.assert_array_equal(pixels[..., 0], mask == 1)
    np.testing.assert_array_equal(pixels[..., 1], mask == 2)


def test_dicom_seg_refuses_what_does_not_fit(tmp_path):
    write_dicom_series(tmp_path / "ct", _ct())
    loaded = load_image(tmp_path / "ct")
    with pytest.raises(UserError, match="do not fit"):
        write_dicom_seg(tmp_path / "a.dcm", np.ones((2, 32, 40), bool), loaded.source_files)
    with pytest.raises(UserError, match="empty"):
        write_dicom_seg(tmp_path / "b.dcm", np.zeros((5, 32, 40), bool), loaded.source_files)
    with pytest.raises(UserError, match="input"):
        write_dicom_seg(loaded.source_files[0], np.ones((5, 32, 40), bool), loaded.source_files)
    with pytest.raises(UserError, match="no DICOM source"):
        write_labels(tmp_path / "c.dcm", np.ones((5, 32, 40), bool))


def test_png_tiff_labels_and_no_overwrite(tmp_path):
    labels = np.zeros((16, 20), dtype=np.uint8)
    labels[2:5, 3:9] = 1
    labels[8:10, 1:4] = 3
    for name in ("l.png", "l.tif"):
        out = write_labels(tmp_path / name, labels)
        np.testing.assert_array_equal(load_image(out).data, labels)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left
    src = tmp_path / "image.tif"
    src.write_bytes(b"original")
    with pytest.raises(UserError, match="input"):
        write_labels(src, labels, inputs=[src])
    assert src.read_bytes() == b"original"
    with pytest.raises(ValueError, match="2D"):
        write_labels(tmp_path / "v.png", np.zeros((2, 4, 4), np.uint8))


def test_tiff_resolution_tags_give_the_spacing(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    img = np.zeros((10, 12), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", img, resolution=(20.0, 40.0), resolutionunit="CENTIMETER")
    assert load_image(tmp_path / "a.tif").spacing == pytest.approx((0.25, 0.5))  # (y, x) mm
    tifffile.imwrite(tmp_path / "b.tif", img)
    assert load_image(tmp_path / "b.tif").spacing is None
    vol = np.zeros((3, 10, 12), dtype=np.uint8)
    tifffile.imwrite(
        tmp_path / "v.tif",
        vol,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"spacing": 4.0, "unit": "um", "axes": "ZYX"},
    )
    assert load_image(tmp_path / "v.tif").spacing == pytest.approx((0.004, 0.0005, 0.0005))


def test_export_command_writes_nifti_and_dicom_seg(tmp_path, capsys):
    pytest.importorskip("highdicom")
    from src_models.cli import main
    from src_models.project import Project

    write_dicom_series(tmp_path / "ct", _ct(), spacing=(5.0, 0.7, 0.7), origin=(1, 2, 3))
    flat = tmp_path / "flat.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 40), np.uint8)).save(flat)
    mask = np.zeros((5, 32, 40), dtype=bool)
    mask[2, 5:9, 6:12] = True
    with Project.create(tmp_path / "proj") as project:
        project.commit(project.add_image(tmp_path / "ct", text="nodule"), mask)
        project.commit(project.add_image(flat, text="x"), np.ones((32, 40), bool))
    assert main(["export", str(tmp_path / "proj"), "--format", "nifti", str(tmp_path / "n")]) == 0
    assert "exported 2 mask(s)" in capsys.readouterr().out
    back = load_image(tmp_path / "n" / "ct.nii.gz")
    np.testing.assert_array_equal(back.data, mask)
    np.testing.assert_allclose(back.affine, load_image(tmp_path / "ct").affine, atol=1e-5)
    assert (
        main(["export", str(tmp_path / "proj"), "--format", "dicom-seg", str(tmp_path / "d")]) == 0
    )
    out = capsys.readouterr().out
    assert "exported 1 mask(s)" in out and "flat (not a DICOM image)" in out
    assert (tmp_path / "d" / "ct.dcm").is_file()
    assert main(["export", str(tmp_path / "proj"), "--format", "lvit", str(tmp_path / "l")]) == 0
    out = capsys.readouterr().out
    assert "exported 1 mask(s)" in out and (tmp_path / "l" / "labelcol" / "flat.png").is_file()

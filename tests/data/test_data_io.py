"""Image I/O: round trips for every format, conversions and clear errors."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from src_models.data.io import (
    IMAGE_SUFFIXES,
    ImageReadError,
    load_image,
    probe_image,
    read_image,
    read_mask,
    to_float01,
    write_mask,
)

RNG = np.random.default_rng(0)


def _write_dicom(path, pixels, *, slope=None, intercept=None, photometric="MONOCHROME2"):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "Test^Synthetic"
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


# ----------------------------------------------------------------- round trips


def test_png_roundtrip_gray_rgb_and_16bit(tmp_path):
    gray = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    rgb = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    g16 = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgb)
    out16 = read_image(tmp_path / "g16.png")
    assert out16.dtype == np.uint16
    np.testing.assert_array_equal(out16, g16)
    loaded = load_image(tmp_path / "c.png")
    assert loaded.rgb and not loaded.is_volume and loaded.spatial_shape == (20, 30)


def test_jpeg_and_bmp_read(tmp_path):
    rgb = np.full((16, 16, 3), 120, dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg")
    Image.fromarray(rgb).save(tmp_path / "a.bmp")
    assert read_image(tmp_path / "a.jpg").shape == (16, 16, 3)
    np.testing.assert_array_equal(read_image(tmp_path / "a.bmp"), rgb)


def test_tiff_single_and_multipage(tmp_path):
    img = RNG.integers(0, 4000, (12, 14), dtype=np.uint16)
    vol = RNG.integers(0, 4000, (5, 12, 14), dtype=np.uint16)
    rgbvol = RNG.integers(0, 256, (3, 12, 14, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", img)
    tifffile.imwrite(tmp_path / "v.tiff", vol)
    tifffile.imwrite(tmp_path / "c.tif", rgbvol, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), img)
    loaded = load_image(tmp_path / "v.tiff")
    assert loaded.is_volume and not loaded.rgb
    np.testing.assert_array_equal(loaded.data, vol)
    c = load_image(tmp_path / "c.tif")
    assert c.is_volume and c.rgb and c.data.shape == (3, 12, 14, 3)
    np.testing.assert_array_equal(c.data, rgbvol)
    assert probe_image(tmp_path / "v.tiff") == ((5, 12, 14), False)


def test_dicom_rescale_slope_intercept(tmp_path):
    pix = np.array([[0, 1, 2, 3], [100, 200, 300, 400], [512, 1024, 2048, 4095]], np.uint16)
    path = tmp_path / "ct.dcm"
    _write_dicom(path, pix, slope=2, intercept=-1024)
    out = read_image(path)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_allclose(out, pix.astype(np.float32) * 2 - 1024)
    assert probe_image(path) == ((3, 4), False)


def test_dicom_without_rescale_keeps_dtype_and_multiframe(tmp_path):
    vol = RNG.integers(0, 1000, (3, 6, 5)).astype(np.uint16)
    path = tmp_path / "mf.dcm"
    _write_dicom(path, vol)
    loaded = load_image(path)
    assert loaded.is_volume and loaded.data.dtype == np.uint16
    np.testing.assert_array_equal(loaded.data, vol)


def test_dicom_monochrome1_is_inverted(tmp_path):
    pix = np.array([[0, 10], [20, 30]], np.uint16)
    path = tmp_path / "m1.dcm"
    _write_dicom(path, pix, photometric="MONOCHROME1")
    out = read_image(path)
    np.testing.assert_array_equal(out, [[30, 20], [10, 0]])


def test_dicom_without_suffix_is_detected(tmp_path):
    pix = np.arange(12, dtype=np.uint16).reshape(3, 4)
    path = tmp_path / "IM0001"
    _write_dicom(path, pix)
    np.testing.assert_array_equal(read_image(path), pix)


def test_nifti_2d_and_3d(tmp_path):
    data3 = RNG.standard_normal((4, 3, 2)).astype(np.float32)  # X, Y, Z
    # LPS-ordered storage: no flips, only the transpose to [Z, Y, X].
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(data3, lps), tmp_path / "v.nii.gz")
    vol = read_image(tmp_path / "v.nii.gz")
    assert vol.shape == (2, 3, 4) and vol.dtype == np.float32
    for z in range(2):
        np.testing.assert_array_equal(vol[z], data3[:, :, z].T)
    # RAS storage: flipped into radiological display (patient's right on the image left).
    nib.save(nib.Nifti1Image(data3, np.eye(4)), tmp_path / "ras.nii")
    ras = read_image(tmp_path / "ras.nii")
    for z in range(2):
        np.testing.assert_array_equal(ras[z], data3[::-1, ::-1, z].T)
    data2 = RNG.integers(0, 100, (5, 7)).astype(np.int16)
    nib.save(nib.Nifti1Image(data2, lps), tmp_path / "s.nii")
    img2 = load_image(tmp_path / "s.nii")
    assert not img2.is_volume and img2.data.shape == (7, 5) and img2.data.dtype == np.int16
    np.testing.assert_array_equal(img2.data, data2.T)
    assert probe_image(tmp_path / "v.nii.gz") == ((2, 3, 4), False)


# ----------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist") as info:
        read_image(tmp_path / "nope.png")
    assert "nope.png" in str(info.value)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".dcm", ".nii.gz"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert f"bad{suffix}" in str(info.value)


def test_truncated_png(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="t.png"):
        read_image(tmp_path / "t.png")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(ImageReadError, match="unsupported file type '.gif'"):
        read_image(tmp_path / "a.gif")


def test_zero_size_and_too_large(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((0, 4), np.float32), np.eye(4)), tmp_path / "e.nii")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "e.nii")
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="limit"):
        read_image(tmp_path / "big.png", max_pixels=1000)
    assert read_image(tmp_path / "big.png", max_pixels=None).shape == (40, 50)


def test_suffix_list():
    assert ".png" in IMAGE_SUFFIXES and ".nii.gz" in IMAGE_SUFFIXES and ".dcm" in IMAGE_SUFFIXES


# ----------------------------------------------------------------- masks


def test_read_mask_variants(tmp_path):
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:7] = 1
    Image.fromarray(m).save(tmp_path / "m01.png")
    Image.fromarray(m * 255).save(tmp_path / "m255.png")
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[2:5, 3:7, 1] = 255  # green only
    Image.fromarray(rgb).save(tmp_path / "mrgb.png")
    for name in ("m01.png", "m255.png", "mrgb.png"):
        out = read_mask(tmp_path / name)
        assert out.dtype == bool and out.shape == (10, 12)
        np.testing.assert_array_equal(out, m > 0)
    # not 0/1 or 0/255: refused with the values found, or read with an explicit threshold
    rgb[2:5, 3:7, 1] = 200
    Image.fromarray(rgb).save(tmp_path / "m200.png")
    with pytest.raises(ValueError, match="the mask holds the values 0, 200"):
        read_mask(tmp_path / "m200.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m200.png", threshold=0), m > 0)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
def test_write_mask_roundtrip_atomic(tmp_path, suffix):
    m = RNG.random((9, 11)) > 0.5
    path = tmp_path / "sub" / f"mask{suffix}"
    write_mask(path, m)
    raw = read_image(path)
    assert raw.dtype == np.uint8 and set(np.unique(raw)) <= {0, 255}
    np.testing.assert_array_equal(read_mask(path), m)
    write_mask(path, ~m)  # overwrite in place
    np.testing.assert_array_equal(read_mask(path), ~m)
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temp files left behind


def test_write_mask_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match="unsupported suffix"):
        write_mask(tmp_path / "m.jpg", np.zeros((4, 4), bool))
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------- to_float01


def test_to_float01_uint8_gray_and_rgb():
    g = np.array([[0, 255], [51, 102]], np.uint8)
    out = to_float01(g)
    assert out.dtype == np.float32 and out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[..., 0], g / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    rgb = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    np.testing.assert_allclose(to_float01(rgb), rgb / 255.0, rtol=1e-6)
    assert to_float01(g[..., None]).shape == (2, 2, 3)


def test_to_float01_uint16_and_float_minmax():
    u = np.array([[1000, 2000], [3000, 5000]], np.uint16)
    out = to_float01(u)
    np.testing.assert_allclose(out[..., 1], [[0, 0.25], [0.5, 1.0]], atol=1e-6)
    f = np.array([[-1024.0, 0.0], [976.0, 976.0]], np.float32)
    np.testing.assert_allclose(to_float01(f)[..., 0], [[0, 0.512], [1, 1]], atol=1e-6)
    ranged = to_float01(f, value_range=(-1024.0, 0.0))
    np.testing.assert_allclose(ranged[..., 0], [[0, 1], [1, 1]], atol=1e-6)


def test_to_float01_rgba_constant_bool():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 7
    out = to_float01(rgba)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[..., 0], 1.0)
    np.testing.assert_array_equal(out[..., 1:], 0.0)
    const = np.full((4, 4), 1234, np.uint16)
    np.testing.assert_array_equal(to_float01(const), np.zeros((4, 4, 3), np.float32))
    np.testing.assert_array_equal(to_float01(np.eye(3, dtype=bool))[..., 0], np.eye(3))


def test_to_float01_rejects_nan_and_bad_shapes():
    bad = np.ones((3, 3), np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        to_float01(bad)
    bad[1, 1] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        to_float01(bad)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        to_float01(np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        to_float01(np.zeros(5, np.uint8))

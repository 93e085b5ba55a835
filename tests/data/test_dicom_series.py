"""DICOM series reading: grouping, sorting along the normal, rescale, geometry, multi-frame,
compressed transfer syntaxes, and the error for what cannot be decoded."""

from __future__ import annotations

import random

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from src_models.data.dicom import dicom_series, load_dicom_series, write_dicom_series  # noqa: E402
from src_models.data.io import ImageReadError, load_image, probe_image  # noqa: E402
from src_models.errors import UserError  # noqa: E402

SPACING = (5.0, 0.7, 0.7)  # slice, row, column (mm)
ORIGIN = (-120.0, -80.5, 40.0)  # LPS x, y, z of the first slice


def _volume(shape=(6, 32, 40), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3000, shape).astype(np.uint16)


def _shuffled_names(n: int, seed: int, prefix: str = "IM") -> list[str]:
    numbers = random.Random(seed).sample(range(1000), n)
    return [f"{prefix}{k:04d}.dcm" for k in numbers]  # name order is not slice order


@pytest.fixture
def two_series(tmp_path):
    folder = tmp_path / "study"
    ct, mr = _volume(seed=1), _volume((4, 32, 32), seed=2)
    write_dicom_series(
        folder,
        ct,
        spacing=SPACING,
        origin=ORIGIN,
        series_number=2,
        description="CT chest",
        file_names=_shuffled_names(len(ct), 0, "A"),
    )
    write_dicom_series(
        folder,
        mr,
        spacing=(3.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        rescale=(2.0, 0.0),
        series_number=5,
        description="second",
        file_names=_shuffled_names(len(mr), 1, "B"),
    )
    return folder, ct, mr


def test_folder_with_two_series_gives_one_volume_each(two_series):
    folder, ct, mr = two_series
    found = dicom_series(folder)
    assert [s.description for s in found] == ["CT chest", "second"]
    a, b = load_dicom_series(folder)
    # sorted by position along the normal, rescale slope/intercept applied
    np.testing.assert_array_equal(a.data, ct.astype(np.float32) - 1024)
    np.testing.assert_array_equal(b.data, mr.astype(np.float32) * 2)
    assert a.is_volume and a.data.shape == (6, 32, 40)
    assert a.spacing == pytest.approx(SPACING)
    assert a.origin == pytest.approx(ORIGIN[::-1])  # napari order (z, y, x)
    assert a.axis_aligned
    assert b.spacing == pytest.approx((3.0, 1.0, 1.0))
    assert a.meta["series_uid"] != b.meta["series_uid"]
    assert len(a.source_files) == 6 and len(a.meta["sop_instance_uids"]) == 6
    # the affine maps voxel (k, i, j) to (z, y, x) = origin + (5k, 0.7i, 0.7j)
    world = a.affine @ np.array([2, 3, 4, 1.0])
    assert world[:3] == pytest.approx([ORIGIN[2] + 10, ORIGIN[1] + 2.1, ORIGIN[0] + 2.8])


def test_load_image_reads_a_single_series_folder_and_refuses_two(two_series, tmp_path):
    folder, ct, _ = two_series
    with pytest.raises(ImageReadError, match="2 DICOM series"):
        load_image(folder)
    one = tmp_path / "one"
    write_dicom_series(one, ct, spacing=SPACING, file_names=_shuffled_names(6, 3))
    loaded = load_image(one)
    np.testing.assert_array_equal(loaded.data, ct.astype(np.float32) - 1024)
    assert probe_image(one) == ((6, 32, 40), False)
    # a list of the files is a series too
    files = sorted(one.iterdir(), reverse=True)
    [again] = load_dicom_series(files)
    np.testing.assert_array_equal(again.data, loaded.data)


def test_oblique_series_keeps_its_direction(tmp_path):
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    iop = (c, s, 0.0, -s, c, 0.0)  # rotated about the patient z axis
    vol = _volume((3, 32, 32))
    write_dicom_series(tmp_path / "obl", vol, spacing=(2.0, 0.5, 0.5), orientation=iop)
    loaded = load_image(tmp_path / "obl")
    assert not loaded.axis_aligned
    # voxel (k, i, j) lies at origin + j*0.5*row + i*0.5*col + k*2*normal (LPS); world reversed
    k, i, j = 2, 5, 7
    lps = j * 0.5 * np.array(iop[:3]) + i * 0.5 * np.array(iop[3:]) + k * 2.0 * np.array([0, 0, 1])
    world = loaded.affine @ np.array([k, i, j, 1.0])
    assert world[:3] == pytest.approx(lps[::-1])


def test_multiframe_file_sorted_by_frame_position(tmp_path):
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    vol = _volume((4, 32, 32))
    order = [2, 0, 3, 1]  # frame f is slice order[f]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "mf.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 32
    ds.NumberOfFrames = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    shared = Dataset()
    measures, orient, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [0.7, 0.7]
    measures.SliceThickness = 5.0
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    transform.RescaleSlope, transform.RescaleIntercept = 1, -1024
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for f in range(4):
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [10.0, 20.0, 30.0 + 5.0 * order[f]]
        item.PlanePositionSequence = Sequence([pos])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.ascontiguousarray(vol[order]).tobytes()
    ds.save_as(tmp_path / "mf.dcm", enforce_file_format=True)

    loaded = load_image(tmp_path / "mf.dcm")
    np.testing.assert_array_equal(loaded.data, vol.astype(np.float32) - 1024)
    assert loaded.spacing == pytest.approx((5.0, 0.7, 0.7))
    assert loaded.origin == pytest.approx((30.0, 20.0, 10.0))
    assert loaded.meta["frame_order"] == list(np.argsort(order))


def _compressors():
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    return [RLELossless, JPEGLSLossless, JPEG2000Lossless]


@pytest.mark.parametrize("syntax", _compressors(), ids=lambda uid: uid.name.split()[0])
def test_compressed_series_decodes_to_its_uncompressed_twin(tmp_path, syntax):
    vol = _volume((3, 32, 40))
    write_dicom_series(tmp_path / "plain", vol, spacing=SPACING)
    try:
        write_dicom_series(tmp_path / "packed", vol, spacing=SPACING, transfer_syntax=syntax)
    except (RuntimeError, NotImplementedError) as exc:  # no encoder installed for it
        pytest.skip(f"cannot encode {syntax.name} here: {exc}")
    packed = pydicom.dcmread(next((tmp_path / "packed").iterdir()), stop_before_pixels=True)
    assert packed.file_meta.TransferSyntaxUID == syntax
    plain, decoded = load_image(tmp_path / "plain"), load_image(tmp_path / "packed")
    np.testing.assert_array_equal(decoded.data, plain.data)
    assert decoded.spacing == plain.spacing


def test_undecodable_transfer_syntax_is_one_line_naming_it(tmp_path):
    from pydicom.encaps import encapsulate

    [path] = write_dicom_series(tmp_path / "s", _volume((1, 32, 32)))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: no decoder
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    with pytest.raises(UserError) as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert "MPEG2" in message and "1.2.840.10008.1.2.4.100" in message

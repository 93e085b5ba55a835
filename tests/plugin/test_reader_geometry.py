"""The napari reader places DICOM series and NIfTI volumes in millimetres (scale, translate,
affine), one layer per series; the Labels writer saves NIfTI on the scan and DICOM SEG."""

from __future__ import annotations

import random

import numpy as np
import pytest

pytest.importorskip("pydicom")

from napari_lvit._reader import napari_get_reader  # noqa: E402
from napari_lvit._writer import write_labels  # noqa: E402
from src_models.data.dicom import write_dicom_series  # noqa: E402
from src_models.data.io import load_image  # noqa: E402


def _ct(shape, seed):
    return np.random.default_rng(seed).integers(0, 3000, shape).astype(np.uint16)


def _names(n, seed, prefix):
    return [f"{prefix}{k:03d}.dcm" for k in random.Random(seed).sample(range(500), n)]


@pytest.fixture
def study(tmp_path):
    folder = tmp_path / "study"
    ct = _ct((6, 32, 40), 0)
    write_dicom_series(
        folder,
        ct,
        spacing=(5.0, 0.7, 0.7),
        origin=(-100.0, -50.0, 20.0),
        series_number=3,
        description="CT",
        file_names=_names(6, 0, "x"),
    )
    write_dicom_series(
        folder,
        _ct((3, 32, 32), 1),
        series_number=4,
        description="scout",
        file_names=_names(3, 1, "y"),
    )
    return folder, ct


def test_dicom_folder_gives_one_layer_per_series_in_mm(study):
    folder, ct = study
    reader = napari_get_reader(str(folder))
    assert reader is not None
    first, second = reader(str(folder))
    data, kwargs, kind = first
    assert kind == "image" and data.shape == (6, 32, 40)
    np.testing.assert_array_equal(data, ct.astype(np.float32) - 1024)
    assert kwargs["scale"] == pytest.approx((5.0, 0.7, 0.7))
    assert kwargs["translate"] == pytest.approx((20.0, -50.0, -100.0))
    assert "affine" not in kwargs  # axis-aligned: scale and translate suffice
    assert kwargs["name"] == "study [3 CT]" and second[1]["name"] == "study [4 scout]"
    meta = kwargs["metadata"]
    assert len(meta["dicom_files"]) == 6 and meta["series_uid"]
    assert second[0].shape == (3, 32, 32) and second[1]["scale"] == pytest.approx((1, 1, 1))


def test_reader_declines_a_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert napari_get_reader(str(tmp_path)) is None


def test_oblique_series_gets_an_affine_that_places_each_voxel(tmp_path):
    from napari.layers import Image

    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    iop = (c, s, 0.0, -s, c, 0.0)
    origin = np.array([5.0, -7.0, 11.0])
    write_dicom_series(
        tmp_path / "o", _ct((3, 32, 32), 2), spacing=(2.0, 0.5, 0.5), origin=origin, orientation=iop
    )
    [(data, kwargs, _)] = napari_get_reader(str(tmp_path / "o"))(str(tmp_path / "o"))
    assert "affine" in kwargs
    layer = Image(data, **{k: v for k, v in kwargs.items() if k != "name"})
    k, i, j = 2, 9, 4
    lps = (
        origin
        + j * 0.5 * np.array(iop[:3])
        + i * 0.5 * np.array(iop[3:])
        + k * 2.0 * np.array([0, 0, 1.0])
    )
    assert np.asarray(layer.data_to_world((k, i, j))) == pytest.approx(lps[::-1], abs=1e-6)


def test_labels_writer_nifti_on_the_scan_and_dicom_seg(study, tmp_path):
    hd = pytest.importorskip("highdicom")
    from napari.layers import Image, Labels

    folder, _ = study
    [(data, kwargs, _), _] = napari_get_reader(str(folder))(str(folder))
    image = Image(data, **kwargs)
    mask = np.zeros(data.shape, dtype=np.uint8)
    mask[2, 4:10, 5:15] = 1
    # as the segmentation widget makes it: the image's transform and source metadata
    labels = Labels(
        mask,
        scale=image.scale,
        translate=image.translate,
        affine=image.affine,
        metadata=image.metadata,
    )
    layer_data, attributes, _ = labels.as_layer_data_tuple()
    [nii] = write_labels(str(tmp_path / "mask.nii.gz"), layer_data, attributes)
    back = load_image(nii)
    np.testing.assert_array_equal(back.data, mask)
    np.testing.assert_allclose(back.affine, np.asarray(kwargs["metadata"]["affine"]), atol=1e-6)
    assert back.spacing == pytest.approx((5.0, 0.7, 0.7))
    assert back.origin == pytest.approx((20.0, -50.0, -100.0))
    # a Labels layer left at the identity still gets the source geometry from its metadata
    bare = Labels(mask, metadata=image.metadata).as_layer_data_tuple()
    [nii2] = write_labels(str(tmp_path / "bare.nii.gz"), bare[0], bare[1])
    np.testing.assert_allclose(load_image(nii2).affine, back.affine, atol=1e-6)
    [seg_path] = write_labels(str(tmp_path / "mask.dcm"), layer_data, attributes)
    seg = hd.seg.segread(seg_path)
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == image.metadata["series_uid"]
    assert len(ref.ReferencedInstanceSequence) == 6


def test_labels_writer_refuses_dicom_seg_without_a_dicom_source(tmp_path):
    from napari.layers import Labels

    from src_models.errors import UserError

    data, attributes, _ = Labels(np.ones((2, 8, 8), np.uint8)).as_layer_data_tuple()
    with pytest.raises(UserError, match="no DICOM source"):
        write_labels(str(tmp_path / "x.dcm"), data, attributes)
    [out] = write_labels(str(tmp_path / "x.tif"), data, attributes)
    np.testing.assert_array_equal(load_image(out).data, np.ones((2, 8, 8)))


def test_open_in_napari_propose_and_save_through_the_plugin(make_napari_viewer, study, tmp_path):
    """End to end in a viewer: open the folder with the plugin (two layers in mm), the Segment
    widget's proposal layer copies the geometry and source, and File > Save with the plugin's
    writer gives a NIfTI on the scan and a DICOM SEG of the series."""
    hd = pytest.importorskip("highdicom")
    from napari_lvit._widget import SegmentWidget

    folder, _ = study
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="napari-lvit")
    assert [layer.name for layer in layers] == ["study [3 CT]", "study [4 scout]"]
    ct = layers[0]
    assert tuple(ct.scale) == pytest.approx((5.0, 0.7, 0.7))
    assert tuple(ct.translate) == pytest.approx((20.0, -50.0, -100.0))
    widget = SegmentWidget(viewer)
    labels = widget.proposal_layer(ct)
    assert tuple(labels.scale) == pytest.approx(tuple(ct.scale))
    assert labels.metadata["dicom_files"] == ct.metadata["dicom_files"]
    labels.data[1, 3:8, 4:9] = 1
    viewer.layers.selection.active = labels
    [nii] = viewer.layers.save(str(tmp_path / "out.nii.gz"), selected=True, plugin="napari-lvit")
    back = load_image(nii)
    np.testing.assert_array_equal(back.data, labels.data)
    np.testing.assert_allclose(back.affine, np.asarray(ct.metadata["affine"]), atol=1e-6)
    [seg] = viewer.layers.save(str(tmp_path / "out.dcm"), selected=True, plugin="napari-lvit")
    assert (
        hd.seg.segread(seg).ReferencedSeriesSequence[0].SeriesInstanceUID
        == (ct.metadata["series_uid"])
    )

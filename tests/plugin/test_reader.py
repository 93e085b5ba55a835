import numpy as np
import pytest

from napari_lvit._reader import napari_get_reader


def test_reader_opens_png_with_its_description(tmp_path):
    from skimage.io import imsave

    path = tmp_path / "xray.png"
    imsave(path, (np.arange(64 * 48) % 256).astype(np.uint8).reshape(64, 48))
    (tmp_path / "xray.png.txt").write_text("Lesion in the upper right lung.\n")
    reader = napari_get_reader(str(path))
    assert reader is not None
    [(data, meta, kind)] = reader(str(path))
    assert kind == "image" and data.shape == (64, 48)
    assert meta["metadata"]["description"] == "Lesion in the upper right lung."


def test_reader_applies_dicom_rescale():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    [(data, _, _)] = napari_get_reader(path)(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.allclose(data, expected)


def test_reader_declines_other_files(tmp_path):
    assert napari_get_reader(str(tmp_path / "notes.docx")) is None

"""Batch prediction (src_models.batch and ``napari-lvit predict ... --out-dir``)."""

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from src_models.batch import (
    BatchPlanned,
    ItemSkipped,
    ItemWritten,
    plan_batch,
    predict_batch,
    run_batch,
)
from src_models.cli import main
from src_models.data.io import load_image, read_image, read_mask
from src_models.data.synthetic import make_referring_pair, write_dataset
from src_models.data.tables import read_text_table
from src_models.errors import UserError
from src_models.inference import Predictor

TEXT = "Unilateral pulmonary infection, one infected area, lower left lung."


@pytest.fixture(scope="module")
def predictor():
    return Predictor("default", device="cpu")


@pytest.fixture
def data(tmp_path):
    return write_dataset(tmp_path / "data", "qata", 7, size=80)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_folder_in_batches_equals_one_by_one(predictor, data, tmp_path, workers):
    texts = read_text_table(data / "text.csv")
    items = plan_batch([data / "img"], tmp_path / "out", texts=texts, needs_text=True)
    assert len(items) == 7 and len({i.text for i in items}) > 1  # mixed texts in a batch
    done = run_batch(predictor, items, batch_size=3, workers=workers)
    assert done.written == 7 and done.slices == 7
    for item in items:
        assert item.output.name == item.source.name  # .png -> .png
        expected = predictor.predict(read_image(item.source), item.text).mask
        np.testing.assert_array_equal(read_mask(item.output), expected)


def test_a_volume_gives_a_nifti_mask_of_its_shape(predictor, data, tmp_path):
    images = sorted((data / "img").iterdir())
    volume = np.stack([read_image(p) for p in images])  # [7, 80, 80]
    tifffile.imwrite(tmp_path / "vol.tif", volume)
    nib.save(
        nib.Nifti1Image(volume.transpose(2, 1, 0), np.diag([0.7, 0.7, 5.0, 1.0])),
        tmp_path / "ct.nii.gz",
    )
    items = plan_batch([tmp_path / "vol.tif", tmp_path / "ct.nii.gz"], tmp_path / "out", text=TEXT)
    assert [i.output.name for i in items] == ["vol.nii.gz", "ct.nii.gz"]
    assert [i.slices for i in items] == [7, 7]
    run_batch(predictor, items, batch_size=4)
    for item in items:
        mask = load_image(item.output).data
        assert mask.shape == volume.shape
        for z in (0, 6):
            expected = predictor.predict(load_image(item.source).data[z], TEXT).mask
            np.testing.assert_array_equal(mask[z] > 0, expected)
    source, written = load_image(tmp_path / "ct.nii.gz"), load_image(tmp_path / "out" / "ct.nii.gz")
    np.testing.assert_allclose(written.affine, source.affine)
    assert source.spacing == pytest.approx((5.0, 0.7, 0.7))


def test_a_second_run_skips_and_a_deleted_output_is_redone(predictor, data, tmp_path):
    items = plan_batch([data / "img"], tmp_path / "out", text=TEXT)
    run_batch(predictor, items, batch_size=4)
    again = list(predict_batch(predictor, items, batch_size=4))
    assert again[0] == BatchPlanned(items=7, to_do=0, skipped=7, slices=0)
    assert sum(isinstance(e, ItemSkipped) for e in again) == 7
    assert not any(isinstance(e, ItemWritten) for e in again)
    items[2].output.unlink()
    redo = list(predict_batch(predictor, items, batch_size=4))
    assert [e.source for e in redo if isinstance(e, ItemWritten)] == [items[2].source]
    assert items[2].output.is_file()


def test_per_image_texts_from_a_table_are_used(predictor, tmp_path):
    image, (left, right), _ = make_referring_pair(np.random.default_rng(5), 128)
    folder = tmp_path / "img"
    folder.mkdir()
    for name in ("a", "b"):
        Image.fromarray(image).save(folder / f"{name}.png")
    table = tmp_path / "texts.csv"
    table.write_text(f'Image,Description\na.png,"{left}"\nb,"{right}"\n')
    out = tmp_path / "out"
    argv = ["predict", "default", str(folder), "--out-dir", str(out), "--texts", str(table)]
    assert main([*argv, "--device", "cpu", "--batch-size", "2"]) == 0
    a, b = read_mask(out / "a.png"), read_mask(out / "b.png")
    np.testing.assert_array_equal(a, predictor.predict(image, left).mask)
    np.testing.assert_array_equal(b, predictor.predict(image, right).mask)
    assert (a != b).mean() > 0.01  # the left and right prompts give different masks


def test_colliding_or_overwriting_outputs_are_refused(data, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "synth_0000.jpg").write_bytes((data / "img" / "synth_0000.png").read_bytes())
    with pytest.raises(UserError, match="would both be segmented"):
        plan_batch([data / "img", other / "synth_0000.jpg"], tmp_path / "out", text=TEXT)
    with pytest.raises(UserError, match="inside the input folder"):
        plan_batch([data / "img"], data / "img" / "masks", text=TEXT)
    with pytest.raises(UserError, match="written over the input"):
        plan_batch([data / "img" / "synth_0001.png"], data / "img", text=TEXT)
    with pytest.raises(UserError, match="1 image"):
        plan_batch([data / "img" / "synth_0001.png"], tmp_path / "out", needs_text=True)


def test_the_cli_batch_form_and_its_usage_errors(data, tmp_path, capsys):
    img = data / "img"
    out = tmp_path / "out"
    argv = ["predict", "default", str(img / "synth_0000.png"), str(img / "synth_0001.png")]
    assert main([*argv, "--out-dir", str(out), "--text", TEXT, "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["synth_0000.png", "synth_0001.png"]
    assert "wrote 2 mask(s)" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "m.png"), "--text", TEXT]) == 2
    assert "one image per --out file" in capsys.readouterr().err
    assert main(argv[:3] + ["--text", TEXT]) == 2
    assert "--out-dir DIR" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_stops_the_run_with_its_name(predictor, data, tmp_path, workers):
    broken = data / "img" / "synth_0003.png"
    broken.write_bytes(broken.read_bytes()[:200])  # the header reads, the pixels do not
    items = plan_batch([data / "img"], tmp_path / "out", text=TEXT)
    with pytest.raises(UserError, match="synth_0003"):
        run_batch(predictor, items, batch_size=2, workers=workers)


def test_a_model_without_text_ignores_the_texts(data, tmp_path):
    with pytest.warns(UserWarning, match="untrained"):
        plain = Predictor("unet_s", device="cpu")
    texts = read_text_table(data / "text.csv")
    items = plan_batch([data / "img"], tmp_path / "out", texts=texts)
    assert run_batch(plain, items, batch_size=4).written == 7
    first = items[0]
    np.testing.assert_array_equal(
        read_mask(first.output), plain.predict(read_image(first.source)).mask
    )


def test_a_dicom_series_folder_is_one_volume_with_its_geometry(predictor, data, tmp_path):
    dicom = pytest.importorskip("src_models.data.dicom")
    images = sorted((data / "img").iterdir())[:5]
    volume = np.stack([read_image(p) for p in images]).astype(np.uint16) * 4
    names = [f"IM{k}.dcm" for k in (3, 0, 4, 1, 2)]  # file order is not slice order
    dicom.write_dicom_series(
        tmp_path / "series", volume, spacing=(5.0, 0.7, 0.7), origin=(-90.0, -80.0, 30.0),
        file_names=names,
    )  # fmt: skip
    items = plan_batch([tmp_path / "series"], tmp_path / "out", text=TEXT)
    assert [(i.output.name, i.volume, i.slices) for i in items] == [("series.nii.gz", True, 5)]
    run_batch(predictor, items, batch_size=2)
    source, written = load_image(tmp_path / "series"), load_image(items[0].output)
    assert written.data.shape == source.data.shape == (5, 80, 80)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
    for z in range(5):
        expected = predictor.predict(source.data[z], TEXT).mask
        np.testing.assert_array_equal(written.data[z] > 0, expected)

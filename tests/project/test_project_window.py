"""A project image's CT window: stored with the image, used by the training data and the
suggestion scores, and recorded in the checkpoint a round writes (its Predictor's default)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from src_models.data.windows import PRESETS, apply_window
from src_models.project import Project
from src_models.project.project_dataset import ProjectDataset, common_window, item_planes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ct(seed: int, shape=(64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """An int16 HU slice (air body lung lesion) and its lesion mask."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000, np.int16)
    hu[8:-8, 6:-6] = 40
    hu[14:-14, 12:30] = -850
    r, c = rng.integers(20, 40, 2)
    hu[r : r + 8, c // 2 + 10 : c // 2 + 18] = -300
    hu[0, 0] = 1500  # metal: a min-max would squeeze the lung together
    mask = hu == -300
    return hu, mask


@pytest.fixture
def project(tmp_path):
    with Project.create(tmp_path / "proj") as p:
        for i in range(3):
            hu, _ = _ct(i)
            tifffile.imwrite(tmp_path / f"ct{i}.tif", hu)
            p.add_image(tmp_path / f"ct{i}.tif", text="lesion in the left lung")
        yield p


def test_the_window_is_stored_with_the_image(project, tmp_path):
    rec = project.image("ct0")
    assert rec.window is None
    assert project.set_window("ct0", "lung").window == PRESETS["lung"]
    assert project.image("ct0").window == (-600, 1500)
    assert [r.window for r in project.images()] == [PRESETS["lung"], None, None]
    with pytest.raises(ValueError, match="window"):
        project.set_window("ct1", (40, 0))
    assert project.image("ct1").window is None  # nothing written
    hu, _ = _ct(9)
    tifffile.imwrite(tmp_path / "ct9.tif", hu)
    assert project.add_image(tmp_path / "ct9.tif", window=(40, 80)).window == PRESETS["brain"]
    folder = project.folder
    project.close()
    with Project.open(folder) as again:  # kept across sessions
        assert again.image("ct0").window == PRESETS["lung"]
        assert again.set_window("ct0", None).window is None
        assert again.image("ct0").window is None
        assert again.check() == []


def test_training_data_goes_through_the_window(project):
    project.set_window("ct0", "lung")
    items = project.unlabeled()
    planes = {name: f for _, name, f in item_planes(items)}
    hu0, _ = _ct(0)
    np.testing.assert_allclose(planes["ct0"][..., 0], apply_window(hu0, "lung"), atol=1e-6)
    hu1, _ = _ct(1)  # no window: min-max, as before
    np.testing.assert_allclose(planes["ct1"][..., 0], (hu1 + 1000.0) / 2500.0, atol=1e-6)
    data = ProjectDataset(items, 64)
    assert data.window is None  # the images do not share one window
    for name in ("ct1", "ct2"):
        project.set_window(name, "lung")
    data = ProjectDataset(project.unlabeled(), 64)
    assert data.window == PRESETS["lung"] == common_window(project.unlabeled())
    expected = np.rint(apply_window(hu0, "lung") * 255).astype(np.uint8)
    np.testing.assert_array_equal(data._images[0][..., 0], expected)


def test_a_volume_with_a_window_gives_windowed_slices(tmp_path):
    vol = np.stack([_ct(s)[0] for s in range(5)])  # 5 slices: never read as colour
    tifffile.imwrite(tmp_path / "vol.tif", vol)
    with Project.create(tmp_path / "p") as p:
        p.add_image(tmp_path / "vol.tif", window="lung")
        planes = [f for _, _, f in item_planes(p.unlabeled())]
    assert len(planes) == 5
    for z in range(5):
        np.testing.assert_allclose(planes[z][..., 0], apply_window(vol[z], "lung"), atol=1e-6)


def test_suggestion_scores_see_the_windowed_image(project):
    from src_models.project.suggest import score_images

    project.set_window("ct0", "lung")
    seen = []

    def predict_prob(image, text):
        seen.append(image)
        return np.full(image.shape[:2], 0.5)

    scores = list(score_images(project.images(), predict_prob))
    assert [s.score for s in scores] == [1.0, 1.0, 1.0]
    hu0, _ = _ct(0)
    assert seen[0].dtype == np.uint8
    np.testing.assert_allclose(seen[0] / 255.0, apply_window(hu0, "lung"), atol=1 / 255)
    assert seen[1].dtype == np.int16  # no window: the raw image, as before


def test_a_round_records_the_window_and_its_checkpoint_predicts_with_it(project):
    from src_models.engine.checkpoint import read_checkpoint_meta
    from src_models.inference import Predictor
    from src_models.project.retrain import RetrainRoundEnd, retrain

    for i, rec in enumerate(project.images()):
        project.set_window(rec, "lung")
        if i < 2:
            project.commit(rec, _ct(i)[1], model_version="t")
    events = list(
        retrain(
            project.folder,
            epochs=1,
            semi="off",
            model="unet_tiny",
            img_size=None,
            device="cpu",
            num_threads=1,
        )
    )
    end = next(e for e in events if isinstance(e, RetrainRoundEnd))
    assert end.status == "done", events[-1]
    assert read_checkpoint_meta(end.checkpoint)["window"] == [-600.0, 1500.0]
    predictor = Predictor(end.checkpoint, device="cpu")
    assert predictor.window == PRESETS["lung"]
    seen = []
    predictor.model.register_forward_pre_hook(lambda _m, a: seen.append(a[0].clone()))
    hu, _ = _ct(2)
    predictor.predict(hu)
    np.testing.assert_allclose(seen[-1][0, 0].numpy(), apply_window(hu, "lung"), atol=1e-6)

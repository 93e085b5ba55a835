"""`napari-lvit predict --window`, and a patch-mode round records the CT window."""

import numpy as np
import pytest
import tifffile

from src_models.cli import main as cli_main
from src_models.data.windows import PRESETS
from src_models.engine.checkpoint import read_checkpoint_meta, save_checkpoint
from src_models.models import create_model
from src_models.project import Project

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_predict_window_flag(tmp_path, capsys):
    model = create_model("unet_tiny")
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model)
    hu = np.random.default_rng(0).choice([-1000, -850, 40, 700], size=(64, 64)).astype(np.int16)
    tifffile.imwrite(tmp_path / "ct.tif", hu)
    assert (
        cli_main(
            [
                "predict",
                str(ckpt),
                str(tmp_path / "ct.tif"),
                "--out",
                str(tmp_path / "a.tif"),
                "--window",
                "lung",
            ]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "predict",
                str(ckpt),
                str(tmp_path / "ct.tif"),
                "--out-dir",
                str(tmp_path / "o"),
                "--window=-600,1500",
            ]
        )
        == 0
    )
    with pytest.raises(SystemExit):
        cli_main(
            [
                "predict",
                str(ckpt),
                str(tmp_path / "ct.tif"),
                "--out",
                str(tmp_path / "b.tif"),
                "--window",
                "liver",
            ]
        )
    assert "unknown window" in capsys.readouterr().err


def test_patch_round_records_the_window(tmp_path):
    from src_models.project.retrain import RetrainRoundEnd, retrain

    with Project.create(tmp_path / "p") as p:
        for i in range(3):
            hu = np.full((160, 160), -1000, np.int16)
            hu[20:140, 20:140] = -850
            hu[60:70, 60 + 10 * i : 70 + 10 * i] = 40
            tifffile.imwrite(tmp_path / f"ct{i}.tif", hu)
            rec = p.add_image(tmp_path / f"ct{i}.tif", text="lesion", window="lung")
            if i < 2:
                p.commit(rec, hu == 40, model_version="t")
        folder = p.folder
    events = list(
        retrain(
            folder,
            epochs=1,
            semi="off",
            model="unet_tiny",
            img_size=None,
            device="cpu",
            num_threads=1,
            resolution="patches",
        )
    )
    end = next(e for e in events if isinstance(e, RetrainRoundEnd))
    assert end.status == "done", events[-1]
    meta = read_checkpoint_meta(end.checkpoint)
    assert meta["working_resolution"]["mode"] == "patches"
    assert meta["window"] == list(PRESETS["lung"])

"""``napari-lvit predict ... --out-dir`` under torchrun (2 CPU processes): the inputs are shared
among the ranks and every output is written exactly once, with the masks of one process."""

import numpy as np
import pytest
import tifffile
from _torchrun import logged_cli, torchrun

from src_models.batch import BatchItem, shard_items
from src_models.data.io import load_image, read_image, read_mask
from src_models.data.synthetic import write_dataset

TEXT = "Unilateral pulmonary infection, one infected area, lower left lung."


def test_shard_items_balances_slices_and_covers_every_item_once():
    items = [BatchItem(f"{i}", f"o{i}", None, s > 1, s) for i, s in enumerate([9, 1, 1, 1, 4, 1])]
    shards = [shard_items(items, 2, r) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(6))
    assert shards == [[0], [1, 2, 3, 4, 5]]  # 9 slices vs 1 + 1 + 1 + 4 + 1
    assert shard_items(items, 1, 0) == list(range(6))


def test_two_ranks_write_every_output_once(tmp_path):
    data = write_dataset(tmp_path / "data", "qata", 5, size=80)
    images = sorted((data / "img").iterdir())
    tifffile.imwrite(tmp_path / "vol.tif", np.stack([read_image(p) for p in images]))
    inputs = [str(data / "img"), str(tmp_path / "vol.tif")]
    args = ["predict", "default", *inputs, "--text", TEXT, "--device", "cpu", "--batch-size", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    logs = tmp_path / "logs"
    logs.mkdir()
    proc = torchrun("logged_cli", logs, *args, "--out-dir", two, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("wrote 6 mask(s)") == 1  # rank 0 says it, for the whole job
    writes = {r: (logs / f"writes.rank{r}.txt").read_text().split() for r in (0, 1)}
    assert writes[0] and writes[1]  # both ranks worked
    every = writes[0] + writes[1]
    assert len(every) == len(set(every)) == 6  # each output written once
    assert sorted(p.name for p in two.iterdir()) == sorted(
        [p.name for p in images] + ["vol.nii.gz"]
    )
    # the masks of one process
    with pytest.raises(SystemExit) as end:
        logged_cli(str(logs), *args, "--out-dir", str(one))
    assert end.value.code == 0
    for name in sorted(p.name for p in one.iterdir()):
        if name.endswith(".nii.gz"):
            a, b = load_image(one / name).data, load_image(two / name).data
        else:
            a, b = read_mask(one / name), read_mask(two / name)
        np.testing.assert_array_equal(a, b, err_msg=name)

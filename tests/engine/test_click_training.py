"""A tiny model trained a few dozen steps with simulated clicks follows the clicks: a positive
click on an object the mask missed adds it, a negative click on a false region removes it.

The data leave the clicks no shortcut: every image holds two equal bright disks and the target
is one of them, drawn at random, so without a click nothing says which one is meant.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from src_models.engine.trainer import TrainConfig, Trainer
from src_models.inference import Predictor
from src_models.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 64


def _disk(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def two_disks(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image [S, S] float32, disk A, disk B)``: two disks of radius 6-9 that do not touch."""
    while True:
        (ay, ax), (by, bx) = rng.uniform(12, SIZE - 12, (2, 2))
        ra, rb = rng.uniform(6, 9, 2)
        if np.hypot(ay - by, ax - bx) > ra + rb + 4:
            break
    a, b = _disk(ay, ax, ra), _disk(by, bx, rb)
    image = 0.2 + 0.6 * (a | b) + rng.normal(0, 0.05, (SIZE, SIZE))
    return np.clip(image, 0, 1).astype(np.float32), a, b


class OneOfTwoDisks(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            image, a, b = two_disks(rng)
            self.items.append((image, a if rng.random() < 0.5 else b))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        image, target = self.items[i]
        return {
            "image": torch.from_numpy(image)[None].expand(3, -1, -1).clone(),
            "mask": torch.from_numpy(target.astype(np.float32))[None],
            "text": "",
            "name": f"disks_{i}",
            "index": i,
        }


@pytest.fixture(scope="module")
def clicked_model():
    torch.manual_seed(0)
    model = create_model("unet_tiny", prompts=True)
    # 384 steps (about 20 s on one thread), the prompt adapter at 10x lr (the default
    # prompt_lr_scale). Checked over training seeds 0-9 (a CPU with other kernels trains
    # another model from the same seed): both tests passed on five test images at each. With
    # 192 steps, 64 images and no wrong-proposal starts, 4 of seeds 0-5 failed on one test
    # image or more (and seed 0 here on one CI machine); at lr 2e-2 (the adapter at 0.2) 3 of
    # 10 seeds failed
    config = TrainConfig(
        epochs=24,
        batch_size=8,
        lr=2e-3,
        min_lr=2e-4,
        t0=24,
        clicks=3,
        use_text=False,
        device="cpu",
        seed=0,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the tests' one-thread fixture
    try:
        Trainer(model, OneOfTwoDisks(128, seed=0), config=config).run()
    finally:
        torch.set_num_threads(threads)
    return Predictor(model, device="cpu", threshold=0.5)


def _cover(mask: np.ndarray, region: np.ndarray) -> float:
    return float((mask & region).sum() / region.sum())


def _center(region: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(region)
    return float(rows.mean()), float(cols.mean())


def test_a_positive_click_on_a_missed_object_adds_it(clicked_model):
    image, a, b = two_disks(np.random.default_rng(1234))
    # the proposal found A and missed B; the user clicks into B
    mask = clicked_model.predict(image, clicks=[(*_center(b), 1)], previous=a).mask
    assert _cover(mask, b) > 0.7
    # the click decides: clicking A instead leaves B out
    other = clicked_model.predict(image, clicks=[(*_center(a), 1)], previous=a).mask
    assert _cover(other, b) < 0.3 and _cover(other, a) > 0.7


def test_a_negative_click_on_a_false_region_removes_it(clicked_model):
    image, a, b = two_disks(np.random.default_rng(4321))
    # the proposal covers both disks; A is meant: a click on A, a remove-click on B
    clicks = [(*_center(a), 1), (*_center(b), -1)]
    mask = clicked_model.predict(image, clicks=clicks, previous=a | b).mask
    assert _cover(mask, b) < 0.3 and _cover(mask, a) > 0.7

import numpy as np
import pytest
import torch

from src_models.metrics import dice_per_image, dice_score, iou_per_image, iou_score


def test_perfect_disjoint_and_empty():
    a = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    a[0, :, :4] = True  # image 0: perfect
    b = a.clone()
    a[1, :, :4] = True  # image 1: disjoint
    b[1, :, 4:] = True
    # image 2: both empty
    assert dice_per_image(a, b).tolist() == [1.0, 0.0, 1.0]
    assert iou_per_image(a, b).tolist() == [1.0, 0.0, 1.0]


def test_known_values_and_shapes():
    pred = torch.zeros(1, 4, 4, dtype=torch.bool)
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    pred[0, 0, :4] = True  # 4 pixels
    target[0, 0, :2] = True  # 2 pixels, both inside pred
    assert dice_per_image(pred, target).item() == pytest.approx(2 * 2 / 6)
    assert iou_per_image(pred, target).item() == pytest.approx(2 / 4)
    # [B,1,H,W] gives the same as [B,H,W]
    assert dice_per_image(pred[:, None], target[:, None]).item() == pytest.approx(2 / 3)


def test_empty_prediction_on_lesion_scores_zero():
    target = torch.zeros(1, 1, 4, 4)
    target[..., 1, 1] = 1
    assert dice_per_image(torch.zeros_like(target), target).item() == 0.0


def test_numpy_in_numpy_out_and_single_image_helpers():
    p = np.zeros((2, 5, 5), dtype=np.uint8)
    t = np.zeros((2, 5, 5), dtype=np.uint8)
    p[0, :2] = 255
    t[0, :1] = 1
    d = dice_per_image(p, t)
    assert isinstance(d, np.ndarray)
    assert d.tolist() == pytest.approx([2 * 5 / 15, 1.0])
    assert dice_score(p[0], t[0]) == pytest.approx(2 / 3)
    assert iou_score(p[0], t[0]) == pytest.approx(0.5)


def test_float_inputs_are_cut_at_half_and_shapes_checked():
    probs = torch.tensor([[[0.2, 0.6], [0.9, 0.4]]])
    target = torch.tensor([[[0, 1], [1, 0]]])
    assert dice_per_image(probs, target).item() == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        dice_per_image(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))

import numpy as np
import pytest
import torch

from src_models.losses._functional import (
    cosine_shape_loss,
    masked_balanced_bce_with_logits,
    masked_soft_dice_loss,
    soft_dice_loss,
)
from src_models.losses.lv import (
    LVLoss,
    load_templates,
    lv_loss,
    match_references,
    nearest_by_text,
    sentence_embeddings,
)


def _mask(b=2, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(b, 1, s, s, generator=g) > 0.6).float()
    m[:, :, 0, 0] = 1.0
    return m


def test_lv_is_zero_for_identical_masks_and_one_for_disjoint():
    m = _mask()
    assert cosine_shape_loss(m, m).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_shape_loss(0.3 * m, m).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    logits = (m * 2 - 1) * 40.0  # sigmoid(logits) == m
    assert lv_loss(logits, m).item() == pytest.approx(0.0, abs=1e-6)
    a = torch.zeros(1, 1, 8, 8)
    a[..., :4, :] = 1
    assert cosine_shape_loss(a, 1 - a).item() == pytest.approx(1.0, abs=1e-6)
    per_image = lv_loss(logits, m, reduction="none")
    assert per_image.shape == (2,)


def test_lv_module_weight_valid_rows_and_gradient():
    m = _mask()
    logits = torch.zeros_like(m, requires_grad=True)
    loss = LVLoss(0.1)(logits, m, torch.tensor([True, False]))
    expected = 0.1 * lv_loss(logits[:1], m[:1])
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert logits.grad[0].abs().sum() > 0 and logits.grad[1].abs().sum() == 0
    none = LVLoss(0.1)(logits, m, torch.tensor([False, False]))
    assert none.item() == 0.0 and none.requires_grad


def test_masked_losses_match_unmasked_with_full_weight_and_ignore_masked_pixels():
    t = _mask()
    logits = torch.randn_like(t)
    p = torch.sigmoid(logits)
    assert masked_soft_dice_loss(p, t).item() == pytest.approx(soft_dice_loss(p, t).item())
    w = torch.zeros_like(t)
    w[..., :8, :] = 1.0
    changed = logits.clone()
    changed[..., 8:, :] = 50.0  # only masked-out pixels change
    for fn in (
        lambda x: masked_soft_dice_loss(torch.sigmoid(x), t, w),
        lambda x: masked_balanced_bce_with_logits(x, t, w),
    ):
        assert fn(logits).item() == pytest.approx(fn(changed).item(), rel=1e-5)
    nothing = torch.zeros_like(t)
    assert masked_soft_dice_loss(p, t, nothing).item() == 0.0


def test_nearest_by_text_picks_the_most_similar_key():
    keys = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.7, 0.7, 0.0]])
    query = torch.tensor([[0.1, 0.9, 0.0], [0.9, 0.8, 0.0]])
    idx, sim = nearest_by_text(query, keys)
    assert idx.tolist() == [1, 2]
    assert sim[1] == pytest.approx(1.0, abs=0.01)


def test_lv_reference_is_the_most_similar_text_with_the_real_encoder(text_encoder):
    keys = [
        "Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung.",
        "Unilateral pulmonary infection, one infected area, lower left lung.",
        "The nuclei density in the upper right is high.",
        None,
    ]
    queries = [
        "Unilateral pulmonary infection, one infected area, lower left lung.",
        "The nuclei density in the lower left is high.",
        None,
        "Bilateral pulmonary infection, two infected areas, upper left and upper right lung.",
    ]
    assert match_references(text_encoder, queries, keys) == [1, 2, None, 0]
    emb = sentence_embeddings(text_encoder, [keys[0], keys[1], keys[0]])
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(emb[0], emb[2])


def test_sentence_embeddings_fallback_for_encoders_without_it():
    from src_models.text import TextFeatures

    class Enc:
        dim = 2

        def encode(self, texts):
            rows = [[1.0, 0.0] if "a" in t else [0.0, 2.0] for t in texts]
            return TextFeatures(torch.tensor(rows)[:, None], torch.ones(len(texts), 1, dtype=bool))

    emb = sentence_embeddings(Enc(), ["a", "b"])
    assert torch.allclose(emb, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_templates_from_an_lvit_folder(tmp_path):
    from src_models.data.synthetic import write_dataset

    root = write_dataset(tmp_path / "tpl", kind="qata", n=3, size=64, seed=0)
    lib = load_templates(root, 32)
    assert len(lib) == 3 and lib.masks.shape == (3, 32, 32) and lib.masks.dtype == np.bool_
    assert all(t for t in lib.texts)
    # without img/: masks + text table only
    import shutil

    shutil.rmtree(root / "img")
    lib2 = load_templates(root, 32)
    assert lib2.texts == lib.texts and np.array_equal(lib2.masks, lib.masks)

"""RecLMIS: interaction with a padding mask, training-only branches, feature reuse, trainer."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from src_models.data import SegmentationDataset
from src_models.data.synthetic import write_dataset
from src_models.engine import BatchEnd, TrainConfig, Trainer
from src_models.losses import (
    ConditionedContrastiveLoss,
    MaskedReconstructionLoss,
    conditioned_contrastive_loss,
    masked_mse,
)
from src_models.models import create_model
from src_models.models.reclmis import RecLMIS, RecLMISConfig, sample_by_weight
from src_models.text import TextFeatures

AUX = {"contrast", "rec_image", "rec_text"}
TRAINING_ONLY = ("patch_interest", "word_interest", "image_reconstructor", "text_reconstructor")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> RecLMIS:
    torch.manual_seed(0)
    return create_model("reclmis_tiny").eval()


def _inputs(m, batch=2, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, m.in_chans, m.img_size, m.img_size, generator=g)
    text = torch.randn(batch, length, m.text_dim, generator=g)
    return image, text


def test_training_forward_gives_finite_auxiliary_losses_and_gradients():
    torch.manual_seed(0)
    m = create_model("reclmis_tiny").train()
    image, text = _inputs(m, length=16)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 5:] = False
    logits = m(image, text, mask)
    aux = m.auxiliary_losses()
    assert logits.shape == (2, 1, 64, 64) and torch.isfinite(logits).all()
    assert set(aux) == AUX
    assert all(v.ndim == 0 and torch.isfinite(v) and v >= 0 for v in aux.values())
    assert m.auxiliary_losses() == {}  # handed out once
    sum(aux.values()).backward()
    for prefix in TRAINING_ONLY:
        grads = [p.grad for n, p in m.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), prefix


def test_auxiliary_weights_come_from_the_config():
    image, text = _inputs(create_model("reclmis_tiny"), length=10)
    terms = []
    for weights in ((0.2, 1.0), (0.4, 3.0)):
        torch.manual_seed(0)
        m = create_model(
            "reclmis_tiny", contrastive_weight=weights[0], reconstruction_weight=weights[1]
        ).train()
        m(image, text)
        terms.append(m.auxiliary_losses())
    a, b = terms
    torch.testing.assert_close(b["contrast"], 2 * a["contrast"])
    torch.testing.assert_close(b["rec_image"], 3 * a["rec_image"])
    torch.testing.assert_close(b["rec_text"], 3 * a["rec_text"])


def test_inference_skips_the_training_only_branches(model):
    calls: list[str] = []
    handles = [
        getattr(model, name).register_forward_hook(lambda *_, n=name: calls.append(n))
        for name in TRAINING_ONLY
    ]
    try:
        image, text = _inputs(model, batch=1)
        with torch.no_grad():
            model(image, text)
            model.decode(model.encode_image(image), text)
        assert calls == [] and model.auxiliary_losses() == {}
        model.train()
        try:
            model(image.expand(2, -1, -1, -1), text.expand(2, -1, -1))
        finally:
            model.eval()
        assert sorted(set(calls)) == sorted(TRAINING_ONLY)
        model.auxiliary_losses()
    finally:
        for h in handles:
            h.remove()


def test_text_changes_output(model):
    image, text = _inputs(model, batch=1, seed=1)
    _, other = _inputs(model, batch=1, seed=2)
    with torch.no_grad():
        assert not torch.allclose(model(image, text), model(image, other))


def test_padding_tokens_do_not_change_the_output(model):
    image, text = _inputs(model, batch=2, length=20, seed=3)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, 14:] = False
    mask[1, 6:] = False
    changed = text.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), text.shape[-1]) * 10
    changed[1, -1] = float("nan")  # padding may hold anything
    with torch.no_grad():
        a = model(image, text, mask)
        b = model(image, changed, mask)
        c = model(image[:1], text[:1, :14])  # caller's padding = shorter text
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a[:1], c, rtol=0, atol=1e-5)


def test_no_text_equals_all_padding_and_is_finite(model):
    image, text = _inputs(model, batch=2, length=8, seed=4)
    with torch.no_grad():
        a = model(image)
        b = model(image, text, torch.zeros(2, 8, dtype=torch.bool))
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


def test_long_text_is_truncated_to_text_len(model):
    n = model.text_len
    image, text = _inputs(model, batch=1, length=n + 5, seed=5)
    changed = text.clone()
    changed[:, n:] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(model(image, text), model(image, changed))


def test_bad_text_shapes_raise(model):
    image, text = _inputs(model, batch=1, length=5)
    with pytest.raises(ValueError, match=str(model.text_dim)):
        model(image, text[..., :-1])
    with pytest.raises(ValueError, match="text_mask"):
        model(image, text, torch.ones(1, 4, dtype=torch.bool))


def test_encode_decode_equals_forward(model):
    image, text = _inputs(model, batch=2, length=9, seed=6)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        feats = model.encode_image(image)
        ref = model(image, text, mask)
        torch.testing.assert_close(model.decode(feats, text, mask), ref, rtol=1e-4, atol=1e-5)
        # The same features serve another text.
        _, other = _inputs(model, batch=2, length=9, seed=7)
        torch.testing.assert_close(
            model.decode(feats, other), model(image, other), rtol=1e-4, atol=1e-5
        )
    assert feats.batch == 2 and feats.nbytes() > 0


def test_training_mode_encode_decode_equals_forward():
    torch.manual_seed(0)
    m = create_model("reclmis_tiny", dropout=0.0).train()
    image, text = _inputs(m, batch=2, length=7, seed=8)
    feats = m.encode_image(image)
    assert not feats.folded
    torch.testing.assert_close(m.decode(feats, text), m(image, text), rtol=1e-4, atol=1e-5)
    m.auxiliary_losses()
    with torch.no_grad():
        folded = m.eval().encode_image(image)
    assert folded.folded
    m.train()
    with pytest.raises(ValueError, match="eval mode"):
        m.decode(folded, text)


def test_nearest_upsampling_conv_as_one_transposed_conv():
    import torch.nn.functional as F

    from src_models.models.reclmis import nearest_up_conv_weight

    torch.manual_seed(0)
    x, w = torch.randn(2, 5, 6, 7), torch.randn(4, 5, 3, 3)
    ref = F.conv2d(F.interpolate(x, scale_factor=2.0), w, padding=1)
    got = F.conv_transpose2d(x, nearest_up_conv_weight(w), stride=2, padding=1)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_sample_by_weight_draws_the_asked_counts_and_never_zero_weights():
    torch.manual_seed(0)
    w = torch.rand(3, 10)
    w[:, 7:] = 0.0
    w = w / w.sum(1, keepdim=True)
    picked = sample_by_weight(w, torch.tensor([1, 3, 9]))
    assert picked.sum(1).tolist() == [1, 3, 7]  # only 7 positive weights in a row
    assert not picked[:, 7:].any()
    # Heavier tokens are drawn more often.
    heavy = torch.tensor([[0.9] + [0.1 / 9] * 9]).expand(2000, -1)
    assert sample_by_weight(heavy, torch.ones(2000, dtype=torch.long))[:, 0].float().mean() > 0.8


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(img_size=72),
        dict(embed_dim=30, heads=4),
        dict(text_mask_ratio=0.0),
        dict(image_mask_min=0.6, image_mask_max=0.5),
        dict(temperature=0.0),
    ],
)
def test_invalid_config_raises(kwargs):
    with pytest.raises(ValueError):
        RecLMISConfig(**kwargs)


def test_parameter_counts_of_the_registered_sizes():
    from src_models.models.profile import count_parameters

    def inference_path(m):
        return sum(
            p.numel()
            for n, p in m.named_parameters()
            if not n.startswith((*TRAINING_ONLY, "image_mask_token", "text_mask_token", "text_pos"))
        )

    full = create_model("reclmis")
    assert 17e6 < inference_path(full) < 21e6  # the paper: about 18M without the text tower
    small = create_model("reclmis_s")
    assert count_parameters(small) < 2.5e6 and small.text_dim == 384 and small.img_size == 224


# --------------------------------------------------------------------------- losses


def test_masked_mse_counts_only_masked_tokens():
    pred, target = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    target[:, 2:] = 5.0
    masked = torch.zeros(2, 4, dtype=torch.bool)
    masked[:, :2] = True
    assert masked_mse(pred, target, masked).item() == pytest.approx(1.0)
    assert masked_mse(pred, target, torch.zeros_like(masked)).item() == 0.0
    assert MaskedReconstructionLoss(2.0)(pred, target, masked).item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        masked_mse(pred, target, masked[:, :3])


def test_conditioned_contrastive_prefers_matching_pairs():
    torch.manual_seed(0)
    img = torch.randn(4, 6, 8)
    w_img = torch.softmax(torch.randn(4, 6), 1)
    txt, w_txt = img.clone(), w_img.clone()  # pooled embeddings identical per pair
    matched = conditioned_contrastive_loss(img, w_img, txt, w_txt, 0.07)
    shuffled = conditioned_contrastive_loss(img, w_img, txt.roll(1, 0), w_txt.roll(1, 0), 0.07)
    assert matched < 0.1 < shuffled
    one = conditioned_contrastive_loss(img[:1], w_img[:1], txt[:1], w_txt[:1])
    assert one.item() == pytest.approx(0.0, abs=1e-6)  # no negatives in a batch of one
    loss = ConditionedContrastiveLoss(0.5)(img, w_img, txt.roll(1, 0), w_txt.roll(1, 0))
    torch.testing.assert_close(loss, 0.5 * shuffled)


# --------------------------------------------------------------------------- trainer


class _HashEncoder:
    """Word-hash token features with the TextEncoder interface (fast, deterministic)."""

    dim = 384
    id = "hash-384"

    def encode(self, texts):
        feats = []
        for text in texts:
            rows = [
                torch.randn(
                    self.dim, generator=torch.Generator().manual_seed(zlib.crc32(w.encode()))
                )
                for w in text.lower().split()
            ]
            feats.append(torch.stack(rows))
        length = max(f.shape[0] for f in feats)
        tokens = torch.zeros(len(feats), length, self.dim)
        mask = torch.zeros(len(feats), length, dtype=torch.bool)
        for i, f in enumerate(feats):
            tokens[i, : len(f)], mask[i, : len(f)] = f, True
        return TextFeatures(tokens, mask)


def test_trainer_adds_the_auxiliary_terms(tmp_path):
    root = write_dataset(tmp_path / "train", kind="qata", n=4, size=64, seed=0)
    data = SegmentationDataset(root, img_size=64)
    torch.manual_seed(0)
    model = create_model("reclmis_tiny")
    trainer = Trainer(model, data, None, _HashEncoder(), TrainConfig(epochs=1, batch_size=2))
    events = list(trainer.fit())
    batches = [e for e in events if isinstance(e, BatchEnd)]
    assert batches
    for event in batches:
        assert set(event.losses) == {"dice", "bce"} | AUX
        assert all(math.isfinite(v) for v in event.losses.values())
        assert event.loss == pytest.approx(sum(event.losses.values()), rel=1e-5)
    assert not model.training and model.auxiliary_losses() == {}


def test_checkpoint_round_trip_rebuilds_the_model(tmp_path, model):
    from src_models.engine import load_checkpoint, save_checkpoint

    path = save_checkpoint(tmp_path / "r.safetensors", model, {"text_encoder": "hash-384"})
    loaded, meta = load_checkpoint(path)
    assert isinstance(loaded, RecLMIS) and meta["model_name"] == "reclmis_tiny"
    image, text = _inputs(model, batch=1, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, text), model(image, text))

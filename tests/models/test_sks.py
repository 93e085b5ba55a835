"""SKS: zero-initialised fusion equals the base model; stage 1 trains only the classifier."""

import copy

import numpy as np
import pytest
import torch

from src_models.data import SegmentationDataset
from src_models.data.dataset import read_label_table, scan_split
from src_models.data.synthetic import write_dataset
from src_models.engine.checkpoint import load_checkpoint, save_checkpoint
from src_models.engine.sks import ClassifierConfig, image_labels, train_classifier
from src_models.models import create_model, list_models

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "name,base", [("sks_lvit_tiny", "lvit_tiny"), ("sks_unet_tiny", "unet_tiny")]
)
def test_zero_fusion_equals_base_model(name, base):
    torch.manual_seed(0)
    sks = create_model(name)
    ref = create_model(base)
    ref.load_state_dict(sks.seg.state_dict())
    sks.eval(), ref.eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    text = torch.randn(2, 5, 384)
    with torch.no_grad():
        assert torch.equal(sks(x, text=text), ref(x, text=text))
        logits, feats = sks.forward_features(x, text=text)
    assert torch.equal(logits, ref(x, text=text)) and feats.shape[:2] == (2, 8)
    # once the fusion is not zero, the classifier's features change the output
    with torch.no_grad():
        sks.fuse[2].weight.normal_()
        assert not torch.equal(sks(x, text=text), ref(x, text=text))


def test_resolution_compensation_skip_brings_the_coarser_level():
    torch.manual_seed(0)
    sks = create_model("sks_unet_tiny").eval()
    seg_w = [m.out_channels for m in sks.fuse]
    cls_w = sks.classifier.widths
    for i, conv in enumerate(sks.fuse):  # [f_i, g_i, up(g_(i+1))]; the deepest has no coarser
        assert conv.in_channels == seg_w[i] + cls_w[i] + (cls_w[i + 1] if i < 4 else 0)
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        before = sks(x)
        # weights on the compensation channels of level 0 only: the coarser map now counts
        sks.fuse[0].weight[:, seg_w[0] + cls_w[0] :].normal_()
        assert not torch.equal(sks(x), before)


def test_sks_registry_checkpoint_and_copy(tmp_path):
    assert {"sks_lvit_s", "sks_lvit_tiny"} <= set(list_models("sks_*"))
    torch.manual_seed(0)
    model = create_model("sks_lvit_tiny", img_size=32)
    assert model.img_size == 32 and model.config.base_config["img_size"] == 32
    with torch.no_grad():
        for conv in model.fuse:
            conv.weight.normal_()
    path = save_checkpoint(tmp_path / "sks.safetensors", model)
    again, meta = load_checkpoint(path)
    model.eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
        assert torch.equal(copy.deepcopy(model)(x), model(x))
    assert len(model.seg.encoder._forward_hooks) == 1
    assert meta["model_config"]["base"] == "lvit_tiny"


def test_classifier_frozen_in_stage_two():
    model = create_model("sks_unet_tiny").train()
    assert not model.classifier.training
    assert all(not p.requires_grad for p in model.classifier.parameters())
    assert all(p.requires_grad for p in model.fuse.parameters())


@pytest.fixture(scope="module")
def labelled_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("sks")
    return write_dataset(root / "train", "qata", n=8, size=SIZE, seed=0, empty_fraction=0.4)


def test_label_column_and_image_labels(labelled_split):
    table = read_label_table(labelled_split / "text.csv")
    recs = scan_split(labelled_split)
    assert len(table) == 8 and {r.label for r in recs} == {0, 1}
    data = SegmentationDataset(recs, SIZE)
    for i, label in enumerate(data.labels):
        assert label == int(data.mask_bool(i).any())  # empty synthetic images say 0
    # without the column: labels from masks and from no-lesion names
    unlabeled = [r for r in recs if r.label == 1][:1]
    data2 = SegmentationDataset(
        [type(r)(r.name, r.image_path, None, r.text) for r in unlabeled], SIZE, require_masks=False
    )
    assert image_labels(data2).tolist() == [-1]
    assert image_labels(data2, no_lesion=[data2.names[0]]).tolist() == [0]


def test_stage_one_trains_only_the_classifier(labelled_split):
    torch.manual_seed(0)
    model = create_model("sks_unet_tiny")
    data = SegmentationDataset(labelled_split, SIZE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    epochs = list(
        train_classifier(model, data, ClassifierConfig(epochs=2, batch_size=4, device="cpu"))
    )
    assert [e.epoch for e in epochs] == [1, 2] and all(np.isfinite(e.loss) for e in epochs)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("classifier.") for k in changed)
    assert not any(p.requires_grad for p in model.classifier.parameters())  # frozen again

"""Text augmentation: paraphrases keep every fact, free text is left alone, training only."""

import numpy as np
import pytest

from src_models.data.paraphrase import paraphrase
from src_models.data.referring import make_shapes_sample, parse_mentions, write_shapes_dataset


def _facts(text):
    return sorted(map(repr, parse_mentions(text)))


def test_paraphrases_keep_the_facts_and_change_the_words():
    changed = 0
    for i in range(200):
        _, _, text = make_shapes_sample(np.random.default_rng([2, i]), 64)
        new = paraphrase(text, np.random.default_rng(i))
        assert _facts(new) == _facts(text), (text, new)
        changed += new != text
    assert changed > 180


def test_a_paraphrase_is_deterministic_given_its_seed():
    text = "Segment the ring and the big square."
    assert paraphrase(text, 7) == paraphrase(text, 7)
    assert len({paraphrase(text, s) for s in range(20)}) > 10


@pytest.mark.parametrize(
    "text",
    [
        "Lesion in the lower left lung.",
        "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
        "The nuclei density in the upper right is high.",
        "the small triangle at the top left of the liver",
        "",
    ],
)
def test_text_whose_facts_are_unknown_is_left_as_it_is(text):
    assert paraphrase(text, 0) == text


def test_contradicting_or_half_read_mentions_are_not_rephrased():
    assert parse_mentions("the big small disk") is None
    assert parse_mentions("the disk at the top left in the middle") is None
    assert parse_mentions("the disk in the middle") == parse_mentions("the central disc")


def test_the_dataset_paraphrases_training_items_only(tmp_path):
    from src_models.data.dataset import SegmentationDataset

    split = write_shapes_dataset(tmp_path / "train", n=6, size=64, seed=0)
    plain = SegmentationDataset(split, 64)
    train = SegmentationDataset(split, 64, augment=True, spatial_text=True, seed=3)
    fixed = SegmentationDataset(
        split, 64, augment=True, spatial_text=True, seed=3, paraphrase_text=False
    )
    stored = plain.texts
    assert [plain[i]["text"] for i in range(6)] == stored
    assert [fixed[i]["text"] for i in range(6)] == stored
    said = [train[i]["text"] for i in range(6)]
    assert said != stored
    assert [_facts(t) for t in said] == [_facts(t) for t in stored]
    # the image augmentation does not depend on the text augmentation
    for i in range(6):
        assert np.array_equal(train[i]["image"].numpy(), fixed[i]["image"].numpy())
    # deterministic by (seed, epoch, index); another epoch says it again
    again = SegmentationDataset(split, 64, augment=True, spatial_text=True, seed=3)
    assert [again[i]["text"] for i in range(6)] == said
    again.set_epoch(1)
    assert [again[i]["text"] for i in range(6)] != said

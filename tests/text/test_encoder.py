import pytest
import torch

from src_models.text import TextEncoder, validate_text

QATA = "Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung."


def test_features_and_padding_mask(text_encoder):
    feats = text_encoder.encode([QATA, "Nuclei."])
    assert text_encoder.dim == 384
    assert feats.tokens.shape[0] == 2 and feats.tokens.shape[2] == 384
    lengths = feats.mask.sum(1)
    assert lengths[0] > lengths[1] >= 3  # [CLS] nuclei . [SEP]
    # Padding positions are zero and masked out.
    assert torch.all(feats.tokens[1, lengths[1] :] == 0)
    assert not feats.mask[1, lengths[1] :].any()


def test_a_long_qata_sentence_keeps_its_last_words(text_encoder):
    n_tokens = int(text_encoder.encode([QATA]).mask.sum())
    assert n_tokens > 10  # LViT's official code would keep only 10 words
    assert n_tokens < text_encoder.max_length


def test_cache_returns_identical_features_without_recomputing(text_encoder, monkeypatch):
    first = text_encoder.encode([QATA]).tokens

    def boom(texts):
        raise AssertionError(f"encoded again: {texts}")

    monkeypatch.setattr(text_encoder, "_encode_uncached", boom)
    again = text_encoder.encode(["  " + QATA + " "]).tokens  # same text after whitespace cleanup
    assert torch.equal(first, again)


def test_batch_features_do_not_depend_on_batch_mates(text_encoder):
    alone = text_encoder.encode(["Upper left lung."])
    together = text_encoder.encode([QATA, "Upper left lung."])
    n = int(alone.mask.sum())
    assert torch.allclose(alone.tokens[0, :n], together.tokens[1, :n], atol=1e-5)


def test_different_texts_differ(text_encoder):
    left, right = text_encoder.sentence_embeddings(["lower left lung", "lower right lung"])
    assert not torch.allclose(left, right)
    assert torch.isclose(left.norm(), torch.tensor(1.0))


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_text_is_a_clear_error(text_encoder, bad):
    with pytest.raises(ValueError, match="empty"):
        text_encoder.encode([bad])


def test_absurdly_long_text_is_rejected():
    with pytest.raises(ValueError, match="characters"):
        validate_text("lung " * 5000)


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        TextEncoder(str(tmp_path / "no-such-model"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        TextEncoder(str(tmp_path))


def test_any_local_hugging_face_folder_works(tmp_path):
    """A tiny BERT saved to a folder loads like the default encoder does."""
    from transformers import BertConfig, BertModel

    from src_models.text import default_model_dir

    folder = tmp_path / "tiny-bert"
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_bytes((default_model_dir() / name).read_bytes())
    encoder = TextEncoder(str(folder), max_length=16)
    feats = encoder.encode([QATA])
    assert encoder.dim == 32 and feats.tokens.shape == (1, 16, 32)

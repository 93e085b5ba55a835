"""Fixtures for the engine tests: a fast fake text encoder and small synthetic datasets."""

import zlib

import pytest
import torch

from src_models.text import TextFeatures


class FakeTextEncoder:
    """Word-hash token features with the TextEncoder interface (``dim``, ``id``, ``encode``).

    Deterministic across processes (crc32 of each word seeds its vector); caches per text and
    counts how often it really encoded, to check that the trainer relies on the cache.
    """

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.id = f"fake-hash-{dim}"
        self._cache: dict[str, torch.Tensor] = {}
        self.encoded = 0

    def _features(self, text: str) -> torch.Tensor:
        if text not in self._cache:
            self.encoded += 1
            rows = []
            for word in text.lower().split():
                g = torch.Generator().manual_seed(zlib.crc32(word.encode()))
                rows.append(torch.randn(self.dim, generator=g))
            self._cache[text] = torch.stack(rows)
        return self._cache[text]

    def encode(self, texts):
        if isinstance(texts, str):
            texts = [texts]
        for t in texts:
            if not t.strip():
                raise ValueError("the text is empty: describe what the image shows")
        feats = [self._features(" ".join(t.split())) for t in texts]
        length = max(f.shape[0] for f in feats)
        tokens = torch.zeros(len(feats), length, self.dim)
        mask = torch.zeros(len(feats), length, dtype=torch.bool)
        for i, f in enumerate(feats):
            tokens[i, : f.shape[0]] = f
            mask[i, : f.shape[0]] = True
        return TextFeatures(tokens, mask)


@pytest.fixture
def fake_encoder():
    return FakeTextEncoder()


@pytest.fixture(autouse=True)
def _one_thread_per_test(one_torch_thread):
    """Every engine test runs on one torch thread (see ``one_torch_thread``)."""

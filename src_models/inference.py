"""Predict a mask from an image and a text: the library side of the Segment button.

``Predictor`` loads a model (a checkpoint file, ``"default"`` for the shipped checkpoint, or a
registry name for an untrained model), picks the device, and turns any 2D grayscale or RGB
image of any dtype and size into a probability map and a mask at the image's own size.

Models whose text enters late (``supports_feature_reuse = True``, with ``encode_image(image)
-> features`` and ``decode(features, text, text_mask) -> logits``, e.g. RecLMIS) get their image
features cached: a new prompt on the same image runs only the text-dependent part.

A CT window (``window=(level, width)`` in HU or a preset name, :mod:`src_models.data.windows`;
by default the checkpoint's) replaces the min-max scaling of images stored as HU, and
:meth:`Predictor.predict_slices` segments a whole volume with its slices batched, on one
intensity scale (the window's, else the volume's range, as in training).

A model with prompt inputs (``reads_prompts``, :mod:`src_models.models.prompts`) also takes
clicks, a box and the previous mask: ``predict(image, text, clicks=[(y, x, +1), (y, x, -1)],
box=(y0, x0, y1, x1), previous=mask)``, in the image's own pixel coordinates. They are mapped
onto the model's input the way the image is (the whole image resized to the model size), and
the resized image is cached per image, so a later click costs one model pass. Checkpoints that
predict tile by tile (patches mode, ``tile=True`` on a large image) draw the prompt maps over
the whole image at the working resolution and cut them into the same tiles as the image, so
every tile sees the clicks, the box and the previous mask that fall into it (a click costs one
pass over all tiles).
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from src_models.data.io import to_float01
from src_models.data.patches import rescale_image
from src_models.data.resolution import WorkingResolution
from src_models.data.transforms import resize_image, resize_prob
from src_models.data.windows import Window, as_window, input_range, window_applies
from src_models.device import autocast, resolve_device
from src_models.inference_checks import (
    MAX_PIXELS,
    PromptInput,
    check_finite_prob,
    check_image,
    check_prompts,
    check_threshold,
    guarded,
)
from src_models.model_source import (  # noqa: F401 (DEFAULT_CHECKPOINT: re-exported)
    DEFAULT_CHECKPOINT,
    open_model,
    resolve_checkpoint,
)
from src_models.models.prompts import click_radius, encode_prompts, prompting, reads_prompts
from src_models.text import TextEncoder, validate_text
from src_models.tiling import predict_tiled


@dataclass(frozen=True)
class Prediction:
    """prob: float32 ``[H, W]`` in [0, 1]; mask: bool ``[H, W]`` (prob >= threshold)."""

    prob: np.ndarray
    mask: np.ndarray
    threshold: float
    text: str | None

    def recut(self, threshold: float) -> np.ndarray:
        """The mask at another threshold, without running the model again."""
        return self.prob >= check_threshold(threshold)


def load_model(
    source: str | Path, text_encoder: TextEncoder | None = None
) -> tuple[nn.Module, dict]:
    """A model and its metadata from a checkpoint path, ``"default"``, ``"auto"`` or a registry
    name (:func:`~src_models.model_source.open_model`).

    A registry name gives an untrained model (with a warning): useful for trying the plumbing,
    not for real masks.
    """
    opened = open_model(source, text_encoder=text_encoder)
    if opened.new:
        name = opened.meta["model_name"]
        warnings.warn(f"model {name!r} is untrained: its masks are random", stacklevel=2)
    return opened.model, opened.meta


def model_version(model: nn.Module) -> tuple[int, int]:
    """``(id(model), weights signature)``: changes whenever a parameter or buffer is replaced or
    modified in place (``load_state_dict``, an optimizer step, BatchNorm statistics), because
    every in-place write bumps a tensor's version counter."""
    tensors = (*model.parameters(), *model.buffers())
    return id(model), hash(tuple((t.data_ptr(), t._version) for t in tensors))


def image_fingerprint(batch: np.ndarray) -> str:
    """Hash of a preprocessed input batch (its bytes, shape and dtype)."""
    arr = np.ascontiguousarray(batch)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.shape}{arr.dtype}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


class FeatureCache:
    """A small LRU cache of image features keyed by (model version, device, image fingerprint).

    Thread-safe (the widget predicts from a worker thread). Features stay on the model's device.
    """

    def __init__(self, capacity: int = 4) -> None:
        if capacity < 0:
            raise ValueError(f"feature cache capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return item

    def put(self, key: tuple, value: Any) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def info(self) -> dict[str, int]:
        return {
            "size": len(self),
            "capacity": self.capacity,
            "hits": self.hits,
            "misses": self.misses,
        }


class Predictor:
    """Runs a segmentation model on single 2D images.

    Images larger than ``max_pixels`` (H x W; default
    :data:`~src_models.inference_checks.MAX_PIXELS`, ``None``: no limit), images that are not
    2D and thresholds outside [0, 1] are refused before anything is computed; NaN or infinite
    probabilities (a broken model) raise
    :class:`~src_models.inference_checks.PredictionError`.

    Args:
        model: checkpoint path, ``"default"``, registry name, or a built ``nn.Module``.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        text_encoder: an encoder, or the name/folder of one; by default the one the
            checkpoint names (or the bundled default).
        threshold: probability cut for the mask (default: the checkpoint's, else 0.5).
        tile: for images larger than ``tile_min_side`` pixels on a side, predict overlapping
            tiles at native resolution instead of resizing the whole image. A checkpoint
            trained in patches mode (``meta["working_resolution"]``) always predicts tile by
            tile at its own scale (:func:`~src_models.tiling.predict_tiled`).
        use_text: False runs a text model without its text (as trained with ``--no-text``
            dropout, or to measure what the text adds); no text encoder is loaded.
        feature_cache_size: for models with ``supports_feature_reuse``, how many inputs keep
            their image features (LRU); 0 turns reuse off (every call runs the whole model).
        window: a CT window, ``(level, width)`` in HU or a preset name, used for images stored
            as HU (not 8-bit or RGB ones) instead of their min-max; by default the one the
            checkpoint was trained with (``meta["window"]``), if any. A call's ``window=``
            overrides it.
    """

    max_pixels: int | None = MAX_PIXELS

    def __init__(
        self,
        model: str | Path | nn.Module = "default",
        device: str | torch.device = "auto",
        text_encoder: TextEncoder | str | None = None,
        threshold: float | None = None,
        tile: bool = False,
        tile_min_side: int = 1024,
        feature_cache_size: int = 4,
        use_text: bool = True,
        window: Window | tuple[float, float] | str | None = None,
    ) -> None:
        self.device = resolve_device(device)
        if isinstance(text_encoder, str):
            text_encoder = TextEncoder(text_encoder)
        if isinstance(model, nn.Module):
            self.model, self.meta = model, {"model_name": getattr(model, "model_name", "custom")}
        else:
            if text_encoder is None and resolve_checkpoint(model) is None:
                text_encoder = TextEncoder()
            self.model, self.meta = load_model(model, text_encoder)
        self.source = model if not isinstance(model, nn.Module) else None
        self.uses_text = bool(use_text and getattr(self.model, "uses_text", False))
        if self.uses_text and text_encoder is None:
            text_encoder = TextEncoder(self.meta.get("text_encoder") or "default")
        if self.uses_text and text_encoder.dim != self.model.text_dim:
            raise ValueError(
                f"text encoder {text_encoder.id} gives {text_encoder.dim}-d features but the "
                f"model expects {self.model.text_dim}-d: use the encoder it was trained with"
            )
        self.text_encoder = text_encoder if self.uses_text else None
        self.model.to(self.device).eval()
        self.img_size: int = int(self.model.img_size)
        self.threshold = check_threshold(
            self.meta.get("threshold", 0.5) if threshold is None else threshold
        )
        self.tile = tile
        self.tile_min_side = tile_min_side
        #: how images reach the model: the checkpoint's working resolution (patches mode: a
        #: sliding window at its scale), else the whole image resized to the model size
        self.resolution = _working_resolution(self.meta, self.img_size)
        #: the CT window for HU images (``None``: each image's own min-max)
        self.window: Window | None = (
            as_window(window) if window is not None else _checkpoint_window(self.meta)
        )
        self.feature_cache = FeatureCache(feature_cache_size)
        self.reuses_features = bool(
            getattr(self.model, "supports_feature_reuse", False) and feature_cache_size > 0
        )
        #: does the model take clicks, a box and a previous mask?
        self.reads_prompts = reads_prompts(self.model)
        # the image resized to the model size, per image: what a later click reuses
        self._inputs = FeatureCache(max(1, feature_cache_size))
        # tiled prompts: each tile's output by its input (image, maps), text and weights, so a
        # later click re-runs only the tiles whose maps it changed; 32 MB of float32 tiles
        tiles = max(16, (32 << 20) // (4 * self.img_size**2))
        self._tile_outputs = FeatureCache(tiles if feature_cache_size > 0 else 0)

    @property
    def name(self) -> str:
        return str(self.meta.get("model_name", "model"))

    def _text_inputs(self, text: str | None, batch: int, required: bool = True):
        if not self.uses_text:
            return None, None
        if not required and (text is None or not text.strip()):
            return None, None  # clicks alone: click training runs some batches without text
        if text is None or not text.strip():
            raise ValueError("this model reads text: type a description of the image first")
        feats = self.text_encoder.encode([validate_text(text)] * batch).to(self.device)
        return feats.tokens, feats.mask

    def encode_text_ahead(self, text: str) -> bool:
        """Encode ``text`` into the text cache now, e.g. while the user is still typing.

        A prompt with that text then skips the text encoder (about 9 ms for a sentence with the
        default encoder on one CPU core, a large share of a re-prompt). Returns False, without
        raising, when the model reads no text or the text is not usable yet.
        """
        if not self.uses_text:
            return False
        try:
            self.text_encoder.encode([validate_text(text)])
        except (TypeError, ValueError):
            return False
        return True

    @torch.inference_mode()
    def _run(
        self, batch: np.ndarray, text: str | None, fingerprint: str | None = None
    ) -> np.ndarray:
        """batch: float32 ``[N, S, S, 3]`` -> probabilities ``[N, S, S]``.

        With feature reuse, the image features are looked up and stored under the batch's own
        fingerprint; a caller that already looked ``fingerprint`` up and missed passes it, and
        the features are computed and stored under it.
        """
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(self.device)
        if not self.reuses_features:
            tokens, mask = self._text_inputs(text, x.shape[0])
            with autocast(self.device):
                logits = self.model(x, tokens, mask)
            return torch.sigmoid(logits.float())[:, 0].cpu().numpy()
        key = self._cache_key(fingerprint or image_fingerprint(batch))
        feats = None if fingerprint is not None else self.feature_cache.get(key)
        if feats is None:
            with autocast(self.device):
                feats = self.model.encode_image(x)
            self.feature_cache.put(key, feats)
        return self._decode(feats, text)

    @torch.inference_mode()
    def _decode(self, feats: Any, text: str | None) -> np.ndarray:
        """The text-dependent part on cached image features -> probabilities ``[N, S, S]``."""
        tokens, mask = self._text_inputs(text, feats.batch)
        with autocast(self.device):
            logits = self.model.decode(feats, tokens, mask)
        return torch.sigmoid(logits.float())[:, 0].cpu().numpy()

    def _cache_key(self, fingerprint: str) -> tuple:
        # The weights' version: features of old weights are never reused after a reload.
        return (model_version(self.model), self.model.training, str(self.device), fingerprint)

    def clear_cache(self) -> None:
        """Forget the cached image features and tile outputs (they are also not used once the
        weights change)."""
        self.feature_cache.clear()
        self._tile_outputs.clear()

    def _window(self, window: Window | tuple[float, float] | str | None) -> Window | None:
        return self.window if window is None else as_window(window)

    @guarded
    def predict_prob(
        self,
        image: np.ndarray,
        text: str | None = None,
        *,
        window: Window | tuple[float, float] | str | None = None,
        clicks: Any = None,
        box: Any = None,
        previous: np.ndarray | None = None,
    ) -> np.ndarray:
        """Probability map float32 ``[H, W]`` for a 2D image ``[H, W]`` or ``[H, W, C]``;
        ``window``: a CT window for this call (``None``: the Predictor's); ``clicks``,
        ``box``, ``previous``: prompts, see :meth:`predict`."""
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"expected a 2D image [H, W] or [H, W, C] with C in 1, 3, 4; got shape "
                f"{image.shape}: pick one slice of a volume first"
            )
        height, width = image.shape[:2]
        value_range = input_range(image, self._window(window))
        prompt = check_prompts(clicks, box, previous, (height, width))
        if prompt is not None:
            return self._prompted_prob(image, text, value_range, prompt)
        if self.uses_tiles((height, width)):
            return self.tiled_prob(to_float01(image, value_range=value_range), text)
        fingerprint = None
        if self.reuses_features and image.dtype.kind in "biuf":
            # Keyed by the raw pixels (and the window): a re-prompt skips the preprocessing too.
            fingerprint = f"raw:{value_range}:" + image_fingerprint(image)
            feats = self.feature_cache.get(self._cache_key(fingerprint))
            if feats is not None:
                prob = self._decode(feats, text)[0]
                return resize_prob(prob, (height, width)).astype(np.float32)
        small = resize_image(to_float01(image, value_range=value_range), self.img_size)
        prob = self._run(small[None], text, fingerprint)[0]
        return resize_prob(prob, (height, width)).astype(np.float32)

    def _prompted_prob(
        self, image: np.ndarray, text: str | None, value_range: Any, prompt: PromptInput
    ) -> np.ndarray:
        """The whole-image path with prompt maps: image resized once per image (cached), the
        prompts mapped to the model size, one full model pass (the prompts enter at the first
        convolution, so no image features can be reused across clicks)."""
        height, width = image.shape[:2]
        if not self.reads_prompts:
            raise ValueError(
                f"model {self.name!r} reads no clicks or boxes: use a checkpoint trained with "
                "`napari-lvit train --clicks`, or correct the mask with the brush"
            )
        if self.uses_tiles((height, width)):
            return self._tiled_prompted_prob(
                to_float01(image, value_range=value_range), text, prompt
            )
        # the resized image depends on the pixels, the scaling and the size, not the weights
        key = (self.img_size, str(value_range), image_fingerprint(image))
        small = self._inputs.get(key)
        if small is None:
            small = resize_image(to_float01(image, value_range=value_range), self.img_size)
            self._inputs.put(key, small)
        size = self.img_size
        clicks, box = prompt.scaled_to(size)
        prev = None
        if prompt.previous is not None:
            prev = torch.from_numpy(resize_prob(prompt.previous, (size, size)))[None, None]
        maps = encode_prompts(size, [clicks], [box], prev, device=self.device)
        x = torch.from_numpy(np.ascontiguousarray(small[None])).permute(0, 3, 1, 2)
        prob = self._run_prompted(x, maps, text)[0]
        return resize_prob(prob, (height, width)).astype(np.float32)

    def _run_prompted(self, x: torch.Tensor, maps: torch.Tensor, text: str | None) -> np.ndarray:
        """Images ``[N, C, S, S]`` with prompt maps ``[N, 4, S, S]`` -> probabilities
        ``[N, S, S]`` (one full pass: the prompts enter at the first convolution)."""
        tokens, mask = self._text_inputs(text, x.shape[0], required=False)
        with (
            torch.inference_mode(),
            autocast(self.device),
            prompting(self.model, maps.to(self.device)),
        ):
            logits = self.model(x.to(self.device), tokens, mask)
        return torch.sigmoid(logits.float())[:, 0].cpu().numpy()

    @guarded
    def predict(
        self,
        image: np.ndarray,
        text: str | None = None,
        threshold: float | None = None,
        *,
        window: Window | tuple[float, float] | str | None = None,
        clicks: Any = None,
        box: Any = None,
        previous: np.ndarray | None = None,
    ) -> Prediction:
        """Probability map and mask at the image's own size.

        Prompts (models with ``reads_prompts`` only), in the image's pixel coordinates:
        ``clicks`` ``[(y, x, +1 | -1), ...]`` (+1 adds to the mask, -1 removes), ``box``
        ``(y0, x0, y1, x1)`` around the object, ``previous`` the mask or probabilities
        ``[H, W]`` being corrected (the last prediction, or the user's edit of it). With
        prompts the text may be left out (clicks alone). Bad prompts (outside the image, a box
        without area) are refused with a message
        (:func:`~src_models.inference_checks.check_prompts`).
        """
        cut = self.threshold if threshold is None else float(threshold)
        prob = self.predict_prob(
            image, text, window=window, clicks=clicks, box=box, previous=previous
        )
        return Prediction(prob=prob, mask=prob >= cut, threshold=cut, text=text)

    def predict_slices(
        self,
        volume: np.ndarray,
        text: str | None = None,
        *,
        window: Window | tuple[float, float] | str | None = None,
        batch_size: int = 8,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Probabilities of every slice of a grayscale volume ``[Z, H, W]``, ``batch_size``
        slices per model call: yields ``(first slice, probabilities [n, H, W])`` after each
        call, so a caller can show progress and stop between them.

        Every slice is seen on one intensity scale: the window's (``None``: the Predictor's)
        where one applies, else the whole volume's range (as the project's training data);
        8-bit volumes are scaled by 255. Checkpoints that predict tile by tile do so per slice.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        shape = tuple(int(s) for s in np.shape(volume))
        if len(shape) != 3:
            raise ValueError(f"expected a grayscale volume [Z, H, W], got shape {shape}")
        check_image(np.empty(shape[1:], np.uint8), self.max_pixels)
        w = self._window(window)
        dtype = getattr(volume, "dtype", None)
        dtype = np.asarray(volume).dtype if dtype is None else np.dtype(dtype)
        if w is not None and window_applies(dtype):
            value_range: tuple[float, float] | None = w.range
        elif dtype in (np.uint8, np.bool_):
            value_range = None
        else:
            value_range = (float(np.min(volume)), float(np.max(volume)))
        tiled = self.uses_tiles(shape[1:])
        for start in range(0, shape[0], batch_size):
            planes = [
                to_float01(np.asarray(volume[z]), value_range=value_range)
                for z in range(start, min(start + batch_size, shape[0]))
            ]
            if tiled:
                probs = np.stack([self.tiled_prob(p, text, batch_size) for p in planes])
            else:
                x = np.stack([resize_image(p, self.img_size) for p in planes])
                small = self._run(x, text)
                probs = np.stack([resize_prob(p, shape[1:]) for p in small])
            check_finite_prob(probs, self.name)
            yield start, probs.astype(np.float32, copy=False)

    def uses_tiles(self, shape: tuple[int, int]) -> bool:
        """Does an image of ``shape`` (``(H, W)``) go through the sliding window?"""
        return self.resolution is not None or (self.tile and max(shape) > self.tile_min_side)

    def _tiling(self) -> tuple[WorkingResolution, float]:
        """``(resolution, overlap)`` of the sliding window: the checkpoint's working resolution,
        else (``tile=``) native tiles with a half-tile stride."""
        if self.resolution is not None:
            return self.resolution, 0.25
        return WorkingResolution("patches", self.img_size, 1.0), 0.5

    def tiled_prob(self, image01: np.ndarray, text: str | None, batch_size: int = 4) -> np.ndarray:
        """The sliding window over a float image in [0, 1] -> probabilities ``[H, W]``
        (:meth:`_tiling`)."""
        res, overlap = self._tiling()
        prob = predict_tiled(
            image01, self._tile_fn(text), res, overlap=overlap, batch_size=batch_size
        )
        return np.asarray(prob, dtype=np.float32)

    def _tiled_prompted_prob(
        self, image01: np.ndarray, text: str | None, prompt: PromptInput, batch_size: int = 4
    ) -> np.ndarray:
        """The sliding window with prompts: the image at the working resolution with the four
        prompt maps drawn at that resolution as extra channels (click disks of the model's
        radius), cut into the tiles together; each tile's maps go to the model beside it. A
        tile whose input is the same as in an earlier call is not run again."""
        res, overlap = self._tiling()
        height, width = image01.shape[:2]
        work = rescale_image(image01, res)  # [h, w, 3]
        shape = work.shape[:2]
        clicks, box = prompt.scaled_to(shape)
        prev = None
        if prompt.previous is not None:
            prev = torch.from_numpy(resize_prob(prompt.previous, shape))[None, None]
        maps = encode_prompts(shape, [clicks], [box], prev, radius=click_radius(res.patch))
        stacked = np.concatenate([work, maps[0].permute(1, 2, 0).numpy()], axis=-1)
        channels = work.shape[-1]

        def fn(tiles: torch.Tensor) -> np.ndarray:
            keys = [self._cache_key(f"{text!r}:{image_fingerprint(t.numpy())}") for t in tiles]
            outs = [self._tile_outputs.get(k) for k in keys]
            todo = [i for i, o in enumerate(outs) if o is None]
            if todo:
                probs = self._run_prompted(tiles[todo, :channels], tiles[todo, channels:], text)
                for i, prob in zip(todo, probs, strict=True):
                    outs[i] = prob
                    self._tile_outputs.put(keys[i], prob)
            return np.stack(outs)

        # already at the working resolution: the window only cuts and blends
        native = WorkingResolution("patches", res.patch, 1.0)
        prob = predict_tiled(stacked, fn, native, overlap=overlap, batch_size=batch_size)
        return resize_prob(prob, (height, width)).astype(np.float32)

    def _tile_fn(self, text: str | None):
        """Tiles ``[B, C, S, S]`` -> probabilities ``[B, S, S]`` (for ``predict_tiled``)."""

        def fn(tiles: torch.Tensor) -> np.ndarray:
            batch = tiles.permute(0, 2, 3, 1).numpy()
            return self._run(np.ascontiguousarray(batch, dtype=np.float32), text)

        return fn


def _checkpoint_window(meta: dict[str, Any]) -> Window | None:
    """The window a checkpoint was trained with (``None``: none, or not a usable one)."""
    try:
        return as_window(meta.get("window"))
    except ValueError:
        warnings.warn(
            f"the checkpoint's window {meta.get('window')!r} is not (level, width): ignored",
            stacklevel=3,
        )
        return None


def _working_resolution(meta: dict[str, Any], img_size: int) -> WorkingResolution | None:
    """The checkpoint's patches-mode working resolution (``None``: whole images)."""
    stored = meta.get("working_resolution")
    if not isinstance(stored, dict):
        return None
    try:
        res = WorkingResolution.from_dict(stored)
    except (TypeError, ValueError):
        return None
    if res.is_whole:
        return None
    return WorkingResolution("patches", img_size, res.scale)

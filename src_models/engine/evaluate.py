"""Evaluation with the LViT protocol: per image, threshold the probability (``>= threshold``) at
the model's input size, Dice and IoU against the mask at that size, mean over images.

Also the helpers the trainer shares with evaluation: moving a batch to the device with its text
features, and deciding whether a run uses text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from src_models.device import autocast, resolve_device
from src_models.metrics import dice_per_image, iou_per_image


def resolve_use_text(model: nn.Module, text_encoder: Any, use_text: bool | None) -> bool:
    """Whether the model gets text: only text models, and only with a matching encoder.

    ``use_text=None`` means "if the model uses text". A text model with ``use_text=False`` is
    called with ``text=None``.
    """
    model_uses = bool(getattr(model, "uses_text", False))
    wanted = model_uses if use_text is None else bool(use_text) and model_uses
    if not wanted:
        return False
    name = getattr(model, "model_name", type(model).__name__)
    if text_encoder is None:
        raise ValueError(
            f"model {name!r} uses text: pass a text encoder, or use_text=False to run it without"
        )
    model_dim = getattr(model, "text_dim", None)
    if model_dim is not None and int(text_encoder.dim) != int(model_dim):
        raise ValueError(
            f"text encoder {getattr(text_encoder, 'id', '?')!r} gives {text_encoder.dim}-d "
            f"features but model {name!r} expects text_dim={model_dim}; build the model with "
            f"text_dim={text_encoder.dim}"
        )
    return True


def check_texts(dataset: Dataset) -> None:
    """Raise a clear error naming the first item whose text is empty (text runs need texts)."""
    texts = getattr(dataset, "texts", None)
    if texts is None:
        return
    names = getattr(dataset, "names", None)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            who = f"{names[i]!r} (item {i})" if names is not None else f"item {i}"
            raise ValueError(
                f"{who} has no text, but this run uses text: describe every image, "
                "or train with use_text=False"
            )


def check_masks(dataset: Dataset) -> None:
    """Raise a clear error naming the first item without a ground-truth mask."""
    has = getattr(dataset, "has_mask", None)
    if has is None:
        return
    names = getattr(dataset, "names", None)
    missing = [i for i, h in enumerate(has) if not h]
    if missing:
        i = missing[0]
        who = f"{names[i]!r} (item {i})" if names is not None else f"item {i}"
        raise ValueError(
            f"{len(missing)} items have no mask, first {who}: supervised training and "
            "validation need a mask for every image"
        )


def prepare_batch(
    batch: dict[str, Any], device: torch.device, text_encoder: Any = None, use_text: bool = False
) -> dict[str, Any]:
    """Tensors of a collated batch moved to ``device``; with text, adds ``text_tokens``
    ``[B, L, D]`` and ``text_mask`` ``bool[B, L]`` from the encoder's cache."""
    non_blocking = device.type == "cuda"
    out = {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
    if use_text:
        feats = text_encoder.encode(list(batch["text"]))
        out["text_tokens"] = feats.tokens.to(device, non_blocking=non_blocking)
        out["text_mask"] = feats.mask.to(device, non_blocking=non_blocking)
    return out


def model_forward(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """``model(image, text, text_mask)`` on a prepared batch -> logits ``[B, 1, S, S]``."""
    return model(batch["image"], text=batch.get("text_tokens"), text_mask=batch.get("text_mask"))


def _labelled(batch: dict[str, Any], n: int) -> torch.Tensor:
    has = batch.get("has_mask")
    if has is None:
        return torch.ones(n, dtype=torch.bool)
    return torch.as_tensor(has, dtype=torch.bool).reshape(n).cpu()


@torch.no_grad()
def iter_probs(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    text_encoder: Any = None,
    use_text: bool = False,
    amp: bool = True,
) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """Per batch: ``(batch, probabilities [B, 1, S, S] float32)``. The model must be in eval."""
    for raw in loader:
        batch = prepare_batch(raw, device, text_encoder, use_text)
        with autocast(device, amp):
            logits = model_forward(model, batch)
        yield batch, torch.sigmoid(logits.float())


def iter_scores(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    text_encoder: Any = None,
    use_text: bool = False,
    threshold: float = 0.5,
    amp: bool = True,
) -> Iterator[tuple[dict[str, Any], torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch: ``(batch, dice [B], iou [B], labelled bool [B])`` at the model size.

    Items whose ``has_mask`` is False (no ground truth) are marked unlabelled; do not count
    their scores. The model must be in eval mode.
    """
    for batch, probs in iter_probs(model, loader, device, text_encoder, use_text, amp):
        pred = probs >= threshold
        target = batch["mask"] > 0.5
        dice = dice_per_image(pred, target).cpu()
        iou = iou_per_image(pred, target).cpu()
        yield batch, dice, iou, _labelled(batch, dice.shape[0])


def _loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device):
    from src_models.data import collate

    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )


def _as_list(x: Any, n: int) -> Sequence[Any]:
    if x is None:
        return [None] * n
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return list(x)


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    text_encoder: Any = None,
    device: str | torch.device | None = "auto",
    threshold: float = 0.5,
    batch_size: int = 4,
    use_text: bool | None = None,
    num_workers: int = 0,
    amp: bool = True,
) -> dict[str, Any]:
    """Mean per-image Dice and IoU of ``model`` on ``dataset`` at the model's input size.

    Returns ``{"dice", "iou", "n", "n_unlabelled", "threshold", "protocol", "per_image":
    [{"name", "index", "dice", "iou"}, ...]}``; items without a ground-truth mask
    (``has_mask`` False) are left out. The model is moved to ``device`` and left there, in
    its former train/eval mode. ``use_text=None`` uses text when the model does (then
    ``text_encoder`` is required).
    """
    dev = resolve_device(device)
    use = resolve_use_text(model, text_encoder, use_text)
    if use:
        check_texts(dataset)
    was_training = model.training
    model.to(dev).eval()
    per_image: list[dict[str, Any]] = []
    try:
        loader = _loader(dataset, batch_size, num_workers, dev)
        for batch, dice, iou, labelled in iter_scores(
            model, loader, dev, text_encoder, use, threshold, amp
        ):
            n = dice.shape[0]
            names = _as_list(batch.get("name"), n)
            indices = _as_list(batch.get("index"), n)
            for i in range(n):
                if labelled[i]:
                    per_image.append(_row(names[i], indices[i], dice[i], iou[i]))
    finally:
        model.train(was_training)
    return _summary(per_image, threshold, "model_size", len(dataset))


def evaluate_native(
    model: nn.Module,
    dataset: Dataset,
    text_encoder: Any = None,
    device: str | torch.device | None = "auto",
    threshold: float = 0.5,
    batch_size: int = 4,
    use_text: bool | None = None,
    num_workers: int = 0,
    amp: bool = True,
) -> dict[str, Any]:
    """Like :func:`evaluate`, but scored at each image's original resolution.

    The model predicts at its input size; the probability map is resized back to the image's
    original size (bilinear, :func:`src_models.data.resize_prob`), thresholded, and compared with
    the mask file as stored. ``dataset`` must be a :class:`~src_models.data.SegmentationDataset`
    without augmentation (it knows each item's record and original size).
    """
    from src_models.data import load_image
    from src_models.data.io import mask_from_array
    from src_models.data.transforms import resize_prob

    for attr in ("records", "item_records", "original_shapes"):
        if not hasattr(dataset, attr):
            raise TypeError(
                "evaluate_native needs a SegmentationDataset (records and original sizes)"
            )
    if getattr(dataset, "augment", False):
        raise ValueError("evaluate_native needs a dataset without augmentation")
    dev = resolve_device(device)
    use = resolve_use_text(model, text_encoder, use_text)
    if use:
        check_texts(dataset)
    first_item: dict[int, int] = {}
    for i, r in enumerate(dataset.item_records):
        first_item.setdefault(r, i)
    cache: dict[int, Any] = {}

    def native_mask(index: int):
        rec_i = dataset.item_records[index]
        record = dataset.records[rec_i]
        if record.mask_path is None:
            return None
        if rec_i not in cache:
            cache.clear()  # items of one record are consecutive: keep one file in memory
            cache[rec_i] = load_image(record.mask_path, max_pixels=None)
        loaded = cache[rec_i]
        z = index - first_item[rec_i]
        return mask_from_array(loaded.slice(z) if loaded.is_volume else loaded.data, rgb=loaded.rgb)

    was_training = model.training
    model.to(dev).eval()
    per_image: list[dict[str, Any]] = []
    try:
        loader = _loader(dataset, batch_size, num_workers, dev)
        for batch, probs in iter_probs(model, loader, dev, text_encoder, use, amp):
            names = _as_list(batch.get("name"), probs.shape[0])
            for i, index in enumerate(_as_list(batch.get("index"), probs.shape[0])):
                target = native_mask(int(index))
                if target is None:
                    continue
                prob = resize_prob(probs[i, 0], dataset.original_shapes[int(index)])
                pred = torch.from_numpy(prob >= threshold)[None]
                gt = torch.from_numpy(target)[None]
                per_image.append(
                    _row(names[i], index, dice_per_image(pred, gt)[0], iou_per_image(pred, gt)[0])
                )
    finally:
        model.train(was_training)
    return _summary(per_image, threshold, "native", len(dataset))


def evaluate_full_size(predictor: Any, dataset: Dataset) -> dict[str, Any]:
    """Dice and IoU of ``predictor`` (a :class:`~src_models.inference.Predictor`) on each image
    of ``dataset`` (a :class:`~src_models.data.SegmentationDataset`) at the image's own size:
    the image file goes through ``predictor.predict`` (a patches-mode checkpoint predicts tile
    by tile at its working resolution) and is compared with the mask file as stored."""
    from src_models.data import load_image
    from src_models.data.io import mask_from_array, to_float01

    first_item: dict[int, int] = {}
    for i, r in enumerate(dataset.item_records):
        first_item.setdefault(r, i)
    texts = dataset.texts
    rows: list[dict[str, Any]] = []
    loaded: dict[str, Any] = {}
    for index, rec_i in enumerate(dataset.item_records):
        record = dataset.records[rec_i]
        if record.mask_path is None:
            continue
        z = index - first_item[rec_i]
        for key, path in (("image", record.image_path), ("mask", record.mask_path)):
            if loaded.get(key + "_path") != path:
                loaded[key] = load_image(path, max_pixels=None)
                loaded[key + "_path"] = path
        img, msk = loaded["image"], loaded["mask"]
        plane = img.slice(z) if img.is_volume else img.data
        target = mask_from_array(msk.slice(z) if msk.is_volume else msk.data, rgb=msk.rgb)
        pred = predictor.predict(to_float01(plane), texts[index] or None).mask
        p = torch.from_numpy(np.asarray(pred, dtype=bool))[None]
        g = torch.from_numpy(np.asarray(target, dtype=bool))[None]
        rows.append(
            _row(dataset.names[index], index, dice_per_image(p, g)[0], iou_per_image(p, g)[0])
        )
    return _summary(rows, float(predictor.threshold), "full_size", len(dataset))


def _row(name: Any, index: Any, dice: Any, iou: Any) -> dict[str, Any]:
    return {"name": name, "index": index, "dice": float(dice), "iou": float(iou)}


def _summary(rows: list[dict[str, Any]], threshold: float, protocol: str, total: int) -> dict:
    n = len(rows)
    return {
        "dice": sum(r["dice"] for r in rows) / n if n else float("nan"),
        "iou": sum(r["iou"] for r in rows) / n if n else float("nan"),
        "n": n,
        "n_unlabelled": total - n,
        "threshold": float(threshold),
        "protocol": protocol,
        "per_image": rows,
    }


def evaluate_left_right(
    predictor: Any, n: int = 50, size: int = 224, seed: int = 0, style: str = "short"
) -> dict[str, Any]:
    """Does the side word of the prompt move the mask?

    On ``n`` synthetic images with lesions in the same zones of both lungs
    (:func:`~src_models.data.synthetic.make_referring_pair`), ``predictor`` (a
    :class:`~src_models.inference.Predictor`) segments each image twice, with prompts that differ
    only in "left" / "right". Returns ``{"iou_between_prompts", "dice", "n", ...}``: the mean IoU
    between the two predicted masks (low: the text moves the mask; two empty masks count as 1)
    and the mean Dice of each prediction against the lesions its prompt names.
    """
    import numpy as np

    from src_models.data.synthetic import make_referring_pair

    between, dices = [], []
    for i in range(int(n)):
        image, texts, targets = make_referring_pair(
            np.random.default_rng([seed, 3, i]), size, style=style
        )
        masks = [predictor.predict(image, text).mask for text in texts]
        between.append(
            float(
                iou_per_image(torch.from_numpy(masks[0])[None], torch.from_numpy(masks[1])[None])[0]
            )
        )
        for mask, target in zip(masks, targets, strict=True):
            dices.append(
                float(
                    dice_per_image(torch.from_numpy(mask)[None], torch.from_numpy(target)[None])[0]
                )
            )
    return {
        "iou_between_prompts": float(np.mean(between)),
        "iou_between_prompts_median": float(np.median(between)),
        "dice": float(np.mean(dices)),
        "n": int(n),
        "size": int(size),
        "style": style,
    }

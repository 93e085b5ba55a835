"""GTGM-style pretraining of the image encoder on unlabeled images.

::

    data = pretrain_dataset("scans/", img_size=128)        # 2D images and 3D volumes (as slices)
    pre = Pretrainer(create_model("lvit_s", img_size=128), data, encoder, PretrainConfig())
    for epoch in pre.fit(): print(epoch)                    # PretrainEpoch(...)
    pre.save("pretrained.safetensors")
    # later: load_pretrained_encoder(create_model("lvit_s", img_size=128), "pretrained.safetensors")

The encoder is the model's CNN image encoder (``model.encoder``, a
:class:`~src_models.models.blocks.UNetEncoder`; ``model.seg.encoder`` for SKS). Each image is
seen as two augmented views (random square crop of 50-100% of the side zoomed back to the model
size, intensity jitter, noise; horizontal flips only when no text names a side). The global
average of each of the five encoder maps, concatenated, is the image's representation. Loss:

- ``bt_weight`` (0.01, GTGM) x Barlow Twins between the two views' projections
  (MLP ``-> proj_dim -> proj_dim``; batch-standardised; off-diagonal weight 0.0051);
- ``nce_weight`` x symmetric image-text InfoNCE (temperature 0.07) between a linear image
  projection of view 1 and a linear projection of the frozen sentence embedding of the image's
  text, where there is a text: the table's, else a template from the image-level label
  (``"No lesion."`` / ``"Lesion present."``). Identical texts are positives, not negatives.

The whole model is written as an ordinary checkpoint (its decoder untouched), so it rebuilds
itself; the projection heads are training-only and not saved.

Each image's two views are drawn from its own generator, seeded by (seed, epoch, image), so the
views do not depend on which process or batch an image lands in. Under torchrun every rank
takes its share of each epoch (``batch_size`` images per rank and step), BatchNorm and both
losses (Barlow Twins standardises over the batch, InfoNCE contrasts the batch) see the global
batch, gradients are averaged, epochs are reported by rank 0 and only rank 0 writes the
checkpoint: N ranks take the steps of one process with ``N * batch_size`` images.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from src_models.engine.checkpoint import CheckpointError, read_checkpoint_meta, save_checkpoint
from src_models.engine.distributed import Distributed
from src_models.engine.sync import gather_rows
from src_models.losses.barlow_twins import barlow_twins_loss
from src_models.losses.infonce import image_text_info_nce, text_groups

__all__ = [
    "LABEL_TEMPLATES",
    "PretrainConfig",
    "PretrainEpoch",
    "Pretrainer",
    "image_encoder",
    "load_pretrained_encoder",
    "pretrain_dataset",
    "pretrain_texts",
]

LABEL_TEMPLATES = {0: "No lesion.", 1: "Lesion present."}


@dataclass
class PretrainConfig:
    """Settings of :class:`Pretrainer` (see the module docstring)."""

    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-6
    proj_dim: int = 256
    bt_weight: float = 0.01
    off_diagonal_weight: float = 0.0051
    nce_weight: float = 1.0
    temperature: float = 0.07
    min_crop: float = 0.5  # smallest crop side, as a fraction of the image side
    jitter: float = 0.2  # intensity jitter strength
    label_templates: bool = True  # text from the image-level label where the table has none
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if int(self.epochs) < 1 or int(self.batch_size) < 2:
            raise ValueError("PretrainConfig: epochs >= 1 and batch_size >= 2 (batch statistics)")
        if not 0.0 < self.min_crop <= 1.0:
            raise ValueError(f"PretrainConfig.min_crop must be in (0, 1], got {self.min_crop}")
        if self.lr <= 0 or self.bt_weight < 0 or self.nce_weight < 0 or self.temperature <= 0:
            raise ValueError("PretrainConfig: lr, temperature > 0 and weights >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PretrainEpoch:
    """One pretraining epoch: mean total loss and its weighted terms."""

    epoch: int
    epochs: int
    loss: float
    barlow: float
    nce: float
    n_images: int
    n_text: int  # images with a text (table or template)
    seconds: float


# --------------------------------------------------------------------------- data


def pretrain_dataset(
    path: str | os.PathLike, img_size: int, in_chans: int = 3, seed: int = 0
) -> Any:
    """A :class:`~src_models.data.SegmentationDataset` of every image under ``path``.

    ``path`` is a split folder in the LViT layout (``img/``; masks are not needed), a plain
    folder of images (with an optional text table), or one image/volume file. Volumes
    (NIfTI, multi-page TIFF, multi-frame DICOM) become one item per slice.
    """
    from src_models.data.dataset import (
        DatasetError,
        SegmentationDataset,
        SegmentationRecord,
        _lookup_text,
        find_text_table,
        read_text_table,
        scan_split,
    )
    from src_models.data.io import image_suffix, is_image_file

    p = Path(path)
    if p.is_dir() and (p / "img").is_dir():
        records = scan_split(p, require_masks=False, check_sizes=False)
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and is_image_file(f))
        if not files:
            raise DatasetError(f"No images in '{p}'")
        table_path = find_text_table(p)
        table = read_text_table(table_path) if table_path is not None else {}
        records = []
        for f in files:
            stem = f.name[: len(f.name) - len(image_suffix(f.name))]
            text = _lookup_text(table, [f.name]) if table else None
            records.append(SegmentationRecord(stem, f, None, text or None))
    elif p.is_file():
        stem = p.name[: len(p.name) - len(image_suffix(p.name))]
        records = [SegmentationRecord(stem, p, None, None)]
    else:
        raise DatasetError(f"'{p}' does not exist")
    # masks are not used here: drop them (no size checks, no mask decoding)
    records = [dataclasses.replace(r, mask_path=None) for r in records]
    return SegmentationDataset(
        records, img_size, augment=False, seed=seed, in_chans=in_chans, require_masks=False
    )


def pretrain_texts(dataset: Any, label_templates: bool = True) -> list[str]:
    """The text of every item: the table's, else a label template, else ``""``."""
    texts = list(dataset.texts)
    labels = getattr(dataset, "labels", None)
    if label_templates and labels is not None:
        for i, label in enumerate(np.asarray(labels).tolist()):
            if not texts[i] and int(label) in LABEL_TEMPLATES:
                texts[i] = LABEL_TEMPLATES[int(label)]
    return texts


# --------------------------------------------------------------------------- model parts


def image_encoder(model: nn.Module) -> nn.Module:
    """The CNN image encoder of a registry model (``encoder``, or ``seg.encoder`` for SKS)."""
    for owner in (model, getattr(model, "seg", None)):
        enc = getattr(owner, "encoder", None)
        if isinstance(enc, nn.Module):
            return enc
    raise TypeError(f"{type(model).__name__} has no image encoder at .encoder or .seg.encoder")


def _encoder_prefix(model: nn.Module) -> str:
    return "encoder." if isinstance(getattr(model, "encoder", None), nn.Module) else "seg.encoder."


def _pooled(encoder: nn.Module, image: Tensor) -> Tensor:
    """Concatenated global averages of the encoder's maps: ``[B, sum C_k]``."""
    return torch.cat([f.mean(dim=(2, 3)) for f in encoder(image)], dim=1)


class _Heads(nn.Module):
    """Training-only projections: Barlow Twins MLP, image and text linear maps for InfoNCE."""

    def __init__(self, feat_dim: int, text_dim: int | None, proj: int) -> None:
        super().__init__()
        self.bt = nn.Sequential(
            nn.Linear(feat_dim, proj),
            nn.BatchNorm1d(proj),
            nn.ReLU(inplace=True),
            nn.Linear(proj, proj),
        )
        self.image = nn.Linear(feat_dim, proj)
        self.text = nn.Linear(text_dim, proj) if text_dim else None


def _view_generators(seed: int, epoch: int, index: Tensor) -> list[torch.Generator]:
    """One generator per image of a batch (its two views in turn), from (seed, epoch, image)."""
    return [
        torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) * 100_003 + int(i))
        for i in index.tolist()
    ]


def _views(images: Tensor, gens: list[torch.Generator], cfg: PretrainConfig, flip: bool) -> Tensor:
    """One random augmented view of every image ``[B, C, S, S]`` (same shape, in [0, 1]);
    image ``i`` draws from ``gens[i]``."""
    b, _, s, _ = images.shape
    out = []
    for i, gen in zip(range(b), gens, strict=True):
        u = torch.rand(6, generator=gen).tolist()
        side = max(2, int(round(s * (cfg.min_crop + (1.0 - cfg.min_crop) * u[0]))))
        y0 = int(u[1] * (s - side + 1)) if side < s else 0
        x0 = int(u[2] * (s - side + 1)) if side < s else 0
        v = images[i : i + 1, :, y0 : y0 + side, x0 : x0 + side]
        if side != s:
            v = F.interpolate(v, size=(s, s), mode="bilinear", align_corners=False)
        if flip and u[3] < 0.5:
            v = v.flip(-1)
        j = cfg.jitter
        v = (v - 0.5) * (1 + j * (2 * u[4] - 1)) + 0.5 + 0.5 * j * (2 * u[5] - 1)
        noise = torch.randn(v.shape, generator=gen) * (j / 10)
        out.append((v.clamp(0.0, 1.0) + noise.to(v.device)).clamp(0.0, 1.0))
    return torch.cat(out)


# --------------------------------------------------------------------------- training


class Pretrainer:
    """Pretrain ``model``'s image encoder (in place) on ``dataset``; see the module docstring.

    Args:
        model: a registry model with a CNN encoder (:func:`image_encoder`).
        dataset: items with ``image`` and ``index``, and ``texts`` (e.g.
            :func:`pretrain_dataset`).
        text_encoder: for the InfoNCE term (``sentence_embeddings`` or ``encode``); ``None``
            or no texts at all: Barlow Twins only.
        config: :class:`PretrainConfig`.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Any,
        text_encoder: Any = None,
        config: PretrainConfig | None = None,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.text_encoder = text_encoder
        self.config = config if config is not None else PretrainConfig()
        self.history: list[dict[str, Any]] = []
        self.texts = pretrain_texts(dataset, self.config.label_templates)
        self.n_text = sum(1 for t in self.texts if t)
        self.dist = Distributed()

    def fit(self) -> Iterator[PretrainEpoch]:
        """Train; yields one :class:`PretrainEpoch` per epoch (under torchrun: on rank 0)."""
        completed = False
        with self.dist.failures():
            try:
                for event in self._fit():
                    if self.dist.is_main:
                        yield event
                completed = True
            finally:
                self.dist.teardown(synchronize=completed)

    def _fit(self) -> Iterator[PretrainEpoch]:
        from src_models.data import collate
        from src_models.losses.lv import sentence_embeddings

        cfg = self.config
        dist = self.dist
        if len(self.dataset) < 2:
            raise ValueError("pretraining needs at least 2 images (batch statistics)")
        torch.manual_seed(cfg.seed)
        device = dist.setup(cfg.device)
        encoder = image_encoder(self.model)
        self.model.to(device)
        with torch.no_grad():
            probe = self.dataset[0]["image"][None].to(device)
            feat_dim = _pooled(encoder.eval(), probe).shape[1]
        use_text = self.text_encoder is not None and self.n_text > 0 and cfg.nce_weight > 0
        text_emb = groups = None
        if use_text:
            present = [t for t in self.texts if t]
            emb = sentence_embeddings(self.text_encoder, present)
            text_emb = torch.zeros(len(self.texts), emb.shape[1])
            text_emb[[i for i, t in enumerate(self.texts) if t]] = emb
            groups = text_groups(self.texts)
        heads = _Heads(feat_dim, None if text_emb is None else text_emb.shape[1], cfg.proj_dim)
        heads.to(device)
        dist.wrap(encoder)  # rank 0's weights everywhere, BatchNorm over the global batch
        dist.wrap(heads)
        params = [*encoder.parameters(), *heads.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sampler = dist.train_sampler(len(self.dataset), cfg.seed)
        batch = min(int(cfg.batch_size), len(sampler))
        loader = DataLoader(
            self.dataset,
            batch_size=batch,
            sampler=sampler,
            drop_last=True,  # Barlow Twins needs full batches
            collate_fn=collate,
        )
        flip = not bool(getattr(self.dataset, "spatial_text", False))
        was_training = self.model.training
        encoder.train()
        heads.train()
        try:
            for epoch in range(1, int(cfg.epochs) + 1):
                sampler.set_epoch(epoch)
                t0 = time.perf_counter()
                sums = np.zeros(3)
                steps = 0
                for items in loader:
                    x, idx = items["image"], items["index"]
                    gens = _view_generators(cfg.seed, epoch, idx)
                    v1 = _views(x, gens, cfg, flip).to(device)
                    v2 = _views(x, gens, cfg, flip).to(device)
                    h1, h2 = _pooled(encoder, v1), _pooled(encoder, v2)
                    rows = {"z1": heads.bt(h1), "z2": heads.bt(h2)}
                    if use_text:
                        rows.update(
                            image=heads.image(h1),
                            text=heads.text(text_emb[idx].to(device)),
                            groups=groups[idx].to(device),
                        )
                    rows = gather_rows(rows)  # the global batch (itself on one process)
                    bt = cfg.bt_weight * barlow_twins_loss(
                        rows["z1"], rows["z2"], cfg.off_diagonal_weight
                    )
                    nce = bt * 0.0
                    if use_text:
                        nce = cfg.nce_weight * image_text_info_nce(
                            rows["image"], rows["text"], rows["groups"], cfg.temperature
                        )
                    loss = bt + nce
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    dist.average_gradients(params)
                    opt.step()
                    sums += [float(loss.detach()), float(bt.detach()), float(nce.detach())]
                    steps += 1
                # every rank's losses are those of the global batch: the mean over all steps
                *totals, all_steps = dist.all_reduce_sum([*sums.tolist(), float(steps)])
                mean = np.asarray(totals) / max(all_steps, 1.0)
                event = PretrainEpoch(
                    epoch=epoch,
                    epochs=int(cfg.epochs),
                    loss=float(mean[0]),
                    barlow=float(mean[1]),
                    nce=float(mean[2]),
                    n_images=len(self.dataset),
                    n_text=self.n_text if use_text else 0,
                    seconds=time.perf_counter() - t0,
                )
                self.history.append(dataclasses.asdict(event))
                yield event
        finally:
            dist.release(encoder)
            dist.release(heads)
            self.model.train(was_training)

    def run(self) -> list[PretrainEpoch]:
        """Consume :meth:`fit`; return its epochs."""
        return list(self.fit())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model (pretrained encoder) as a checkpoint with the pretraining summary
        (under torchrun: rank 0 writes it; every rank returns its path)."""
        if not self.dist.is_main:
            return Path(path)
        encoder_id = getattr(self.text_encoder, "id", None) if self.text_encoder else None
        uses_text = bool(getattr(self.model, "uses_text", False))
        meta = {
            "text_encoder": encoder_id if uses_text else None,
            "training": {
                "kind": "pretrain",
                "pretrain": {
                    "config": self.config.to_dict(),
                    "n_images": len(self.dataset),
                    "n_text": self.n_text,
                    "text_encoder": encoder_id,
                    "encoder_prefix": _encoder_prefix(self.model),
                },
                "history": self.history,
            },
        }
        return save_checkpoint(path, self.model, meta)


def load_pretrained_encoder(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Copy the image-encoder tensors of checkpoint ``path`` into ``model``'s encoder.

    Works across model families that share the CNN encoder (e.g. pretrained ``lvit_s`` into
    ``sks_lvit_s`` or ``unet_s`` of the same width); tensors whose shape differs are skipped.
    Returns ``{"loaded": n, "total": tensors in the model's encoder, "skipped": [...]}``;
    raises :class:`CheckpointError` if nothing matches.
    """
    from safetensors.torch import load_file

    read_checkpoint_meta(path)  # a napari-lvit checkpoint, or a clear error
    tensors = load_file(str(path), device="cpu")
    src_prefix = next(
        (p for p in ("encoder.", "seg.encoder.") if any(k.startswith(p) for k in tensors)), None
    )
    if src_prefix is None:
        raise CheckpointError(f"{path} holds no image-encoder weights (no 'encoder.' tensors)")
    source = {k[len(src_prefix) :]: v for k, v in tensors.items() if k.startswith(src_prefix)}
    encoder = image_encoder(model)
    target = encoder.state_dict()
    loaded: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key, value in target.items():
        src = source.get(key)
        if src is not None and tuple(src.shape) == tuple(value.shape):
            loaded[key] = src
        else:
            skipped.append(key)
    if not any(v.ndim for v in loaded.values()):  # BatchNorm step counters alone fit anything
        raise CheckpointError(
            f"{path}: no encoder tensor fits this model (another width or input channels?)"
        )
    encoder.load_state_dict(loaded, strict=False)
    return {"loaded": len(loaded), "total": len(target), "skipped": skipped}

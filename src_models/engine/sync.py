"""One global batch over the ranks of a job: N processes with batches of ``b`` compute what one
process computes with batches of ``N * b``.

Two things in a training step see the whole batch rather than single images, and both are made
global here (differentiably; on one process they are the identity):

- **BatchNorm in training mode** normalises with the batch's statistics. :func:`sync_norms`
  turns a model's ``BatchNorm1d/2d/3d`` into versions whose mean and variance are taken over
  every rank's rows (two all-reduces per layer: the mean, then the centred second moment), and
  :func:`release_norms` turns them back; parameters, buffers and state-dict keys stay the same
  objects, so optimizers and checkpoints never notice. (``nn.SyncBatchNorm`` needs a GPU.)
- **Loss terms normalised over the batch** (class-balanced BCE counts the batch's foreground
  pixels, the supervised terms of a partly labeled batch average its labeled rows, ...):
  :func:`gather_rows` concatenates every rank's rows (rank order), with gradients flowing back
  to each rank's own rows, so every rank computes the loss of the global batch.

Gradients: a rank's loss on gathered rows is the global loss, and backpropagation through the
all-reduce brings each rank ``N`` times its share of the global gradient; averaging the gradients
over ranks (:meth:`~src_models.engine.distributed.Distributed.average_gradients`) leaves exactly
the gradient of one process. The engine uses these helpers; models and losses never see them.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["all_reduce_sum", "gather_rows", "release_norms", "sync_norms"]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device(t: Tensor) -> torch.device:
    return t.device if dist.get_backend() == "nccl" else torch.device("cpu")


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of all ranks' output
    gradients (each rank's loss depends on every input)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return _summed(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return _summed(grad)


def _summed(x: Tensor) -> Tensor:
    out = x.detach().to(_comm_device(x), copy=True).contiguous()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(x.device)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Differentiable sum of ``x`` over all ranks (``x`` itself on one process)."""
    return _AllReduceSum.apply(x) if _active() else x


# --------------------------------------------------------------------------- rows of a batch


def gather_rows(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every rank's rows of each tensor, concatenated in rank order (rows may differ in number
    between ranks; trailing shapes and keys may not). Differentiable; the tensors themselves on
    one process. Values travel as float32 (integers and booleans up to 2**24 stay exact) and come
    back in their own dtype."""
    if not tensors or not _active():
        return dict(tensors)
    world, rank = dist.get_world_size(), dist.get_rank()
    first = next(iter(tensors.values()))
    rows = int(first.shape[0])
    counts = torch.zeros(world, dtype=torch.float64, device=_comm_device(first))
    counts[rank] = rows
    dist.all_reduce(counts)
    sizes = [int(c) for c in counts.tolist()]
    before, total = sum(sizes[:rank]), sum(sizes)
    parts = []
    for key, t in tensors.items():
        if int(t.shape[0]) != rows:
            raise ValueError(f"gather_rows: {key!r} has {t.shape[0]} rows, not {rows}")
        width = math.prod(t.shape[1:])
        flat = t.reshape(rows, width).float()
        pad_before = flat.new_zeros(before, width)
        pad_after = flat.new_zeros(total - before - rows, width)
        parts.append(torch.cat([pad_before, flat, pad_after]).reshape(-1))
    summed = all_reduce_sum(torch.cat(parts))
    out: dict[str, Tensor] = {}
    offset = 0
    for key, t in tensors.items():
        n = total * math.prod(t.shape[1:])
        block = summed[offset : offset + n].reshape(total, *t.shape[1:])
        offset += n
        if t.dtype == torch.bool:
            block = block > 0.5
        elif not t.is_floating_point():
            block = block.round().to(t.dtype)
        else:
            block = block.to(t.dtype)
        out[key] = block
    return out


# --------------------------------------------------------------------------- BatchNorm


class _SyncMixin:
    """BatchNorm whose training statistics are those of every rank's rows (see module docs)."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _active()):
            return super().forward(x)  # type: ignore[misc]
        self._check_input_dim(x)  # type: ignore[attr-defined]
        return _sync_batch_norm(self, x)


def _sync_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    xf = x.float()
    channels = xf.shape[1]
    local = torch.cat([xf.sum(dims), xf.new_tensor([xf.numel() / channels])])
    total = all_reduce_sum(local)
    count = total[-1].detach()
    mean = total[:channels] / count
    centred = xf - mean.reshape(shape)
    var = all_reduce_sum((centred * centred).sum(dims)) / count
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            unbiased = var * (count / (count - 1)) if count > 1 else var
            bn.running_mean.mul_(1 - m).add_(mean.to(bn.running_mean.dtype), alpha=m)
            bn.running_var.mul_(1 - m).add_(unbiased.to(bn.running_var.dtype), alpha=m)
    y = centred * torch.rsqrt(var + bn.eps).reshape(shape)
    if bn.affine:
        y = y * bn.weight.float().reshape(shape) + bn.bias.float().reshape(shape)
    return y.to(x.dtype)


_PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_SYNCED = {cls: type(f"Synced{cls.__name__}", (_SyncMixin, cls), {}) for cls in _PLAIN}
_PLAIN_OF = {v: k for k, v in _SYNCED.items()}


def sync_norms(model: nn.Module) -> int:
    """Make ``model``'s BatchNorm layers synchronise their training statistics over ranks (in
    place, by class; nothing else changes). Returns how many layers it changed."""
    n = 0
    for m in model.modules():
        cls = _SYNCED.get(type(m))
        if cls is not None:
            m.__class__ = cls
            n += 1
    return n


def release_norms(model: nn.Module) -> int:
    """Undo :func:`sync_norms`: plain BatchNorm layers again. Returns how many it changed."""
    n = 0
    for m in model.modules():
        cls = _PLAIN_OF.get(type(m))
        if cls is not None:
            m.__class__ = cls
            n += 1
    return n

"""Distributed data parallel, detected from the environment (``torchrun``), invisible to models.

On a single process every method here is a cheap no-op, so the trainer has one code path.
``torchrun --nproc_per_node=N script.py`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
then :meth:`Distributed.setup` joins the process group (NCCL on CUDA, gloo on the CPU), each
process takes GPU ``LOCAL_RANK`` (if CUDA), the model is wrapped in DDP, the training set is split
by a :class:`~torch.utils.data.DistributedSampler`, validation metrics are summed over ranks and
only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

from src_models.device import resolve_device


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a job (1 process, rank 0 when not launched by torchrun)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (as set by torchrun)."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ValueError(f"bad torchrun environment variables: {exc}") from exc
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torchrun environment: WORLD_SIZE={world}, RANK={rank}")
    return DistEnv(world_size=world, rank=rank, local_rank=local)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: no padding, so no image is counted twice."""

    def __init__(self, n: int, world_size: int = 1, rank: int = 0) -> None:
        self.n, self.world_size, self.rank = n, world_size, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class Distributed:
    """Process-group lifecycle and the few collectives the engine needs."""

    def __init__(self, env: DistEnv | None = None) -> None:
        self.env = env if env is not None else detect_env()
        self.device = torch.device("cpu")
        self._owns_group = False

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    @property
    def active(self) -> bool:
        """True when collectives run (more than one process and a process group)."""
        return self.env.is_distributed and dist.is_available() and dist.is_initialized()

    def setup(self, device: str | torch.device | None = "auto") -> torch.device:
        """Pick this process's device and join the process group if launched by torchrun."""
        dev = resolve_device(device)
        if self.env.is_distributed:
            if not dist.is_available():
                raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
            if dev.type == "cuda":
                dev = torch.device("cuda", self.env.local_rank)
                torch.cuda.set_device(dev)
            if not dist.is_initialized():
                backend = "nccl" if dev.type == "cuda" else "gloo"
                dist.init_process_group(
                    backend=backend, rank=self.env.rank, world_size=self.env.world_size
                )
                self._owns_group = True
        self.device = dev
        return dev

    def teardown(self, synchronize: bool = True) -> None:
        """Leave the process group if :meth:`setup` created it.

        With ``synchronize`` all ranks meet at a barrier first: a gloo rank that destroys its
        group while a peer is still busy (rank 0 writing the last checkpoint) can abort with
        "terminate called without an active exception"."""
        if self._owns_group and dist.is_initialized():
            if synchronize:
                dist.barrier()
            dist.destroy_process_group()
        self._owns_group = False

    def wrap(self, model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """DDP-wrap ``model`` (already on this process's device) when distributed."""
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=find_unused_parameters
        )

    def train_sampler(self, n: int, seed: int, shuffle: bool = True) -> DistributedSampler:
        """A sampler reshuffled by ``set_epoch(epoch)`` from ``seed`` (exactly reproducible).

        Used on a single process too (one replica): the order depends only on seed and epoch,
        so a resumed run sees the same batches as an uninterrupted one.
        """
        return DistributedSampler(
            range(n),  # only its length is used
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=shuffle,
            seed=seed,
        )

    def eval_sampler(self, n: int) -> ShardSampler:
        return ShardSampler(n, self.world_size, self.rank)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over all ranks (identity on one process)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if not self.active:
            return bool(flag)
        return self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0

    def sync_buffers(self, model: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running stats) over ranks.

        DDP keeps parameters identical; each rank's BatchNorm statistics drift with its own
        batches. Averaging them at the end of an epoch makes every rank hold the same model.
        """
        if not self.active:
            return
        for buf in unwrap(model).buffers():
            if buf.is_floating_point():
                tmp = buf.detach().to(self._comm_device(), copy=True)
                dist.all_reduce(tmp, op=dist.ReduceOp.SUM)
                buf.copy_(tmp / self.world_size)
            else:
                tmp = buf.detach().to(self._comm_device(), copy=True)
                dist.broadcast(tmp, src=0)
                buf.copy_(tmp)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP (or ``torch.compile``) wrapper."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model

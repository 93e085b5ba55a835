"""Distributed data parallel, detected from the environment (``torchrun``), invisible to models.

On a single process every method here is a cheap no-op, so the engine has one code path.
``torchrun --nproc_per_node=N script.py`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
then :meth:`Distributed.setup` joins the process group (NCCL on CUDA, gloo on the CPU), each
process takes GPU ``LOCAL_RANK`` (if CUDA), :meth:`Distributed.wrap` gives every rank rank 0's
weights and makes BatchNorm use the statistics of the global batch
(:mod:`src_models.engine.sync`), the training set is split by a
:class:`~torch.utils.data.DistributedSampler`, gradients are averaged after each backward
(:meth:`Distributed.average_gradients`, one flat all-reduce per bucket), validation metrics are
summed over ranks and only rank 0 writes files.

Gradients are averaged explicitly rather than by ``DistributedDataParallel``: a step may run the
model more than once (CLCC's patch pass) or leave parameters unused (a text model trained
without text), which DDP's reducer does not allow; and with the loss computed on gathered rows
(:func:`~src_models.engine.sync.gather_rows`) and synchronised BatchNorm, N ranks with batches of
``b`` take the same steps as one process with batches of ``N * b``.

A process that dies (killed, out of memory) makes the collectives of the others fail, and
torchrun then stops them with SIGTERM; both end as :class:`RankLostError` (a one-line
:class:`~src_models.errors.UserError`), after the ``finally`` blocks that keep files whole.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

from src_models.device import resolve_device
from src_models.engine.sync import release_norms, sync_norms
from src_models.errors import UserError

#: Gradients are all-reduced in flat buckets of at most this many elements.
BUCKET_ELEMENTS = 1 << 24

#: Set once this process knows that its job is ending (a peer stopped): the launcher's SIGTERM
#: that follows must not interrupt the clean-up that keeps files and records whole.
_ENDING = threading.Event()


class RankLostError(UserError):
    """Another process of this torchrun job stopped (killed, crashed, out of memory), so this
    one ends too. What was written stays whole (every file is replaced atomically)."""

    hint = (
        "what was saved is intact: rerun the same command (with --resume where it has one) "
        "to continue from the last completed epoch or round"
    )


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
        self._old_sigterm: Any = None

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
                self._catch_sigterm()
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
        if self._owns_group:
            self._restore_sigterm()
        self._owns_group = False

    # ---------------------------------------------------------------------------- the model

    def wrap(self, model: nn.Module) -> nn.Module:
        """Prepare ``model`` (on this process's device) for training on every rank: rank 0's
        parameters and buffers everywhere, BatchNorm over the global batch. Returns ``model``
        itself (gradients are averaged by :meth:`average_gradients`); undone by
        :meth:`release`. Nothing happens on one process."""
        if self.active:
            self.broadcast_tensors([*model.parameters(), *model.buffers()])
            sync_norms(model)
        return model

    def release(self, model: nn.Module) -> None:
        """Undo :meth:`wrap`'s BatchNorm change (after training)."""
        release_norms(unwrap(model))

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Replace every parameter's gradient by its mean over ranks (after ``backward``).

        A parameter without a gradient on some ranks counts as zero there; one without a
        gradient on every rank keeps ``grad = None`` (the optimizer then skips it, as on one
        process)."""
        if not self.active:
            return
        params = [p for p in params if p.requires_grad]
        for bucket in _buckets(params):
            ref = bucket[0]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in bucket]
            flags = torch.tensor(
                [p.grad is not None for p in bucket], dtype=ref.dtype, device=ref.device
            )
            flat = torch.cat([g.reshape(-1) for g in grads] + [flags])
            comm = flat.to(self._comm_device())
            dist.all_reduce(comm, op=dist.ReduceOp.SUM)
            flat = comm.to(ref.device) / self.world_size
            offset = 0
            used = flat[-len(bucket) :] > 0
            for p, has in zip(bucket, used.tolist(), strict=True):
                n = p.numel()
                if has:
                    view = flat[offset : offset + n].view_as(p)
                    if p.grad is None:
                        p.grad = view.clone()
                    else:
                        p.grad.copy_(view)
                offset += n

    def broadcast_tensors(self, tensors: Iterable[torch.Tensor], src: int = 0) -> None:
        """Copy rank ``src``'s values of ``tensors`` (same shapes on every rank) in place."""
        if not self.active:
            return
        with torch.no_grad():
            for bucket in _buckets(list(tensors)):
                flat = torch.cat([t.detach().reshape(-1) for t in bucket]).to(self._comm_device())
                dist.broadcast(flat, src=src)
                offset = 0
                for t in bucket:
                    t.copy_(flat[offset : offset + t.numel()].view_as(t))
                    offset += t.numel()

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

    def gather_objects(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every rank's ``obj`` (picklable) on rank ``dst``, in rank order; ``None`` elsewhere.
        ``[obj]`` on one process."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` on one process."""
        if not self.active:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    # ------------------------------------------------------------------- a process that dies

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Turn the error a collective raises when a peer process died into one
        :class:`RankLostError` (other exceptions pass unchanged)."""
        try:
            yield
        except RankLostError:
            _ENDING.set()
            raise
        except Exception as exc:
            if self.env.is_distributed and is_peer_failure(exc):
                _ENDING.set()
                raise RankLostError(
                    f"rank {self.rank} of {self.world_size}: another process of this torchrun "
                    "job stopped (killed or crashed), so the job ends"
                ) from exc
            raise

    def _catch_sigterm(self) -> None:
        """torchrun stops the other processes of a job with SIGTERM when one of them dies: end
        with a :class:`RankLostError` (and run the ``finally`` blocks) instead of vanishing."""
        if threading.current_thread() is not threading.main_thread():
            return
        rank, world = self.rank, self.world_size

        def stop(signum, frame):
            if _ENDING.is_set():  # already ending: let the clean-up finish
                return
            _ENDING.set()
            raise RankLostError(
                f"rank {rank} of {world} was stopped by the launcher (SIGTERM), which torchrun "
                "does when another process of the job ended"
            )

        _ENDING.clear()
        self._old_sigterm = signal.signal(signal.SIGTERM, stop)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
        self._old_sigterm = None

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


_PEER_SIGNS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "gloo",
    "nccl",
    "processgroup",
)


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is what a collective raises when another rank is gone."""
    kinds = tuple(getattr(dist, name) for name in ("DistError",) if hasattr(dist, name))
    if kinds and isinstance(exc, kinds):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(sign in text for sign in _PEER_SIGNS)


def _buckets(tensors: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Consecutive runs of tensors of one dtype and device, each at most
    :data:`BUCKET_ELEMENTS` elements (a larger tensor alone)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        same = not bucket or (t.dtype == bucket[0].dtype and t.device == bucket[0].device)
        if bucket and (not same or size + t.numel() > BUCKET_ELEMENTS):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP (or ``torch.compile``) wrapper."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model

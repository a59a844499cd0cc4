"""torchrun / DDP plumbing: process group set-up, rank helpers and the resumable batch sampler."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "DistributedSetupError", "init_distributed", "cleanup_distributed", "GlobalBatchSampler",
           "keep_grad_layouts",
           "all_reduce_mean", "broadcast_buffers"]

#: How long joining the process group, and then any collective, may wait by default (seconds).
DEFAULT_DIST_TIMEOUT_S = 300.0


class DistributedSetupError(RuntimeError):
    """The process group could not be formed in time; the message names the master address tried, this
    host and the fix."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = DEFAULT_DIST_TIMEOUT_S) -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on GPU).

    ``device``: ``auto`` (cuda if available), ``cpu``, ``cuda`` or ``cuda:N``; under torchrun each rank
    takes ``cuda:LOCAL_RANK``. ``timeout_s`` bounds the rendezvous with the other processes and, after
    it, every collective wait (``train.dist_timeout_s``).

    Raises:
        DistributedSetupError: the group could not be formed within ``timeout_s``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={device!r} but CUDA is not available; use train.device=cpu")
        dev = torch.device("cuda", local if world > 1 else (torch.device(device).index or 0))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        _join_group("nccl" if dev.type == "cuda" else "gloo", rank, world, timeout_s)
    return DistInfo(rank, world, local, dev)


def _join_group(backend: str, rank: int, world: int, timeout_s: float) -> None:
    """``init_process_group`` bounded by ``timeout_s``, plus one collective so that a peer that cannot
    be reached fails here, with a message saying what to change, rather than at the first step."""
    timeout = timedelta(seconds=timeout_s)
    if rank > 0:
        # The processes that must reach the master say so first (and rank 0, which waits for them,
        # a little later): under torchrun a failing process makes the agents stop the others.
        unreachable = _unreachable_master(_MASTER_SHARE * timeout_s)
        if unreachable is not None:
            raise DistributedSetupError(_rendezvous_failure(rank, world, timeout_s, unreachable))
    try:
        dist.init_process_group(backend=backend, timeout=timeout)
        dist.barrier()
    except (RuntimeError, OSError, ValueError) as err:  # DistNetworkError, DistStoreError, gloo's errors
        if dist.is_initialized():
            dist.destroy_process_group()
        raise DistributedSetupError(_rendezvous_failure(rank, world, timeout_s, err)) from err


#: Share of ``train.dist_timeout_s`` a non-master process waits for the master's address to answer.
_MASTER_SHARE = 0.8


def _unreachable_master(seconds: float) -> OSError | None:
    """Try to open a connection to ``MASTER_ADDR:MASTER_PORT`` until one succeeds (None) or ``seconds``
    pass (the last error)."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None  # another init method: init_process_group says what is missing
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((addr, int(port)), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return None
        except OSError as err:
            if time.monotonic() >= deadline:
                return err
            time.sleep(0.2)


def _rendezvous_failure(rank: int, world: int, timeout_s: float, err: BaseException) -> str:
    """One line: the address tried, this host, what went wrong and the fix."""
    master = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__).rstrip(".")
    return (
        f"rank {rank} of {world} could not form the process group with the master {master} within "
        f"train.dist_timeout_s={timeout_s:g} s (this host: {socket.gethostname()}; {type(err).__name__}: "
        f"{first[:200]}). Check that every host can reach that address and port; with torchrun on several "
        "hosts pass --local-addr <this host's address> on each host (and --rdzv-conf is_host=1 on the "
        "rendezvous host), and name the network interface with GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME"
    )


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``value`` over ranks (a no-op for one process)."""
    if info.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def broadcast_buffers(module: nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics; a no-op for one process).

    Without SyncBatchNorm each DDP process updates its statistics from its own micro-batches, so the
    ranks drift apart; the checkpoint holds rank 0's, and validation must score what is saved.
    """
    if not info.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


class GlobalBatchSampler:
    """Yields this rank's micro-batches, optimizer step by optimizer step, in a seeded order.

    Each epoch draws one permutation from ``seed + epoch`` (as ``DistributedSampler`` does) and cuts it
    into global batches of ``world_size * micro_batch * accum`` items (an incomplete last global batch is
    dropped, like the official ``drop_last=True``). Inside a global batch, the ``k``-th block of
    ``micro_batch`` items goes to rank ``k % world_size`` as its ``k // world_size``-th micro-batch. So the
    set of items of every optimizer step does not depend on how it is split over processes and
    accumulation steps, and ``start_step`` skips the steps a resumed run has already taken.
    """

    def __init__(
        self,
        num_items: int,
        micro_batch: int,
        accum: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.num_items = int(num_items)
        self.micro_batch = int(micro_batch)
        self.accum = int(accum)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.start_step = 0
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training set has {num_items} items, fewer than one global batch of "
                f"{self.global_batch}; lower train.batch_size"
            )

    @property
    def global_batch(self) -> int:
        return self.world_size * self.micro_batch * self.accum

    @property
    def steps_per_epoch(self) -> int:
        return self.num_items // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch = int(epoch)
        self.start_step = int(start_step)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        for step in range(self.start_step, self.steps_per_epoch):
            base = step * self.global_batch
            for a in range(self.accum):
                k = a * self.world_size + self.rank
                lo = base + k * self.micro_batch
                yield order[lo : lo + self.micro_batch]


def keep_grad_layouts(module: nn.Module) -> int:
    """Make every convolution weight's gradient arrive with its parameter's strides; returns how many
    parameters got the hook.

    DDP copies each gradient into a bucket laid out like its parameter and warns ("Grad strides do not
    match bucket view strides") when the two differ. oneDNN may return the weight gradient of a
    convolution trained on channels-last maps channels-last (the head trains that way on CPU), which
    for a 1x1 kernel differs from the parameter only in the strides of its size-1 dimensions, so the
    autograd layout contract lets it through. The hook re-lays such a gradient out once, before it is
    accumulated, so DDP never sees a mismatch.
    """

    def relay(param: nn.Parameter):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            if grad.stride() == param.stride():
                return grad
            return torch.empty_strided(param.shape, param.stride(), dtype=grad.dtype, device=grad.device).copy_(grad)
        return hook

    count = 0
    for param in module.parameters():
        if param.requires_grad and param.dim() == 4:
            param.register_hook(relay(param))
            count += 1
    return count

"""torchrun / DDP plumbing: process group set-up, rank helpers and the resumable batch sampler."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "GlobalBatchSampler", "all_reduce_mean"]


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


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on GPU).

    ``device``: ``auto`` (cuda if available), ``cpu``, ``cuda`` or ``cuda:N``; under torchrun each rank
    takes ``cuda:LOCAL_RANK``.
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
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


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

"""Distributed data parallel: process-group setup from torchrun's environment, sharding,
and the one-writer rule (rank 0 writes checkpoints and logs; every rank trains).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass
class DistributedContext:
    """Who this process is. A single-process run is ``DistributedContext()``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def all_gather_object(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (tensors inside are sent as raw bytes)."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, _tensors_to_bytes(value))
        return [_bytes_to_tensors(item) for item in gathered]

    def mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks that have it (a collective: every rank calls)."""
        gathered = self.all_gather_object(values)
        keys = dict.fromkeys(k for item in gathered for k in item)
        return {k: sum(item[k] for item in gathered if k in item)
                / sum(k in item for item in gathered) for k in keys}


_TENSOR_TAG = "__tensor_bytes__"


def _tensors_to_bytes(value: Any) -> Any:
    """Replace tensors by plain bytes: unpickling tensors inside object collectives goes
    through torch's legacy storage loader, which fails for CPU tensors in some releases."""
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        return {_TENSOR_TAG: data.view(torch.uint8).numpy().tobytes() if data.numel() else b"",
                "dtype": str(data.dtype).replace("torch.", ""), "shape": list(data.shape)}
    if isinstance(value, dict):
        return {k: _tensors_to_bytes(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_tensors_to_bytes(v) for v in value)
    return value


def _bytes_to_tensors(value: Any) -> Any:
    if isinstance(value, dict) and _TENSOR_TAG in value:
        dtype = getattr(torch, value["dtype"])
        raw = torch.frombuffer(bytearray(value[_TENSOR_TAG]), dtype=torch.uint8) \
            if value[_TENSOR_TAG] else torch.empty(0, dtype=torch.uint8)
        return raw.view(dtype).reshape(value["shape"]).clone()
    if isinstance(value, dict):
        return {k: _bytes_to_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_bytes_to_tensors(v) for v in value)
    return value


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str | None = None) -> DistributedContext:
    """Join the process group that torchrun describes in RANK/WORLD_SIZE/MASTER_ADDR.

    Uses nccl when this rank trains on CUDA, gloo otherwise. Without torchrun (WORLD_SIZE
    unset or 1) it returns a single-process context and touches nothing.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = (device or "").startswith("cuda") or (device is None and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank,
                              backend=backend)


def shutdown_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


class ResumableSampler(Sampler[int]):
    """Epoch-seeded shuffling, sharded across ranks, that can start mid-epoch.

    The order of epoch ``e`` is a permutation drawn from a generator seeded with
    ``seed + e`` (so it does not depend on the global RNG), padded to a multiple of the
    world size by repeating its head, then dealt round-robin: rank r takes items r, r+W, ...
    ``skip`` drops the first ``skip`` of this rank's items, which is how a resumed run
    continues the epoch it was in.
    """

    def __init__(self, num_items: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if num_items <= 0:
            raise ValueError("cannot sample from an empty data set")
        self.num_items = num_items
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0

    def set_position(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip

    def per_rank(self) -> int:
        return -(-self.num_items // self.world_size)

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.skip)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_items, generator=generator).tolist()
        else:
            order = list(range(self.num_items))
        total = self.per_rank() * self.world_size
        order = (order * (total // len(order) + 1))[:total]
        mine = order[self.rank::self.world_size]
        return iter(mine[self.skip:])

"""The ``torchrun`` process group and the data order every rank agrees on."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` (gloo on the CPU, NCCL on
    CUDA devices)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def epoch_batches(
    num_samples: int, batch_size: int, epoch: int, seed: int, info: Distributed
) -> list[list[int]]:
    """This rank's batches of ``epoch``: a permutation drawn from ``(seed, epoch)``, cut into
    ``world_size × batch_size`` global batches (the remainder dropped), each split by rank."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_samples, generator=generator).tolist()
    global_batch = batch_size * info.world_size
    count = num_samples // global_batch
    first = info.rank * batch_size
    return [
        order[b * global_batch + first : b * global_batch + first + batch_size]
        for b in range(count)
    ]


def broadcast_module(module: nn.Module, info: Distributed) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not info.enabled:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.numel():
            dist.broadcast(tensor.data, src=0)


def all_reduce_gradients(parameters, info: Distributed) -> None:
    """Average the gradients of ``parameters`` over the ranks in one flat all-reduce (a
    parameter without a gradient takes part as zeros, so every rank sends the same layout)."""
    if not info.enabled:
        return
    params = [p for p in parameters if p.numel()]
    if not params:
        return
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
    )
    dist.all_reduce(flat)
    flat /= info.world_size
    for p, grad in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad = grad.reshape(p.shape).clone()

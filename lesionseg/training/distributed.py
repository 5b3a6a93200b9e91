"""Data-parallel training with PyTorch's own engine (``torchrun`` + DistributedDataParallel).

The stages start the ranks (``runtime.nproc_per_node``, ``stages/distributed.py``) and hand the library a
:class:`Distributed`; :func:`lesionseg.training.train.train_model` then splits every global batch of
``batch_size`` evenly over the ranks, averages gradients with DDP (NCCL on CUDA, gloo on CPU), synchronises
BatchNorm, and validates, logs and writes on rank 0 only. What each rank does: docs/scaling-out.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in a ``torchrun`` job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init(ctx: Distributed, device: torch.device) -> None:
    """Join the process group (rendezvous from torchrun's environment)."""
    if device.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(_backend_for(device), rank=ctx.rank, world_size=ctx.world_size)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics)."""
    for buffer in module.buffers():
        dist.broadcast(buffer, 0)


def all_gather_rows(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate equally shaped ``tensor`` s of all ranks along dim 0."""
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)

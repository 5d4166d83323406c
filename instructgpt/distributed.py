"""Data-parallel training across processes (DDP), and the same object for one process.

`init_distributed()` reads the variables `torchrun` sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and joins the process group: NCCL when the processes train on GPUs (one GPU per
process, picked by LOCAL_RANK), gloo on the CPU. Started without torchrun it returns a `Dist` of
world 1 whose collectives do nothing, so the training loop reads the same either way: it calls
`dist.all_reduce_mean`, `dist.barrier`, `dist.print`, `dist.progress`, `dist.main_only(callback)`
and never tests the rank itself.

Launching:

    # one machine, 8 GPUs (or 2 CPU processes: --nproc_per_node 2, gloo is picked by itself)
    torchrun --standalone --nproc_per_node 8 -m instructgpt.pretraining --shards data/shards ...

    # several machines: the same command on each, with that machine's --node_rank (0..nnodes-1)
    # and the address of node 0, which every node must reach on --master_port
    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --master_addr 10.0.0.1 --master_port 29500 \\
        -m instructgpt.pretraining ...
    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 1 --master_addr 10.0.0.1 --master_port 29500 \\
        -m instructgpt.pretraining ...

    # or elastic rendezvous, no fixed ranks (any node can host it): on every node
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint 10.0.0.1:29500 \\
        --rdzv_id pretrain-1 -m instructgpt.pretraining ...

Across machines the checkpoint directory must be on a filesystem every node sees (NFS, Lustre, a
mounted bucket): rank 0 writes checkpoints and every rank resumes from them. NCCL picks the network
itself; NCCL_SOCKET_IFNAME / NCCL_IB_HCA select interfaces when a machine has several, and
NCCL_DEBUG=INFO shows what it chose.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from instructgpt.hardware import select_device


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank, world size, and the device it trains on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_mean(self, tensor: Tensor) -> Tensor:
        """The mean of `tensor` over every process (a new tensor; the input is untouched)."""
        if self.world == 1:
            return tensor
        total = tensor.detach().clone()
        torch_dist.all_reduce(total, op=torch_dist.ReduceOp.SUM)  # gloo has no AVG
        return total / self.world

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around `model` (gradients averaged over processes in backward), or `model` itself."""
        if self.world == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def sync_gradients(self, model: nn.Module, sync: bool) -> ContextManager:
        """Forward and backward inside it all-reduce gradients only if `sync` (the last micro step)."""
        if sync or not isinstance(model, DistributedDataParallel):
            return nullcontext()
        return model.no_sync()

    def main_only(self, function: Callable[..., Any] | None) -> Callable[..., Any]:
        """`function` on rank 0; a function that does nothing elsewhere (and for None)."""
        if function is None or not self.is_main:
            return _nothing
        return function

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.is_main:
            print(*args, **kwargs, flush=True)

    def progress(self, **kwargs: Any) -> tqdm:
        """A tqdm bar drawn by rank 0 only."""
        return tqdm(disable=not self.is_main, dynamic_ncols=True, **kwargs)

    def close(self) -> None:
        if self.world > 1 and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def init_distributed(device: str = "auto") -> Dist:
    """Join the torchrun job this process belongs to, or a world of one if there is none.

    `device` as `hardware.select_device` takes it; under torchrun `auto` and `cuda` mean the GPU
    LOCAL_RANK names.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = select_device(device, local_rank)
    if world == 1:
        return Dist(0, 1, 0, chosen)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl", device_id=chosen)
    elif not torch_dist.is_initialized():
        torch_dist.init_process_group("gloo")
    return Dist(rank, world, local_rank, chosen)


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None

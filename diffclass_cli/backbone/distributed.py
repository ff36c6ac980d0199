"""torchrun support: notice a torch.distributed launch and set up its process group.

torchrun (and other launchers of torch.distributed) put RANK, WORLD_SIZE, LOCAL_RANK and
the rendezvous address in each process's environment; without them nothing changes.
"""

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from diffclass_cli.errors import DiffclassError


@dataclass(frozen=True)
class Launch:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def detect_launch() -> Launch:
    """This process's place in a torchrun launch, or a single process."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return Launch()
    return Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))


def start(launch: Launch, device: torch.device) -> torch.device:
    """Join the process group (NCCL on GPUs, gloo on CPUs); returns this rank's device."""
    if device.type == "cuda":
        if launch.local_rank >= torch.cuda.device_count():
            raise DiffclassError(f"local rank {launch.local_rank} has no GPU: this node has "
                                 f"{torch.cuda.device_count()}; start at most that many processes per node")
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop(launch: Launch) -> None:
    if launch.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def rank_rows(n: int, launch: Launch) -> np.ndarray:
    """The rows of an n-image source this rank reads (every world_size-th row; the last
    ranks repeat a few rows when n does not divide evenly, as DistributedSampler does)."""
    sampler = DistributedSampler(range(n), num_replicas=launch.world_size, rank=launch.rank, shuffle=False)
    return np.fromiter(iter(sampler), dtype=np.int64)


def sum_over_ranks(value: int, launch: Launch, device: torch.device) -> int:
    if not launch.is_distributed:
        return value
    total = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total.item())

"""Process placement: rank/world from torchrun's environment, the compute device, process groups.

Label generation needs no process group (ranks own disjoint chunks of one store);
training uses `init_distributed` (NCCL on GPUs, gloo on CPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from fkd_dali.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """Rank and world size as torchrun sets them (a single process without torchrun)."""
    return DistEnv(rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)),
                   local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` takes this rank's GPU when one exists, else the CPU: a GPU is used, never required."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but no CUDA GPU is visible")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if device == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")


def parse_shard(text: str | None, env: DistEnv) -> tuple[int, int]:
    """`--shard i/n` wins; else torchrun's rank/world; else the whole job (0/1)."""
    if text is None:
        return env.rank, env.world
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text}: need 0 <= i < n")
    return i, n

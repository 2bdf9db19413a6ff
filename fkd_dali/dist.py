"""Process placement: rank/world from torchrun's environment, the compute device, process groups.

Label generation needs no process group (ranks own disjoint chunks of one store);
training and evaluation use `distributed` (NCCL on GPUs, gloo on CPU), and training
stops on SIGTERM/SIGINT through `StopOnSignal`, agreed across ranks.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from fkd_dali.config import shard_of
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


def dali_device_id(device: torch.device | str) -> int | None:
    """DALI's `device_id` for a torch device: the CUDA ordinal, or None for the CPU-only pipeline."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def parse_shard(text: str | None, env: DistEnv) -> tuple[int, int]:
    """`--shard i/n` wins; else torchrun's rank/world; else the whole job (0/1)."""
    return (env.rank, env.world) if text is None else shard_of(text)


def _current_env() -> DistEnv:
    if dist.is_available() and dist.is_initialized():
        env = dist_env()
        return DistEnv(dist.get_rank(), dist.get_world_size(), env.local_rank)
    return dist_env()


@contextlib.contextmanager
def distributed(device_choice: str = "auto") -> Iterator[tuple[DistEnv, torch.device]]:
    """(env, device) for this process; initializes the torchrun process group (NCCL/gloo) if needed."""
    env = _current_env()
    device = pick_device(device_choice, env.local_rank)
    owns = env.world > 1 and not dist.is_initialized()
    if owns:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield env, device
    finally:
        if owns:
            dist.destroy_process_group()


def all_mean(value: torch.Tensor, world: int) -> float:
    """The mean of `value` over the `world` ranks (all of them must call this)."""
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return float(value)


def all_sum(value: torch.Tensor, world: int) -> torch.Tensor:
    """The element-wise sum of `value` over the `world` ranks, as a new tensor (all of them must call this)."""
    value = value.clone()
    if world > 1:
        dist.all_reduce(value)
    return value


class StopOnSignal:
    """SIGTERM/SIGINT set `signum` (finish the step, checkpoint, stop); a second SIGINT interrupts at once.

    Repeated SIGTERMs are ignored: launchers forward the signal they got to workers that
    already received it from the process group, and that must not cancel the checkpoint.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT and self.signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank got a signal (an all-reduce: every rank must call this at the same step)."""
        flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())

"""Process placement: torchrun's environment, devices, DALI device ids, shards, agreed stops on signals."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from fkd_dali.dist import DistEnv, StopOnSignal, all_mean, all_sum, dali_device_id, dist_env, parse_shard, pick_device
from fkd_dali.errors import ConfigError


def test_dist_env_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_env() == DistEnv(rank=3, world=8, local_rank=1)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert dist_env() == DistEnv(0, 1, 0) and dist_env().is_main


def test_devices():
    assert pick_device("cpu") == torch.device("cpu")
    assert dali_device_id(torch.device("cpu")) is None and dali_device_id("cpu") is None
    with pytest.raises(ConfigError, match="--device must be"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            pick_device("cuda")
    else:
        assert dali_device_id(torch.device("cuda", 0)) == 0


@pytest.mark.parametrize("text, env, want", [
    (None, DistEnv(2, 4), (2, 4)),
    (None, DistEnv(), (0, 1)),
    ("1/3", DistEnv(2, 4), (1, 3)),
])
def test_parse_shard(text, env, want):
    assert parse_shard(text, env) == want


@pytest.mark.parametrize("text", ["3/3", "-1/2", "a/b", "1"])
def test_bad_shards_are_refused(text):
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(text, DistEnv())


def test_all_mean_of_one_process():
    assert all_mean(torch.tensor(3.5), 1) == 3.5


def test_sigterm_asks_to_stop_and_a_second_sigint_interrupts():
    old = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        assert stop.signum is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # repeated (forwarded) SIGTERMs are ignored
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == old
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def _sum_on_rank(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        counts = torch.tensor([rank, 1, 10 * rank], dtype=torch.int64)  # e.g. crops per FerKD band
        total = all_sum(counts, 2)
        assert counts.tolist() == [rank, 1, 10 * rank]  # the input is left alone
        torch.save(total, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_all_sum_adds_every_ranks_tensor(tmp_path):
    import torch.multiprocessing as mp

    assert all_sum(torch.tensor([2, 3]), 1).tolist() == [2, 3]
    out = str(tmp_path / "sum")
    mp.spawn(_sum_on_rank, args=(f"file://{tmp_path / 'rendezvous'}", out), nprocs=2)
    assert [torch.load(f"{out}.{r}").tolist() for r in range(2)] == [[1, 2, 10], [1, 2, 10]]

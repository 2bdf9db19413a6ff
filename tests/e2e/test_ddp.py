"""Two gloo ranks on the CPU: the replay split (disjoint, equal, complete) and a torchrun training run
that is stopped by SIGTERM, checkpoints, and resumes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from fkd_dali.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
WORLD = 2


def _replay_rank(rank: int, init_file: str, store_path: str, root: str, out: str) -> None:
    import torch.distributed as dist

    from fkd_dali.data.index import build_index
    from fkd_dali.loaders.replay import ReplayLoader
    from fkd_dali.loaders.sources import StoreCrops
    from fkd_dali.store.opening import open_store

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    store, index = open_store(store_path), build_index(root)
    loader = ReplayLoader(StoreCrops(store, index.sizes), index, m=4, batch_size=8, size=32, mean=(0.5,) * 3,
                          std=(0.5,) * 3, seed=5, rank=rank, world=WORLD, threads=1)
    passes = []
    for p in range(2):
        steps = [b.meta.tolist() for b in loader.pass_batches(p)]
        passes.append(steps)
    loader.close()
    gathered: list = [None] * WORLD
    dist.all_gather_object(gathered, passes)  # through the gloo group
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_split_each_pass_into_disjoint_equal_parts(small_store, photo_root, photo_index, tmp_path):
    out = tmp_path / "metas.json"
    mp.spawn(_replay_rank, args=(str(tmp_path / "init"), str(small_store), str(photo_root), str(out)),
             nprocs=WORLD, join=True)
    per_rank = json.loads(out.read_text())
    n = len(photo_index)
    for p in range(2):
        slots = list(range(4 * p, 4 * p + 4))
        steps = [per_rank[r][p] for r in range(WORLD)]
        assert len(steps[0]) == len(steps[1]) == (n // WORLD) // 2  # equal iteration counts
        images = [{i for step in rank_steps for i, _ in step} for rank_steps in steps]
        assert not images[0] & images[1]  # disjoint
        union = images[0] | images[1]
        assert len(union) == n - n % WORLD  # the dataset minus the dropped tail (1 image)
        for rank_steps in steps:
            for step in rank_steps:
                for j in range(0, len(step), 4):
                    assert [s for _, s in step[j:j + 4]] == slots
    # the dropped image differs between passes: nobody is left out systematically
    dropped = [set(range(n)) - {i for r in range(WORLD) for st in per_rank[r][p] for i, _ in st} for p in range(2)]
    assert all(len(d) == 1 for d in dropped)


def _torchrun(photo_root, store, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
            "-m", "fkd_dali", "train", "--data", str(photo_root), "--labels", str(store), "--arch", "resnet10t",
            "-m", "4", "-b", "8", "--image-size", "48", "--opt", "adamw", "--lr", "0.002", "--warmup-epochs", "0",
            "-j", "1", "--log-interval", "1", "--no-progress", "--output", str(out), *extra]


@pytest.mark.slow
def test_torchrun_two_processes_train_stop_on_sigterm_and_resume(photo_root, small_store, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "run"
    # 21 images / 2 ranks = 10 each, 1 image per rank-step: 10 steps per pass; 400 epochs = 100 passes.
    proc = subprocess.Popen(_torchrun(photo_root, small_store, out, "--epochs", "400"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler does: the launcher and both workers
    _, stderr = proc.communicate(timeout=180)
    ckpt = load_checkpoint(str(out / "last.pth"))
    assert ckpt["world"] == WORLD and ckpt["global_step"] >= 3, stderr[-3000:]
    assert ckpt["pass"] * 10 + ckpt["step"] == ckpt["global_step"]
    done = ckpt["global_step"]
    finished = subprocess.run(_torchrun(photo_root, small_store, out, "--epochs", "400", "--resume",
                                        str(out / "last.pth"), "--max-steps", str(done + 3)),
                              capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    summaries = [json.loads(x) for x in finished.stdout.splitlines() if x.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["steps"] == done + 3  # rank 0's summary only
    assert load_checkpoint(str(out / "last.pth"))["global_step"] == done + 3


@pytest.mark.slow
def test_torchrun_two_processes_complete_a_short_run(photo_root, small_store, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "short"
    run = subprocess.run(_torchrun(photo_root, small_store, out, "--epochs", "4", "--val", str(photo_root)),
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summaries = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")]
    assert [(s["steps"], s["passes"]) for s in summaries] == [(10, 1)]  # under torchrun only rank 0 prints
    assert summaries[0]["val"]["images"] == 21  # both shards counted once (all_reduce of counts)
    assert [x for x in run.stdout.splitlines() if x.startswith("trained: ")] == [run.stdout.splitlines()[-2]]
    assert len([x for x in run.stderr.splitlines() if x.startswith("pass 1/1")]) == 1, run.stderr[-3000:]
    ckpt = load_checkpoint(str(out / "last.pth"))
    assert (ckpt["pass"], ckpt["step"], ckpt["world"]) == (1, 0, WORLD)

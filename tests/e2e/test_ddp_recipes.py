"""The training recipes under torchrun (two gloo ranks on the CPU): colour jitter, CutMix/Mixup and weight
EMA resume to the same weights as an uninterrupted run; online KD runs with the teacher on every rank."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fkd_dali.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
WORLD = 2
RECIPE = ("--color-jitter", "0.4", "--cutmix", "1.0", "--mixup", "0.2", "--model-ema", "--model-ema-decay", "0.9")


def _torchrun(photo_root, labels: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
            "-m", "fkd_dali", "train", "--data", str(photo_root), "--labels", labels, "--arch", "resnet10t",
            "--epochs", "8", "-m", "4", "-b", "8", "--image-size", "48", "--opt", "adamw", "--lr", "0.002",
            "--warmup-epochs", "0", "-j", "1", "--log-interval", "1", "--no-progress", "--output", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_torchrun_resume_with_jitter_mixing_and_ema_is_exact(photo_root, small_store, tmp_path):
    _torchrun(photo_root, str(small_store), tmp_path / "a", *RECIPE, "--max-steps", "2")
    _torchrun(photo_root, str(small_store), tmp_path / "a", *RECIPE, "--max-steps", "4",
              "--resume", str(tmp_path / "a" / "last.pth"))
    _torchrun(photo_root, str(small_store), tmp_path / "b", *RECIPE, "--max-steps", "4")
    a, b = load_checkpoint(str(tmp_path / "a" / "last.pth")), load_checkpoint(str(tmp_path / "b" / "last.pth"))
    assert a["world"] == WORLD and a["global_step"] == b["global_step"] == 4
    for key in ("model", "model_ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


@pytest.mark.slow
def test_torchrun_online_kd(photo_root, tmp_path):
    done = _torchrun(photo_root, "online", tmp_path, "--teacher", "efficientnet_lite0", "--color-jitter", "0.4",
                     "--max-steps", "2")
    summaries = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["steps"] == 2  # rank 0 alone prints the run's summary
    ckpt = load_checkpoint(str(tmp_path / "last.pth"))
    assert ckpt["mode"] == "online" and ckpt["world"] == WORLD and ckpt["global_step"] == 2

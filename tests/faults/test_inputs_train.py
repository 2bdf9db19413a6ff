"""Hostile inputs, training: bad --output, a full disk while saving, killed saves, damaged checkpoints, resumes."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fkd_dali.cli import main
from fkd_dali.config import TrainConfig
from fkd_dali.errors import CheckpointError
from fkd_dali.train.checkpoint import load_checkpoint, save_checkpoint
from fkd_dali.train.loop import fit

REPO = Path(__file__).resolve().parents[2]


def _cfg(photo_root, store, out, **kw) -> TrainConfig:
    base = dict(data=str(photo_root), labels=str(store), arch="resnet10t", output=str(out), epochs=8, num_crops=4,
                batch_size=8, lr=2e-3, opt="adamw", warmup_epochs=0.0, image_size=64, threads=2, log_interval=1,
                progress=False, seed=3)
    return TrainConfig(**{**base, **kw})


def _train_args(photo_root, store, out, *extra) -> list[str]:
    return ["train", "--data", str(photo_root), "--labels", str(store), "--arch", "resnet10t", "-b", "8",
            "--image-size", "64", "--opt", "adamw", "--warmup-epochs", "0", "-j", "2", "--no-progress",
            "--output", str(out), *extra]


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_output_that_cannot_be_written_is_one_line(photo_root, small_store, tmp_path, capsys, kind):
    out = tmp_path / "out.txt"
    if kind == "file":
        out.write_text("x")
    else:
        out = Path("/sys/fkd-dali-train-test")
    assert main(_train_args(photo_root, small_store, out, "--max-steps", "1")) == 2
    err = capsys.readouterr().err
    words = "is a file, not a folder" if kind == "file" else "cannot be written"
    assert err.count("\n") == 1 and f"--output {out}" in err and words in err, err


def test_full_disk_while_saving_a_checkpoint_is_one_line(photo_root, small_store, tmp_path):
    out = tmp_path / "run"
    first = fit(_cfg(photo_root, small_store, out, max_steps=1))
    before = (out / "last.pth").read_bytes()

    def limit() -> None:  # writes past 1 MB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    args = _train_args(photo_root, small_store, out, "--resume", first.checkpoint, "--max-steps", "2",
                       "--epochs", "8", "--lr", "0.002", "--seed", "3", "--log-interval", "1")
    proc = subprocess.run([sys.executable, "-m", "fkd_dali", *args], env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fkd-dali: error: saving the checkpoint failed: writing ") and "last.pth" in last
    assert "inline_container" not in last.split("torch says:")[0] and "The previous last.pth is intact" in last
    assert (out / "last.pth").read_bytes() == before
    assert [p.name for p in out.iterdir() if p.name.endswith(".partial")] == []


def test_temp_files_of_a_killed_save_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.pth.tmp{dead.pid}.partial"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".last.pth.tmp{os.getppid()}.partial"  # a running writer's file stays
    live.write_bytes(b"being written")
    save_checkpoint({"format": "x"}, tmp_path)
    assert not stale.exists() and live.exists() and (tmp_path / "last.pth").exists()


def test_empty_and_cut_off_checkpoints_say_why(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth is empty \(0 bytes\)"):
        load_checkpoint(str(empty))
    whole = tmp_path / "whole.pth"
    torch.save({"format": "fkd-dali-train/1", "w": torch.zeros(1000)}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:101])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(cut))
    text = str(e.value)
    assert "cut.pth: it is damaged, cut off or not a torch file (" in text and not text.endswith(": 101")
    assert "use another checkpoint" in text


def test_resume_after_a_kill_logs_each_step_once(photo_root, small_store, tmp_path):
    """A kill after step 3 was logged but before its checkpoint: the resumed run logs step 3 again, once."""
    out = tmp_path / "run"
    fit(_cfg(photo_root, small_store, out, max_steps=2))
    early = tmp_path / "step2.pth"
    shutil.copy(out / "last.pth", early)
    fit(_cfg(photo_root, small_store, out, max_steps=3, resume=str(out / "last.pth")))
    fit(_cfg(photo_root, small_store, out, max_steps=4, resume=str(early)))
    steps = [r["global_step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4]

"""What a person reads from a run: a line per pass, one note for a warmup longer than the run, a human
summary line before the JSON, summary.csv, a metrics file that is never empty, no folder from a failed start."""
from __future__ import annotations

import csv
import json

import pytest

from fkd_dali.cli import main


def _args(photo_root, store, out, *extra: str) -> list[str]:
    return ["train", "--data", str(photo_root), "--labels", str(store), "--arch", "resnet10t", "-b", "8",
            "--image-size", "32", "--opt", "adamw", "--lr", "0.002", "-j", "2", "--device", "cpu", "--amp", "off",
            "--no-progress", "--output", str(out), *extra]


@pytest.mark.slow
def test_a_short_run_reads_like_timm(photo_root, small_store, tmp_path, capsys):
    out = tmp_path / "run"
    # 21 images, 2 per step: 10 steps per pass; 8 epochs = 2 passes; a 20-epoch warmup is longer than the run
    assert main(_args(photo_root, small_store, out, "--epochs", "8", "--warmup-epochs", "20", "--log-interval",
                      "5")) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "--warmup-epochs" in line]
    assert len(notes) == 1 and "shortened to 19 steps" in notes[0], captured.err
    passes = [line for line in captured.err.splitlines() if line.startswith("pass ")]
    assert [p.split("  ")[:2] for p in passes] == [["pass 1/2", "epoch 4/8"], ["pass 2/2", "epoch 8/8"]]
    assert "ETA 0:00:00" in passes[1] and "img/s" in passes[0] and "elapsed" in passes[0]
    human, machine = captured.out.strip().splitlines()[-2:]
    assert human.startswith("trained: 2 pass(es) = 8 epoch(s) done, 20 steps, loss ") and "last.pth" in human
    assert json.loads(machine)["steps"] == 20
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["4", "8"] and all(float(r["train_loss"]) > 0 for r in rows)
    assert [r["eval_top1"] for r in rows] == ["", ""]  # no --val


def test_a_run_stopped_in_its_first_pass_leaves_metrics_and_a_failed_start_leaves_no_folder(
        photo_root, small_store, tmp_path, capsys):
    out = tmp_path / "stopped"
    assert main(_args(photo_root, small_store, out, "--epochs", "8", "--warmup-epochs", "0", "--max-steps", "2",
                      "--log-interval", "50")) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["stop"]
    stop = records[0]
    assert (stop["pass"], stop["step"], stop["global_step"], stop["steps_run"], stop["reason"]) == (
        0, 2, 2, 2, "--max-steps")
    assert stop["loss"] > 0 and stop["checkpoint"].endswith("last.pth")
    assert "warmup" not in capsys.readouterr().err
    never = tmp_path / "never" / "made"
    assert main(_args(photo_root, small_store, never, "-b", "6")) == 2  # not divisible by m = 4: refused
    assert "divisible" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()

"""What a run writes besides checkpoints: config.json/.yaml, metrics lines (once per step, also after a resume)."""
from __future__ import annotations

import json

import yaml

from fkd_dali.config import TrainConfig, config_dict, load_config_file
from fkd_dali.train.run_log import RunLog, write_run_config


def step(global_step: int, loss: float = 1.0) -> dict:
    return {"kind": "step", "pass": 0, "step": global_step, "global_step": global_step, "loss": loss, "lr": 0.1,
            "images_per_s": 1.0}


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_metrics_are_json_lines_and_rank_0_only(tmp_path):
    log = RunLog(tmp_path, main=True, total_steps=10, progress=False)
    log.write(step(1))
    log.write({"kind": "pass", "pass": 0, "step": 2, "global_step": 2, "loss": 0.5})
    log.close()
    assert [r["kind"] for r in lines(tmp_path / "metrics.jsonl")] == ["step", "pass"]
    other = tmp_path / "rank1"
    other.mkdir()
    quiet = RunLog(other, main=False, total_steps=10)
    quiet.write(step(1))
    quiet.close()
    assert list(other.iterdir()) == []


def test_a_resumed_log_drops_the_steps_after_its_checkpoint(tmp_path):
    log = RunLog(tmp_path, main=True, total_steps=10, progress=False)
    for s in range(1, 7):
        log.write(step(s))
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "glob')  # a line torn by the kill
    resumed = RunLog(tmp_path, main=True, total_steps=10, done_steps=4, append=True, progress=False)
    for s in range(5, 8):
        resumed.write(step(s, loss=2.0))
    resumed.close()
    records = lines(tmp_path / "metrics.jsonl")
    assert [r["global_step"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["loss"] for r in records] == [1.0] * 4 + [2.0] * 3


def test_run_config_is_written_as_json_and_yaml_and_reads_back_as_a_config(tmp_path):
    cfg = TrainConfig(data="d", labels="s.zarr", lr=0.05, scale=(0.2, 1.0))
    write_run_config(tmp_path, config_dict(cfg), {"passes": 3, "device": "cpu"})
    as_json = json.loads((tmp_path / "config.json").read_text())
    as_yaml = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert as_json == as_yaml and as_json["resolved"] == {"passes": 3, "device": "cpu"}
    values = load_config_file(tmp_path / "config.yaml", TrainConfig)
    assert TrainConfig(**values) == cfg


def pass_record(p: int, loss: float, **kw) -> dict:
    return {"kind": "pass", "pass": p, "step": 10, "global_step": 10 * (p + 1), "epoch": 4 * (p + 1), "loss": loss,
            "lr": 0.1, "images_per_s": 12.345, "crops_per_s": 49.38, "seconds": 3.0, **kw}


def test_summary_csv_has_timms_columns_and_one_row_per_pass_after_a_resume(tmp_path):
    import csv

    log = RunLog(tmp_path, main=True, total_steps=40, progress=False)
    log.write(pass_record(0, 2.5, val_top1=10.0, val_top5=40.0))
    log.write(pass_record(1, 2.0))
    log.close()
    resumed = RunLog(tmp_path, main=True, total_steps=40, done_steps=10, append=True, progress=False)  # pass 1 again
    resumed.write(pass_record(1, 1.5, val_top1=20.0, val_top5=60.0))
    resumed.close()
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train_loss", "eval_top1", "eval_top5", "lr", "images_per_s"]
    assert [(r["epoch"], r["train_loss"], r["eval_top1"]) for r in rows] == [("4", "2.5", "10.0"), ("8", "1.5", "20.0")]
    assert rows[0]["images_per_s"] == "12.35"


def test_pass_line_reads_like_timms():
    from fkd_dali.train.run_log import pass_line

    line = pass_line(pass_record(2, 3.14159, val_top1=71.2, val_top5=90.1, agreement=0.4567), passes=75,
                     epochs=300, elapsed_s=754, eta_s=3723)
    assert line.split("  ") == ["pass 3/75", "epoch 12/300", "loss 3.1416", "agree 45.7%", "lr 0.1",
                                "val top-1 71.20% top-5 90.10%", "12.3 img/s", "elapsed 0:12:34", "ETA 1:02:03"]
    assert "val" not in pass_line(pass_record(0, 1.0), 2, 8, 1.0, None) and "ETA" not in pass_line(
        pass_record(0, 1.0), 2, 8, 1.0, None)


def test_summary_line_says_what_was_done_and_how_to_continue():
    from fkd_dali.train.loop import TrainResult
    from fkd_dali.train.run_log import summary_line

    done = TrainResult(passes=2, steps=20, final_loss=1.23456, images_per_s=99.0, crops_per_s=396.0, history=[],
                       checkpoint="runs/x/last.pth", val={"top1": 50.0, "top5": 80.0})
    assert summary_line(done, 4) == ("trained: 2 pass(es) = 8 epoch(s) done, 20 steps, loss 1.2346, val top-1 50.00% "
                                     "top-5 80.00%, 99.0 images/s, checkpoint runs/x/last.pth")
    stopped = TrainResult(passes=0, steps=3, final_loss=float("nan"), images_per_s=0.0, crops_per_s=0.0, history=[],
                          interrupted=True, signal=15, checkpoint="o/last.pth")
    line = summary_line(stopped, 4)
    assert line.startswith("stopped early by signal 15: 0 pass(es)") and "loss -" in line
    assert line.endswith("(continue with --resume o/last.pth)")


def test_a_warmup_longer_than_the_run_is_noted():
    from fkd_dali.train.loop import warmup_note
    from fkd_dali.train.schedule import ScheduleSpec

    assert warmup_note(ScheduleSpec(passes=10, steps_per_pass=10, m=4, warmup_epochs=5)) is None
    note = warmup_note(ScheduleSpec(passes=1, steps_per_pass=10, m=4, warmup_epochs=5))
    assert note.startswith("note: --warmup-epochs 5 (12 steps) is longer than this run (4 epochs, 10 steps)")
    assert "shortened to 9 steps" in note

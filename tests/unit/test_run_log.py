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

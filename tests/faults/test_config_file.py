"""Issue 19, item 6: `train --config FILE` values are checked exactly as the flags are.

Keys are the flag names (`batch-size`, `no-progress`, timm's `model`), or the config
field names a run's config.yaml holds (`batch_size`, `progress`); each value goes
through its flag's own type and choices, then the same `TrainConfig` checks. Every bad
value is one line naming the file and the key, exit status 2, never a traceback.
"""
from __future__ import annotations

import pytest

from fkd_dali.cli import main

BASE = "data: {tmp}/train\nlabels: {tmp}/s.zarr\n"  # paths that exist: train checks them before anything else


def _run(tmp_path, capsys, content: str | bytes, *flags: str) -> tuple[int, str]:
    conf = tmp_path / "run.yaml"
    (tmp_path / "train").mkdir(exist_ok=True)
    (tmp_path / "s.zarr").mkdir(exist_ok=True)
    if isinstance(content, str):
        content = content.replace("{tmp}", str(tmp_path))
    if isinstance(content, bytes):
        conf.write_bytes(content)
    else:
        conf.write_text(content)
    try:
        code = main(["train", "--config", str(conf), *flags])
    except SystemExit as e:  # argparse's own exit, should it ever be reached
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("text, words", [
    ("batch-size: [16, 32]\n", ["batch-size", "--batch-size", "a list"]),
    ("epochs: 2.5\n", ["epochs", "--epochs", "whole number", "2.5"]),
    ("progress: 'no'\n", ["progress", "true or false", "'no'"]),
    ("no-progress: 1\n", ["no-progress", "true or false"]),
    ("lr: true\n", ["lr", "--lr", "a number"]),
    ("sched: cosin\n", ["sched", "--sched", "cosine"]),
    ("mean: [0.5, 0.5]\n", ["mean", "--mean", "3 comma-separated"]),
    ("epochs: 0\n", ["--epochs must be >= 1"]),  # then the same TrainConfig check as the flag
    ("arch: {name: resnet18}\n", ["arch", "--arch", "a mapping"]),
])
def test_bad_values_are_refused_like_flags(tmp_path, captured_fit, capsys, text, words):
    code, err = _run(tmp_path, capsys, BASE + text)
    assert code == 2 and err.count("\n") == 1 and err.startswith("fkd-dali: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    assert captured_fit == []


def test_a_file_that_is_not_utf8_is_one_line(tmp_path, captured_fit, capsys):
    code, err = _run(tmp_path, capsys, b"data: /d\nlabels: caf\xe9.zarr\n\x80\x81\n")
    assert code == 2 and err.count("\n") == 1 and "UTF-8" in err and "run.yaml" in err, err
    code, err = _run(tmp_path, capsys, bytes(range(256)) * 4)  # a binary file (a checkpoint?) given as --config
    assert code == 2 and err.count("\n") == 1 and "run.yaml" in err, err


def test_keys_are_the_flag_names(tmp_path, captured_fit, capsys):
    text = (BASE + "no-progress: true\nmodel: resnet18\nchannels-last: yes\nmean: [0.5, 0.5, 0.5]\n"
            "mixup-prob: 0.5\n--batch-size: 64\nlr: 1e-3\nclip-grad: null\n")
    code, err = _run(tmp_path, capsys, text, "--epochs", "8")
    assert code == 0, err
    (cfg,) = captured_fit
    assert (cfg.progress, cfg.arch, cfg.channels_last, cfg.mean, cfg.mix_prob, cfg.batch_size, cfg.lr,
            cfg.epochs, cfg.clip_grad) == (False, "resnet18", True, (0.5, 0.5, 0.5), 0.5, 64, 1e-3, 8, None)


def test_field_names_of_a_run_config_still_work(tmp_path, captured_fit, capsys):
    code, err = _run(tmp_path, capsys, BASE + "progress: false\nbatch_size: 32\nscale: [0.2, 1.0]\n")
    assert code == 0, err
    (cfg,) = captured_fit
    assert (cfg.progress, cfg.batch_size, cfg.scale) == (False, 32, (0.2, 1.0))


def test_flags_still_override_the_file(tmp_path, captured_fit, capsys):
    code, err = _run(tmp_path, capsys, BASE + "progress: true\nepochs: 10\n", "--no-progress", "--epochs", "20")
    assert code == 0, err
    (cfg,) = captured_fit
    assert (cfg.progress, cfg.epochs) == (False, 20)

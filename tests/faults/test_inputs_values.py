"""Hostile inputs, values: nonsense options, non-finite weights and outputs, all-zero labels.

The option checks (`fkd_dali.config`) were added before this file; these tests
reproduce the hostile trials' commands through the CLI: each must end in one line
naming the flag, exit status 2, before any store or checkpoint exists.
"""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from fkd_dali.cli import main
from fkd_dali.errors import ConfigError, TeacherError
from fkd_dali.labels.merge import merge_stores
from fkd_dali.store.tools import prob_sum_floor, verify_store


def _one_line(capsys, *words: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("extra, words", [
    (["--std", "0,0,0"], "--std must be three finite numbers > 0"),
    (["--temperature", "inf"], "--temperature must be a finite number"),
    (["--temperature", "0"], "--temperature"),
    (["-j", "0"], "--threads must be >= 1"),
    (["--input-size", "4000"], "--input-size must be between 1 and 2048"),
    (["--num-classes", "0"], "--num-classes must be >= 1"),
])
def test_label_generation_refuses_nonsense(photo_root, tmp_path, capsys, extra, words):
    out = tmp_path / "s.zarr"
    assert main(["labels", "generate", "--data", str(photo_root), "--out", str(out), "--no-progress", *extra]) == 2
    _one_line(capsys, words)
    assert not out.exists()


@pytest.mark.parametrize("extra, words", [
    (["--lr", "nan"], "--lr must be >= 0"),
    (["--image-size", "0"], "--image-size must be >= 1"),
    (["--image-size", "4000"], "--image-size must be at most 2048"),
    (["-j", "0"], "--threads must be >= 1"),
])
def test_training_refuses_nonsense(photo_root, small_store, tmp_path, capsys, extra, words):
    out = tmp_path / "run"
    assert main(["train", "--data", str(photo_root), "--labels", str(small_store), "--output", str(out),
                 "--no-progress", *extra]) == 2
    _one_line(capsys, words)
    assert not out.exists()


def test_show_refuses_negative_max_crops(small_store, photo_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse refuses it while parsing
        main(["labels", "show", str(small_store), "--image", "0", "--out", str(tmp_path / "a.png"),
              "--data", str(photo_root), "--max-crops", "-3"])
    assert e.value.code == 2
    _one_line(capsys, "--max-crops", "must be >= 1")
    assert not (tmp_path / "a.png").exists()


def test_merge_refuses_nan_weights(small_store, tmp_path, capsys):
    out = tmp_path / "ens.zarr"
    assert main(["labels", "merge", str(small_store), str(small_store), "--out", str(out),
                 "--weights", "nan", "1"]) == 2
    _one_line(capsys, "--weights needs one finite weight > 0 per store")
    assert not out.exists()


def test_verify_refuses_an_all_zero_probability_store(small_store, tmp_path):
    """What a NaN-weight merge wrote before weights were checked: every probability 0."""
    out = tmp_path / "ens.zarr"
    merge_stores([str(small_store), str(small_store)], str(out))
    prob = zarr.open_group(str(out), mode="r+")["labels/prob"]
    prob[:] = np.zeros(prob.shape, np.float16)
    report = verify_store(str(out))
    problem = report.problem("prob_sum_low")
    assert problem is not None and problem.count == 21 * 8, report.summary()
    assert verify_store(str(small_store)).ok


@pytest.mark.parametrize("k, classes, floor", [(5, 1000, 5 / 1000 - 5 * 2 ** -13), (1, 10, 0.1 - 2 ** -13),
                                               (1, 21843, 1 / 21843 - 2 ** -13)])
def test_prob_sum_floor(k, classes, floor):
    assert prob_sum_floor(k, classes) == pytest.approx(floor)


def test_label_generation_refuses_non_finite_teacher_output(photo_root, tmp_path, monkeypatch):
    """A teacher that overflows (e.g. std 1e-30 passes the option check but makes pixels infinite)."""
    from fkd_dali.config import LabelGenConfig
    from fkd_dali.labels import generate

    def nan_probs(self, crops, gt=None):
        out = real_call(self, crops, gt)
        return {**out, "prob": out["prob"] * float("nan")}

    real_call = generate._TeacherRunner.__call__
    monkeypatch.setattr(generate._TeacherRunner, "__call__", nan_probs)
    out = tmp_path / "s.zarr"
    cfg = LabelGenConfig(data=str(photo_root), out=str(out), crops_per_image=2, top_k=3, input_size=64,
                         images_per_chunk=8, threads=1, progress=False)
    with pytest.raises(TeacherError, match="NaN or infinite probabilities for 8 image.*images 0-7"):
        generate.generate_labels(cfg)
    from fkd_dali.store.opening import open_store

    assert open_store(str(out)).missing_chunks() == [0, 1, 2]  # nothing was written


def test_config_refuses_tiny_std_only_when_not_positive():
    from fkd_dali.config import LabelGenConfig

    with pytest.raises(ConfigError, match="--std"):
        LabelGenConfig(data="d", out="o", std=(0.1, -0.1, 0.1))

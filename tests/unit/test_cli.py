"""CLI parsing: every bad flag value is one line naming the flag (exit 2); `train --config` precedence."""
from __future__ import annotations

import importlib

import pytest

from fkd_dali.cli import main

GEN = ["labels", "generate", "--data", "d", "--out", "o.zarr"]
TRAIN = ["train", "--data", "d", "--labels", "s.zarr"]
EVAL = ["eval", "--data", "d", "--checkpoint", "c.pth"]

BAD = [
    (GEN, ["--scale", "0,2"], "--scale"), (GEN, ["--scale", "abc"], "--scale"), (GEN, ["--ratio", "2,1"], "--ratio"),
    (GEN, ["--mean", "a,b,c"], "--mean"), (GEN, ["--std", "0,0,0"], "--std"), (GEN, ["--std", "1,1"], "--std"),
    (GEN, ["--temperature", "0"], "--temperature"), (GEN, ["--temperature", "inf"], "--temperature"),
    (GEN, ["-M", "0"], "--crops-per-image"), (GEN, ["-K", "0"], "--top-k"), (GEN, ["-b", "0"], "--batch-size"),
    (GEN, ["-j", "0"], "--threads"), (GEN, ["--shard", "5/2"], "--shard"), (GEN, ["--shard", "x"], "--shard"),
    (GEN, ["--input-size", "4000"], "--input-size"), (GEN, ["--device", "tpu"], "--device"),
    (GEN, ["--seed", "-1"], "--seed"), (GEN, ["--images-per-chunk", "0"], "--images-per-chunk"),
    (GEN, ["--num-classes", "0"], "--num-classes"), (GEN, ["--crops-per-round", "0"], "--crops-per-round"),
    (GEN, ["--threads", "two"], "--threads"),
    (TRAIN, ["--lr", "nan"], "--lr"), (TRAIN, ["--lr", "-1"], "--lr"), (TRAIN, ["--epochs", "0"], "--epochs"),
    (TRAIN, ["-m", "0"], "--num-crops"), (TRAIN, ["-b", "0"], "--batch-size"),
    (TRAIN, ["--image-size", "0"], "--image-size"), (TRAIN, ["--sched", "cosin"], "--sched"),
    (TRAIN, ["--recovery", "soft"], "--recovery"), (TRAIN, ["--recovery-k", "0"], "--recovery-k"),
    (TRAIN, ["--smoothing", "2"], "--smoothing"), (TRAIN, ["--amp", "fp8"], "--amp"),
    (TRAIN, ["--warmup-epochs", "-1"], "--warmup-epochs"), (TRAIN, ["--decay-epochs", "0"], "--decay-epochs"),
    (TRAIN, ["--clip-grad", "0"], "--clip-grad"), (TRAIN, ["--temperature", "0"], "--temperature"),
    (TRAIN, ["--crop-pct", "2"], "--crop-pct"), (TRAIN, ["--scale", "0,2"], "--scale"),
    (TRAIN, ["--val-every", "0"], "--val-every"), (TRAIN, ["--log-interval", "0"], "--log-interval"),
    (TRAIN, ["--max-steps", "-1"], "--max-steps"), (TRAIN, ["--momentum", "nan"], "--momentum"),
    (TRAIN, ["--weight-decay", "-1"], "--weight-decay"), (TRAIN, ["-j", "0"], "--threads"),
    (TRAIN, ["--device", "tpu"], "--device"), (TRAIN, ["--mean", "1,2"], "--mean"),
    (TRAIN, ["--std", "0,1,1"], "--std"), (TRAIN, ["--lr", "fast"], "--lr"),
    (["train", "--labels", "s.zarr"], [], "--data"), (["train", "--data", "d"], [], "--labels"),
    (TRAIN, ["--calibrate", "ferk"], "--calibrate"), (TRAIN, ["--ferkd-easy", "1.5"], "--ferkd-easy"),
    (TRAIN, ["--ferkd-negative", "-0.1"], "--ferkd-negative"),
    (TRAIN, ["--ferkd-negative", "0.6", "--ferkd-easy", "0.5"], "--ferkd-negative"),
    (TRAIN, ["--ferkd-negatives", "dropp"], "--ferkd-negatives"),
    (TRAIN, ["--ferkd-negative-weight", "2"], "--ferkd-negative-weight"),
    (TRAIN, ["--ferkd-smoothing", "nan"], "--ferkd-smoothing"), (TRAIN, ["--ferkd-easy", "high"], "--ferkd-easy"),
    (["train", "--data", "d", "--labels", "none"], ["--calibrate", "ferkd"], "--calibrate"),
    (["train", "--data", "d", "--labels", "online", "--teacher", "t"], ["--calibrate", "ferkd"], "--calibrate"),
    (TRAIN, ["--calibrate", "ferkd", "--synthetic"], "--calibrate"),
    (TRAIN, ["--selfmix", "-1"], "--selfmix"), (TRAIN, ["--selfmix", "inf"], "--selfmix"),
    (TRAIN, ["--selfmix-prob", "1.5"], "--selfmix-prob"),
    (TRAIN, ["--selfmix", "1", "--cutmix", "1"], "--cutmix"), (TRAIN, ["--selfmix", "1", "--mixup", "1"], "--mixup"),
    (TRAIN, ["--selfmix", "1", "-m", "1"], "--num-crops"),
    (["train", "--data", "d", "--labels", "none"], ["--selfmix", "1"], "--selfmix"),
    (EVAL, ["-b", "0"], "--batch-size"), (EVAL, ["-j", "0"], "--threads"), (EVAL, ["--amp", "x"], "--amp"),
    (["demo"], ["--passes", "0"], "--passes"), (["demo"], ["-b", "6"], "--batch-size"),
    (["demo"], ["--lr", "nan"], "--lr"),
    (["labels", "show", "s.zarr", "--image", "0", "--out", "x.png"], ["--max-crops", "-3"], "--max-crops"),
    (["labels", "merge", "a", "b", "--out", "c"], ["--top-k", "0"], "--top-k"),
    (["labels", "import-fkd", "f", "--data", "d", "--out", "o"], ["--num-classes", "0"], "--num-classes"),
]


@pytest.mark.parametrize("base, extra, flag", BAD, ids=[" ".join(b[:2] + e) for b, e, _ in BAD])
def test_bad_values_are_one_line_naming_the_flag(base, extra, flag, capsys):
    try:
        code = main(base + extra)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert flag in err


def test_config_file_sets_defaults_and_flags_override(tmp_path, captured_fit, capsys):
    conf = tmp_path / "run.yaml"
    (tmp_path / "train").mkdir()  # the paths must exist: they are checked before training starts
    (tmp_path / "s.zarr").mkdir()
    conf.write_text(f"data: {tmp_path / 'train'}\nlabels: {tmp_path / 's.zarr'}\nbatch-size: 64\nlr: 0.05\n"
                    "scale: [0.2, 1.0]\nprogress: false\n")
    assert main(["train", "--config", str(conf), "--lr", "0.1"]) == 0
    (cfg,) = captured_fit
    assert (cfg.data, cfg.labels, cfg.batch_size, cfg.lr, cfg.scale, cfg.progress) == (
        str(tmp_path / "train"), str(tmp_path / "s.zarr"), 64, 0.1, (0.2, 1.0), False)
    assert cfg.epochs == 300  # neither file nor flag: the dataclass default


@pytest.mark.parametrize("text, match", [
    ("btach_size: 64\n", "unknown option 'btach_size' \\(did you mean 'batch_size'\\?\\)"),
    ("- a\n- b\n", "expected a mapping"),
    ("lr: [\n", "not valid YAML"),
    ("lr: nan\ndata: d\nlabels: s\n", "--lr"),
])
def test_bad_config_files_are_one_line(tmp_path, captured_fit, capsys, text, match):
    conf = tmp_path / "run.yaml"
    conf.write_text(text)
    assert main(["train", "--config", str(conf)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(match, err), err
    assert captured_fit == []


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read the file" in capsys.readouterr().err


def test_cli_lists_every_registered_benchmark_with_its_summary(capsys):
    from fkd_dali.cli.bench import bench_package

    registry = bench_package().BENCHMARKS
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    listing = capsys.readouterr().out.split("benchmarks:\n", 1)[1]
    assert set(registry.names()) >= {"loaders", "store", "labelgen", "train", "stages", "feed", "fidelity"}
    for name in registry.names():
        summary = registry.get(name).summary
        assert summary and f"  {name:<9} {summary}" in listing
        assert callable(importlib.import_module(registry.get(name).module, bench_package().__name__).main)

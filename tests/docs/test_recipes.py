"""The training recipes in configs/: each cites its source, loads through `train --config`, and is in range.

Every file goes through the real config loader and the `train` argument parser (no
training), so a key that is not a `train` flag, or a value the flag's checks refuse,
fails here. The smoke recipe also trains for 2 steps on the test photos.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from fkd_dali.cli import build_parser
from fkd_dali.cli.train import apply_config_file, train_config
from fkd_dali.config import TrainConfig, load_config_file

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs").glob("*.yaml"))
FKD_CROPS_PER_IMAGE = 500  # M of FKD's published labels: what the ImageNet recipes' stores hold
IMAGENET = [p for p in RECIPES if p.name != "smoke-cpu.yaml"]


def resolve(path: Path, *flags: str) -> TrainConfig:
    """The TrainConfig `fkd-dali train --config PATH FLAGS...` would run with (as `cli.train._train` builds it)."""
    argv = ["train", "--config", str(path), *flags]
    parser = build_parser()
    return train_config(apply_config_file(parser, parser.parse_args(argv), argv))


def test_there_are_recipes() -> None:
    names = {p.name for p in RECIPES}
    assert {"fkd-resnet50-plain.yaml", "fkd-resnet50-jitter.yaml", "fkd-resnet50-cutmix.yaml",
            "mealv2-resnet50-finetune.yaml", "ferkd-resnet50.yaml", "smoke-cpu.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_starts_by_citing_its_source(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# "), f"{path.name}: the first line must be a comment saying what the recipe is"
    header = "\n".join(line for line in lines if line.startswith("#"))
    assert "Source" in header or "source" in header, f"{path.name}: cite where the values come from"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_keys_are_train_flags(path: Path) -> None:
    """Every key is a TrainConfig field that `fkd-dali train` also takes as a flag (the loader checks the first)."""
    values = load_config_file(path, TrainConfig)
    raw = yaml.safe_load(path.read_text())
    assert len(values) == len(raw), f"{path.name}: a key is given twice (once with '-', once with '_')"
    parser = build_parser()
    train = parser.parse_args(["train", "--data", "d", "--labels", "l"]).subparser
    dests = {a.dest for a in train._actions}
    for key in values:
        assert key in dests, f"{path.name}: {key!r} is not a flag of `fkd-dali train`"


@pytest.mark.parametrize("path", IMAGENET, ids=lambda p: p.name)
def test_imagenet_recipe_values(path: Path) -> None:
    """Built as the CLI builds it (so TrainConfig's own checks run) and checked against an ImageNet setup."""
    flags = ["--data", "train/", "--labels", "labels.zarr"]
    cfg = resolve(path, *flags)
    assert cfg.arch == "resnet50"
    assert 1 <= cfg.num_crops <= FKD_CROPS_PER_IMAGE
    assert cfg.batch_size % cfg.num_crops == 0
    assert cfg.batch_size % (cfg.num_crops * 8) == 0, "divisible over 8 GPUs"
    assert 0 < cfg.lr <= 1.0 and 0 <= cfg.weight_decay <= 1e-3 and 0 <= cfg.momentum < 1
    assert 100 <= cfg.epochs <= 600
    assert cfg.warmup_epochs < cfg.epochs
    assert cfg.device == "auto" and cfg.data == "train/" and cfg.labels == "labels.zarr"
    if cfg.sched == "step":
        assert 0 < cfg.decay_epochs < cfg.epochs and 0 < cfg.decay_rate < 1
    # flags given on the command line win over the file
    assert resolve(path, *flags, "--epochs", "7").epochs == 7


def test_recipes_say_what_the_sources_say() -> None:
    """The values the header comments cite (a change to a file must keep its citation true)."""
    plain = resolve(REPO / "configs/fkd-resnet50-plain.yaml", "--data", "t", "--labels", "l")
    assert (plain.opt, plain.lr, plain.batch_size, plain.num_crops, plain.epochs, plain.weight_decay,
            plain.sched, plain.warmup_epochs, plain.color_jitter) == ("momentum", 0.1, 1024, 4, 300, 1e-4,
                                                                      "serrated", 0, 0.0)
    jitter = resolve(REPO / "configs/fkd-resnet50-jitter.yaml", "--data", "t", "--labels", "l")
    assert (jitter.opt, jitter.lr, jitter.warmup_epochs, jitter.warmup_lr, jitter.color_jitter,
            jitter.sched) == ("sgd", 0.1 * 1024 / 512, 5, 0.0, 0.4, "cosine")
    cutmix = resolve(REPO / "configs/fkd-resnet50-cutmix.yaml", "--data", "t", "--labels", "l")
    assert (cutmix.mixup, cutmix.cutmix, cutmix.mix_prob, cutmix.mix_switch_prob) == (0.8, 1.0, 1.0, 0.5)
    assert {f.name: getattr(cutmix, f.name) for f in dataclasses.fields(cutmix)
            if f.name not in ("mixup", "cutmix")} == {f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)
                                                     if f.name not in ("mixup", "cutmix")}
    meal = resolve(REPO / "configs/mealv2-resnet50-finetune.yaml", "--data", "t", "--labels", "ens.zarr",
                   "--initial-checkpoint", "resnet50_pretrained.pth")
    assert (meal.opt, meal.lr, meal.weight_decay, meal.num_crops, meal.batch_size, meal.epochs, meal.sched,
            meal.decay_epochs, meal.decay_rate) == ("momentum", 0.01, 0.0, 8, 512, 180, "step", 100, 0.1)
    ferkd = resolve(REPO / "configs/ferkd-resnet50.yaml", "--data", "t", "--labels", "l")
    assert ferkd.calibrate == "ferkd" and ferkd.selfmix > 0 and ferkd.cutmix == 0 and ferkd.mixup == 0
    defaults = TrainConfig(data="t", labels="l")
    assert (ferkd.ferkd_easy, ferkd.ferkd_negative, ferkd.ferkd_smoothing) == (
        defaults.ferkd_easy, defaults.ferkd_negative, defaults.ferkd_smoothing), "the header calls them the defaults"


def test_smoke_recipe_trains(photo_root, small_store, tmp_path, one_torch_thread) -> None:
    """The smoke recipe end to end for 2 steps on the test photos and store (its own data/labels overridden)."""
    from fkd_dali.cli import main

    smoke = REPO / "configs/smoke-cpu.yaml"
    cfg = resolve(smoke)
    assert (cfg.device, cfg.amp, cfg.arch, cfg.image_size) == ("cpu", "off", "resnet10t", 64)
    out = tmp_path / "run"
    rc = main(["train", "--config", str(smoke), "--data", str(photo_root), "--labels", str(small_store),
               "--output", str(out), "--max-steps", "2", "--no-progress"])
    assert rc == 0
    assert (out / "last.pth").is_file()
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["config"]["arch"] == "resnet10t" and written["config"]["max_steps"] == 2

"""The scenes' teacher, trained as ImageNet teachers are (hard labels, random-resized crops), once, and cached.

`ensure_teacher(root)` trains it through the real CLI (`fkd-dali train --labels none` on the
teacher split), evaluates it on the full test images (`fkd-dali eval`) and caches checkpoint
and figures under `ROOT/runs/<name>/`; `ensure_run` does the same for any recipe (e.g. the
hard-label student baseline), `teacher_crop_correctness` checks the labels it gives crops.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from fkd_dali.errors import ConfigError, FkdError

from .report import json_main
from .scenes import SPLITS, SceneSet, load_scenes, scenes_for_index

RUNS = "runs"  # ROOT/runs/<name>/ holds each cached run
RESULT = "result.json"


@dataclass(frozen=True)
class Recipe:
    """A hard-label training run (`fkd-dali train --labels none`) on one split of a scene folder.

    Attributes:
        name: folder under ROOT/runs; the recipe's hash is appended, so a changed recipe never reuses.
        split: the split trained on (`teacher` for the teacher, `train` for a student).
        images: train on the first `images` of the split in class-balanced file order (None: all).
        arch ... weight_decay: `fkd-dali train` flags of the same names.
        image_size: training and evaluation side (None: the scenes' side).
        crop_pct: validation centre-crop fraction; 1.0 evaluates the full image.
        scale, ratio: random-resized-crop area and aspect ranges of the training crops
            ((1, 1) and (1, 1): the whole image, flipped at random).
        start_from: a recipe whose trained weights this one starts from (`--initial-checkpoint`;
            optimizer and schedule start fresh), e.g. a fine-tuning stage at another resolution.
    """

    name: str
    split: str
    arch: str
    epochs: int
    batch_size: int
    lr: float
    opt: str = "adamw"
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    images: int | None = None
    image_size: int | None = None
    crop_pct: float = 1.0
    seed: int = 0
    start_from: Recipe | None = None

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


#: The teacher: resnet10t (4.9M parameters) on the 8,000-image teacher split, hard labels, random-resized
#: crops at scale 0.25-1 (milder than torchvision's 0.08: see SCENES.md), the 64 px images resized to 96 px
#: (a ResNet's stride-4 stem leaves a 22 px object 5 px wide at 64 px), 24 epochs of AdamW. It labels crops
#: at 96 px, the size it was trained on; `start_from` can add stages (e.g. a FixRes fine-tune at 128 px).
TEACHER = Recipe(name="teacher-resnet10t", split="teacher", arch="resnet10t", epochs=24, batch_size=128,
                 lr=3e-3, scale=(0.25, 1.0), image_size=96)
#: The hard-label student baseline the teacher must beat by >= 10 points: timm's test_resnet (0.37M
#: parameters), 2,000 train images x 16 epochs, the same crops and optimizer.
HARD_STUDENT = Recipe(name="student-hard-test_resnet", split="train", arch="test_resnet", epochs=16, batch_size=64,
                      lr=3e-3)


@dataclass(frozen=True)
class RunResult:
    """A finished, cached run: where its checkpoint is and what it cost and scored."""

    recipe: Recipe
    checkpoint: str
    scenes: dict  # the scene folder's identity (generator, version, config)
    train_wall_s: float  # training only (the eval below is not counted), this stage
    train_cpu_s: float  # CPU seconds of the training process and its children (user + system), this stage
    test_top1: float  # percent, full test images (resize + centre crop at crop_pct)
    val_top1: float | None  # percent, last validation of the run on the val split
    total_wall_s: float = 0.0  # training wall seconds with every `start_from` stage
    total_cpu_s: float = 0.0  # training CPU seconds with every `start_from` stage
    reused: bool = False
    test_images: int = 0  # the test split `test_top1` was measured on


def run_dir(root: str | os.PathLike[str], recipe: Recipe) -> Path:
    return Path(root) / RUNS / f"{recipe.name}-{recipe.key()}"


def ensure_teacher(root: str | os.PathLike[str], recipe: Recipe = TEACHER, device: str = "auto",
                   niceness: int = 5, log: str | os.PathLike[str] | None = None) -> RunResult:
    """The scenes' teacher: trained once with `recipe` (default `TEACHER`), then reused from the cache."""
    if recipe.split != "teacher":
        raise ConfigError(f"a teacher trains on the teacher split, recipe {recipe.name} names {recipe.split!r}")
    return ensure_run(root, recipe, device, niceness, log)


def ensure_run(root: str | os.PathLike[str], recipe: Recipe, device: str = "auto", niceness: int = 5,
               log: str | os.PathLike[str] | None = None) -> RunResult:
    """Train `recipe` through `fkd-dali train` and evaluate it with `fkd-dali eval`, or reuse the cached result.

    The cache is `run_dir(root, recipe)/result.json`, written last; it is reused only for
    the same recipe and the same scene folder (generator version and config). A run
    without it (interrupted, or another scene folder) is redone from the start, so its
    costs are those of one uninterrupted training.

    Args:
        device: `--device` of train and eval.
        niceness: added to the child processes' nice value (the machine is shared).
        log: file for the child processes' output (default: `run_dir/train.log`).
    """
    scenes = load_scenes(root)
    base = ensure_run(root, recipe.start_from, device, niceness, log) if recipe.start_from else None
    out = run_dir(root, recipe)
    identity = _scene_identity(scenes, recipe)
    cached = _load_result(out / RESULT)
    log_path = Path(log) if log else out / "train.log"
    if (cached is not None and cached.recipe == recipe and cached.scenes == identity
            and Path(cached.checkpoint).is_file()):
        if cached.test_images != scenes.config.test:  # the same run, scored on this folder's test split
            cached = replace(cached, test_top1=_test_top1(scenes, cached.checkpoint, device, log_path, niceness),
                             test_images=scenes.config.test)
            _save_result(out, cached)
        return replace(cached, recipe=recipe, reused=True)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data = _training_folder(scenes, recipe, out)
    args = ["train", "--data", str(data), "--labels", "none", "--arch", recipe.arch, "--epochs", str(recipe.epochs),
            "--batch-size", str(recipe.batch_size), "--lr", str(recipe.lr), "--opt", recipe.opt,
            "--weight-decay", str(recipe.weight_decay), "--warmup-epochs", str(recipe.warmup_epochs),
            "--scale", f"{recipe.scale[0]},{recipe.scale[1]}", "--ratio", f"{recipe.ratio[0]},{recipe.ratio[1]}",
            "--image-size",
            str(recipe.image_size or scenes.config.size), "--crop-pct", str(recipe.crop_pct),
            "--seed", str(recipe.seed), "--val", scenes.split_root("val"), "--output", str(out / "run"),
            "--device", device, "--no-progress", "--log-interval", "20"]
    if base is not None:
        args += ["--initial-checkpoint", base.checkpoint]
    wall, cpu, _ = run_cli(args, log_path, niceness)
    checkpoint = str(out / "run" / "last.pth")
    result = RunResult(recipe=recipe, checkpoint=checkpoint, scenes=identity, train_wall_s=round(wall, 1),
                       train_cpu_s=round(cpu, 1), test_top1=_test_top1(scenes, checkpoint, device, log_path, niceness),
                       val_top1=_last_val(out / "run" / "metrics.jsonl"),
                       total_wall_s=round(wall + (base.total_wall_s if base else 0.0), 1),
                       total_cpu_s=round(cpu + (base.total_cpu_s if base else 0.0), 1),
                       test_images=scenes.config.test)
    _save_result(out, result)
    return result


def _test_top1(scenes: SceneSet, checkpoint: str, device: str, log: Path, niceness: int) -> float:
    """Top-1 (percent) of `fkd-dali eval` on the full test images; not counted in the training cost."""
    _, _, lines = run_cli(["eval", "--data", scenes.split_root("test"), "--checkpoint", checkpoint,
                           "--device", device], log, niceness)
    return float(_last_json(lines)["top1"])


def _save_result(out: Path, result: RunResult) -> None:
    tmp = out / f".{RESULT}.tmp"
    tmp.write_text(json.dumps(asdict(result), indent=1) + "\n")
    os.replace(tmp, out / RESULT)


def run_cli(args: Sequence[str], log: Path, niceness: int = 5) -> tuple[float, float, list[str]]:
    """Run `python -m fkd_dali ARGS` niced; (wall s, CPU s of it and its children, stdout lines).

    Raises:
        FkdError: the command failed; the message names the log with its output.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    with open(log, "a") as err:
        err.write(f"$ fkd-dali {' '.join(args)}\n")
        err.flush()
        proc = subprocess.run([sys.executable, "-m", "fkd_dali", *args], stdout=subprocess.PIPE, stderr=err,
                              text=True, preexec_fn=(lambda: os.nice(niceness)) if niceness else None, check=False)
        err.write(proc.stdout)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise FkdError(f"`fkd-dali {args[0]}` failed with exit status {proc.returncode}: see {log}")
    return wall, usage.ru_utime + usage.ru_stime - before, proc.stdout.splitlines()


def _training_folder(scenes: SceneSet, recipe: Recipe, out: Path) -> Path:
    """The split's folder, or for `recipe.images` a folder of hard links to its first images (class-balanced)."""
    if recipe.split not in scenes.splits:
        raise ConfigError(f"recipe {recipe.name}: no split {recipe.split!r} (one of {', '.join(scenes.splits)})")
    source = Path(scenes.split_root(recipe.split))
    pool = scenes.splits[recipe.split]
    if recipe.images is None or recipe.images >= len(pool):
        return source
    if recipe.images < scenes.config.classes:
        raise ConfigError(f"recipe {recipe.name}: images must be at least one per class ({scenes.config.classes})")
    subset = out / "data"
    for scene in sorted(pool, key=lambda s: s.path.rsplit("_", 1)[1])[:recipe.images]:  # image i has class i % C
        (subset / scene.path).parent.mkdir(parents=True, exist_ok=True)
        os.link(source / scene.path, subset / scene.path)
    return subset


def _scene_identity(scenes: SceneSet, recipe: Recipe) -> dict:
    """What a run depends on: the generator and every setting but the sizes of splits it never reads.

    Image i of a split is drawn from its own stream, so a teacher trained on the teacher split
    (validated on val) is the same run for a folder with more test images.
    """
    doc = json.loads((Path(scenes.root) / "scenes.json").read_text())
    read = {recipe.split, "val"}
    config = {k: v for k, v in doc["config"].items() if k not in SPLITS or k in read}
    return {"generator": doc["generator"], "version": doc["version"], "config": config}


def _load_result(path: Path) -> RunResult | None:
    try:
        raw = json.loads(path.read_text())
        raw["recipe"] = _recipe_from_json(raw["recipe"])
        return RunResult(**raw)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _recipe_from_json(raw: dict) -> Recipe:
    base = raw.get("start_from")
    return Recipe(**{**raw, "scale": tuple(raw["scale"]), "ratio": tuple(raw["ratio"]),
                     "start_from": _recipe_from_json(base) if base else None})


def _last_json(lines: Sequence[str]) -> dict:
    for line in reversed(lines):
        if line.startswith("{"):
            return json.loads(line)
    raise FkdError("fkd-dali printed no JSON summary line")


def _last_val(metrics: Path) -> float | None:
    top1 = None
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("kind") == "pass" and rec.get("val_top1") is not None:
                top1 = rec["val_top1"]
    return None if top1 is None else float(top1)


def teacher_crop_correctness(root: str | os.PathLike[str], teacher: RunResult, split: str = "train",
                             crops_per_image: int = 1, seed: int = 0, device: str = "auto", niceness: int = 5) -> dict:
    """Crop-label correctness of the teacher vs the folder labels on random-resized crops of `split`.

    Labels `crops_per_image` crops of every image of `split` with `fkd-dali labels generate`
    (the teacher at the scenes' side, top-1 kept; the crops a store of that seed holds)
    into `run_dir/crops-<split>-M<m>-seed<seed>.zarr`, then scores the stored top-1
    against the objects each crop shows (`scene_crops.crop_label_correctness`).
    """
    from fkd_dali.crops.boxes import boxes_to_fractions
    from fkd_dali.store.label_store import open_store

    from .scene_crops import crop_label_correctness

    scenes = load_scenes(root)
    out = Path(teacher.checkpoint).parents[1] / f"crops-{split}-M{crops_per_image}-seed{seed}.zarr"
    if not out.exists():
        run_cli(["labels", "generate", "--data", scenes.split_root(split), "--out", str(out), "--teacher",
                 teacher.recipe.arch, "--checkpoint", teacher.checkpoint, "--num-classes", str(scenes.config.classes),
                 "-M", str(crops_per_image), "-K", "1", "--seed", str(seed), "--input-size",
                 str(teacher.recipe.image_size or scenes.config.size), "--device", device, "--no-progress"],
                out.with_suffix(".log"), niceness)
    store = open_store(str(out))
    paths = [str(p) for p in store.read("images/path")]
    sizes = store.read("images/size")
    fractions = boxes_to_fractions(store.read("crops/box"), sizes).astype(np.float64)
    top1 = store.read("labels/index")[..., 0]
    n, m = top1.shape
    ids = np.repeat(np.arange(n), m)
    return crop_label_correctness(scenes_for_index(scenes, split, paths), ids, fractions.reshape(-1, 4),
                                  top1.reshape(-1))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.scene_teacher --root DIR`: ensure the teacher (and the hard-label student), print figures."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.scene_teacher", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="a scene folder (python -m bench scenes --root DIR)")
    p.add_argument("--student", action="store_true", help="also the hard-label student baseline (HARD_STUDENT)")
    p.add_argument("--crops", type=int, default=1, metavar="M",
                   help="crop-label correctness over M crops per train image (0 = skip; default %(default)s)")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)

    def work() -> dict:
        teacher = ensure_teacher(a.root, device=a.device)
        doc: dict = {"teacher": asdict(teacher)}
        if a.student:
            doc["student_hard"] = asdict(ensure_run(a.root, HARD_STUDENT, device=a.device))
        if a.crops:
            doc["crop_label_correctness"] = teacher_crop_correctness(a.root, teacher, crops_per_image=a.crops,
                                                                     device=a.device)
        return doc

    return json_main(work)


if __name__ == "__main__":
    raise SystemExit(main())

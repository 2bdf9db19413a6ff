"""`bench accuracy`: the FKD paper's Table 3 in miniature, on controlled scenes where every crop's content is known.

Students of one architecture, the same schedule and the same number of crops seen, several
seeds each, trained through `fkd-dali train` (in this process, `fit`) and scored with
`fkd-dali eval` on the full test images of the scenes (`bench.scenes`):

  (a) hard labels on random-resized crops (`--labels none`: DALI's own random crops);
  (b) ReLabel: fresh crops labelled by the teacher's label maps (`--labels relabel`);
  (c) FKD: replay of the store's crops and labels (marginal smoothing of the top-5);
  (d) online KD: fresh crops labelled by the teacher in the loop (`--labels online`);
  (e) FerKD: (c) with `--calibrate ferkd --selfmix 1.0`;
  (f) FKD + CutMix: (c) with `--cutmix 1.0`.

The teacher is trained once with hard labels on its own, larger split and cached with the
scenes (`bench.scene_teacher`, its cost reported apart). The store (M crops per image,
top-5, ground-truth probabilities) and the label maps (at the teacher's own resolution)
are made once from it with `fkd-dali labels generate` / `labels relabel-maps`. Per row:
test top-1 (mean +- std over seeds) and top-5, CPU- and wall-seconds per student, teacher
forward passes, and crop-label correctness: over the training crops, the share whose
label's top-1 names an object visible in the crop (`bench.scene_crops`, boxes from the
scenes), and the share of background-only crops. Rows are paired by seed (same initial
weights, image order and mixing draws): `paired` gives each row's per-seed difference to
(a). The design is fixed in docs/benchmarks.md ("Student accuracy") before any result.
Writes `<out>/accuracy.json` and `<out>/accuracy.png`.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from fkd_dali.errors import ConfigError

from .harness import load_average, load_notes, machine_description, tree_cpu_seconds
from .report import panels_chart, run_cli, write_json
from .scene_crops import crop_label_correctness
from .scene_teacher import TEACHER, Recipe, RunResult, ensure_teacher, run_dir
from .scene_teacher import run_cli as run_fkd_dali
from .scenes import SceneConfig, SceneSet, build_scenes, scenes_for_index

ROWS = ("hard", "relabel", "fkd", "online", "ferkd", "fkd_cutmix")
ROW_TITLES = {"hard": "(a) hard labels", "relabel": "(b) ReLabel maps", "fkd": "(c) FKD replay",
              "online": "(d) online KD", "ferkd": "(e) FerKD + SelfMix", "fkd_cutmix": "(f) FKD + CutMix"}
PAPER = {"hard": 78.1, "relabel": 78.9, "fkd": 80.1}  # ResNet-50 ImageNet top-1 of FKD's Table 3


@dataclass(frozen=True)
class AccuracyConfig:
    """One `bench accuracy` run. Student schedule fields are `fkd-dali train` flags of the same names.

    Attributes:
        scenes: the scene folder's config (sizes of the teacher, train and test splits).
        teacher: the teacher's recipe (`bench.scene_teacher.Recipe`).
        arch ... warmup_epochs: the students' architecture and schedule (every row).
        epochs: FKD epochs: every image gives `epochs` crops in every row (passes = epochs / m).
        num_crops: m, crops of an image per step in the multi-crop rows ((a) takes one).
        crops_per_image, top_k: M and K of the store.
        seeds: student seeds; each row trains once per seed.
    """

    scenes: SceneConfig = field(default_factory=lambda: SceneConfig(test=5000))
    teacher: Recipe = TEACHER
    arch: str = "test_resnet"
    epochs: int = 16
    batch_size: int = 64
    lr: float = 3e-3
    opt: str = "adamw"
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    num_crops: int = 4
    crops_per_image: int = 32
    top_k: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    rows: tuple[str, ...] = ROWS
    threads: int = 2
    device: str = "cpu"
    assets: str = "runs/bench-assets"
    out: str = "bench/results/cpu"
    quick: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        unknown = [r for r in self.rows if r not in ROWS]
        if unknown:
            raise ConfigError(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
        if not self.seeds:
            raise ConfigError("--seeds needs at least one seed")
        if not 1 <= self.top_k <= self.scenes.classes:
            raise ConfigError(f"K = {self.top_k} stored classes needs 1 <= K <= the {self.scenes.classes} scene classes")
        if self.epochs % self.num_crops or self.batch_size % self.num_crops:
            raise ConfigError(f"--epochs {self.epochs} and --batch-size {self.batch_size} must be multiples of "
                              f"--num-crops {self.num_crops} (every row sees each image the same number of times)")

    @property
    def root(self) -> Path:
        """The scenes and everything made from them (teacher, store, maps) live here."""
        c = self.scenes
        return Path(self.assets) / (f"scenes-C{c.classes}-S{c.size}-T{c.teacher}-N{c.train}-V{c.val}-E{c.test}"
                                    f"-seed{c.seed}")


#: --quick: every row, one seed, 4 classes (so K = 4), a few hundred images, a small teacher at the scenes' side:
#: checks the chain and the bookkeeping, measures nothing about the paper's claim.
QUICK = dict(scenes=SceneConfig(classes=4, teacher=1600, train=240, val=60, test=300),
             teacher=replace(TEACHER, name="teacher-quick", epochs=10, batch_size=64, image_size=None),
             epochs=4, batch_size=32, crops_per_image=8, top_k=4, seeds=(0,))


# -- assets made once: scenes, teacher, store, label maps --------------------------------------------------------

@dataclass(frozen=True)
class Assets:
    scenes: SceneSet
    teacher: RunResult
    store: str
    store_cost: dict
    maps: str
    maps_cost: dict


def _teacher_args(teacher: RunResult, classes: int) -> list[str]:
    return ["--teacher", teacher.recipe.arch, "--checkpoint", teacher.checkpoint, "--num-classes", str(classes)]


def _made_once(out: Path, args: list[str], marker: str) -> dict:
    """Run `fkd-dali ARGS` unless `out/marker` exists; its cost (reused runs cost 0 now)."""
    if (out / marker).exists():
        return {"reused": True, "wall_s": None, "cpu_s": None}
    wall, cpu, _ = run_fkd_dali(args, out.parent / f"{out.name}.log", niceness=0)
    return {"reused": False, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def make_assets(cfg: AccuracyConfig) -> Assets:
    """Scenes, teacher, store and label maps, each made once under `cfg.root` and reused after."""
    scenes = build_scenes(cfg.root, cfg.scenes, progress=cfg.progress)
    teacher = ensure_teacher(cfg.root, cfg.teacher, device=cfg.device, niceness=0)
    side = str(cfg.teacher.image_size or cfg.scenes.size)
    base = run_dir(cfg.root, cfg.teacher)
    store = base / f"store-M{cfg.crops_per_image}-K{cfg.top_k}.zarr"
    store_cost = _made_once(store, ["labels", "generate", "--data", scenes.split_root("train"), "--out", str(store),
                                    *_teacher_args(teacher, cfg.scenes.classes), "-M", str(cfg.crops_per_image),
                                    "-K", str(cfg.top_k), "--gt-prob", "--input-size", side, "--seed", "0",
                                    "--device", cfg.device, "--threads", str(cfg.threads), "--no-progress"],
                            "zarr.json")
    maps = base / "label-maps"
    maps_cost = _made_once(maps, ["labels", "relabel-maps", "--data", scenes.split_root("train"), "--out", str(maps),
                                  *_teacher_args(teacher, cfg.scenes.classes), "--top-k", str(cfg.top_k),
                                  "--device", cfg.device, "--no-progress"], "label_maps.json")
    return Assets(scenes, teacher, str(store), store_cost, str(maps), maps_cost)


# -- one student -------------------------------------------------------------------------------------------------

def row_options(row: str, cfg: AccuracyConfig, assets: Assets) -> dict:
    """The `TrainConfig` fields of a row (on top of the shared schedule)."""
    teacher = assets.teacher
    store = dict(labels=assets.store, num_crops=cfg.num_crops)
    return {
        "hard": dict(labels="none"),
        "relabel": dict(labels="relabel", label_maps=assets.maps, num_crops=cfg.num_crops),
        "fkd": store,
        "online": dict(labels="online", teacher=teacher.recipe.arch, teacher_checkpoint=teacher.checkpoint,
                       num_crops=cfg.num_crops),
        "ferkd": dict(store, calibrate="ferkd", selfmix=1.0),
        "fkd_cutmix": dict(store, cutmix=1.0),
    }[row]


def train_student(row: str, seed: int, cfg: AccuracyConfig, assets: Assets, out: Path) -> dict:
    """Train and evaluate one student; its test top-1/top-5 and costs (training only)."""
    from fkd_dali.config import EvalConfig, TrainConfig
    from fkd_dali.train.evaluate import evaluate_checkpoint
    from fkd_dali.train.loop import fit

    train = TrainConfig(data=assets.scenes.split_root("train"), arch=cfg.arch, output=str(out), epochs=cfg.epochs,
                        batch_size=cfg.batch_size, lr=cfg.lr, opt=cfg.opt, weight_decay=cfg.weight_decay,
                        warmup_epochs=cfg.warmup_epochs, image_size=cfg.scenes.size, seed=seed, device=cfg.device,
                        threads=cfg.threads, progress=cfg.progress, log_interval=50,
                        **row_options(row, cfg, assets))
    cpu0, t0 = tree_cpu_seconds(), time.perf_counter()
    result = fit(train)
    wall, cpu = time.perf_counter() - t0, tree_cpu_seconds() - cpu0
    test = evaluate_checkpoint(EvalConfig(data=assets.scenes.split_root("test"), checkpoint=str(out / "last.pth"),
                                          threads=cfg.threads, device=cfg.device))
    crops = result.steps * cfg.batch_size
    return {"row": row, "seed": seed, "top1": test.top1, "top5": test.top5, "final_loss": result.final_loss,
            "crops": crops, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


# -- what the training crops' labels name ------------------------------------------------------------------------

def label_correctness(cfg: AccuracyConfig, assets: Assets) -> dict[str, dict]:
    """Crop-label correctness of each row's training labels (the notes of the JSON say how each is measured)."""
    import torch

    from fkd_dali.crops.boxes import boxes_to_fractions
    from fkd_dali.crops.plan import pass_slots
    from fkd_dali.interop.relabel_maps import load_label_maps, relabel_targets
    from fkd_dali.store.opening import open_store

    store = open_store(assets.store)
    paths = [str(p) for p in store.read("images/path")]
    scenes = scenes_for_index(assets.scenes, "train", paths)
    passes = cfg.epochs // cfg.num_crops
    slots = np.unique(np.concatenate([pass_slots(p, cfg.num_crops, cfg.crops_per_image) for p in range(passes)]))
    sizes = store.read("images/size")
    boxes = boxes_to_fractions(store.read("crops/box")[:, slots], sizes).astype(np.float64)  # (n, s, 4)
    top1 = store.read("labels/index")[:, slots, 0].astype(np.int64)
    n, s = top1.shape
    ids = np.repeat(np.arange(n), s)
    flat = boxes.reshape(-1, 4)
    top1_prob = store.read("labels/prob")[:, slots, 0].astype(np.float64).reshape(-1)
    stored = crop_label_correctness(scenes, ids, flat, top1.reshape(-1), confidence=top1_prob)
    gt_prob = store.read("labels/gt_prob")[:, slots].astype(np.float32).reshape(-1)
    calibrated = np.where(gt_prob < 0.1, store.gt_classes()[ids], top1.reshape(-1))  # FerKD's hard negatives -> gt
    maps = load_label_maps(assets.maps, paths, _fingerprint(assets, paths))
    pooled = relabel_targets(maps.of_images(torch.from_numpy(ids), torch.device("cpu")),
                             torch.from_numpy(flat).float(), maps.info.num_classes).max(1)
    relabel = crop_label_correctness(scenes, ids, flat, pooled.indices.numpy(), confidence=pooled.values.numpy())
    hard = folder_label_correctness(stored)
    return {"hard": hard, "relabel": relabel, "fkd": stored,
            "online": stored, "ferkd": crop_label_correctness(scenes, ids, flat, calibrated),
            "fkd_cutmix": stored}


def folder_label_correctness(stored: dict) -> dict:
    """Row (a)'s figures: the folder label's correctness (`hard_correct`) in place of the teacher's, per kind too."""
    one = lambda v: 1.0 if v["crops"] else None  # noqa: E731  (a folder label is the image's class, sure of it)
    by_kind = {k: dict(v, predicted_correct=v["hard_correct"], predicted_is_image_class=one(v),
                       **({"mean_confidence": one(v)} if "mean_confidence" in v else {}))
               for k, v in stored["by_kind"].items()}
    return dict(stored, predicted_correct=stored["hard_correct"], by_kind=by_kind)


def _fingerprint(assets: Assets, paths: list[str]) -> str:
    from fkd_dali.data.index import build_index

    index = build_index(assets.scenes.split_root("train"))
    if index.paths != paths:
        raise ConfigError("the store's images are not the train split's: delete the assets folder and rerun")
    return index.fingerprint


# -- the run -----------------------------------------------------------------------------------------------------

def teacher_forwards(cfg: AccuracyConfig, assets: Assets) -> dict[str, dict]:
    """Teacher forward passes of each row: made once (store or maps) and per student (online KD)."""
    n = len(assets.scenes.splits["train"])
    store = n * cfg.crops_per_image
    return {"hard": {"once": 0, "per_student": 0}, "relabel": {"once": n, "per_student": 0},
            "fkd": {"once": store, "per_student": 0}, "online": {"once": 0, "per_student": n * cfg.epochs},
            "ferkd": {"once": store, "per_student": 0}, "fkd_cutmix": {"once": store, "per_student": 0}}


def summarize(runs: list[dict], rows: Sequence[str]) -> dict[str, dict]:
    """Per row: top-1 mean/std/per seed, top-5 mean, costs, and the per-seed top-1 difference to (a)."""
    out: dict[str, dict] = {}
    hard = {r["seed"]: r["top1"] for r in runs if r["row"] == "hard"}
    for row in rows:
        mine = sorted((r for r in runs if r["row"] == row), key=lambda r: r["seed"])
        top1 = [r["top1"] for r in mine]
        diffs = [r["top1"] - hard[r["seed"]] for r in mine if r["seed"] in hard]
        out[row] = {"title": ROW_TITLES[row], "top1_mean": statistics.fmean(top1),
                    "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0, "top1": top1,
                    "top5_mean": statistics.fmean(r["top5"] for r in mine),
                    "cpu_s_mean": statistics.fmean(r["cpu_s"] for r in mine),
                    "wall_s_mean": statistics.fmean(r["wall_s"] for r in mine),
                    "minus_hard_mean": statistics.fmean(diffs) if diffs else None,
                    "minus_hard": diffs}
    return out


def run_accuracy(cfg: AccuracyConfig) -> dict:
    """Assets, every (seed, row) student, crop-label correctness; writes accuracy.json and accuracy.png."""
    load_start = load_average()
    t0 = time.perf_counter()
    assets = make_assets(cfg)
    runs = []
    for i, seed in enumerate(cfg.seeds):
        order = list(cfg.rows[i % len(cfg.rows):] + cfg.rows[:i % len(cfg.rows)])  # each row leads in turn
        for row in order:
            runs.append(train_student(row, seed, cfg, assets, Path(cfg.assets) / "accuracy-run"))
    students_s = time.perf_counter() - t0
    correctness = label_correctness(cfg, assets)
    rows = summarize(runs, cfg.rows)
    forwards = teacher_forwards(cfg, assets)
    for row in cfg.rows:
        c = correctness[row]
        rows[row].update(teacher_forwards=forwards[row], label_names_visible_object=c["predicted_correct"],
                         background_only_crops=c["shares"]["background"])
    load = {"start": load_start, "end": load_average()}
    doc = {"benchmark": "accuracy", "machine": machine_description(), "load_average": load,
           "config": _config_json(cfg), "teacher": asdict(assets.teacher),
           "assets": {"store": assets.store, "store_cost": assets.store_cost, "maps": assets.maps,
                      "maps_cost": assets.maps_cost, "scenes": assets.scenes.root},
           "rows": rows, "runs": runs, "correctness": correctness, "students_wall_s": round(students_s, 1),
           "paper_table3": PAPER, "notes": _notes(cfg) + load_notes(load)}
    out = Path(cfg.out)
    write_json(out / "accuracy.json", doc)
    _chart(out / "accuracy.png", cfg, doc)
    return doc


def _config_json(cfg: AccuracyConfig) -> dict:
    return {**asdict(cfg), "scenes": asdict(cfg.scenes), "teacher": asdict(cfg.teacher), "root": str(cfg.root)}


def _notes(cfg: AccuracyConfig) -> list[str]:
    return [
        "test top-1/top-5: the student's last checkpoint on the full test images (resize + centre crop at the "
        "student's crop_pct), mean +- sample std over seeds; rows are paired by seed (same initial weights, "
        "image order and mixing draws), minus_hard = per-seed top-1 difference to row (a)",
        f"every row sees each training image {cfg.epochs} times: (a) {cfg.epochs} epochs of one crop; the others "
        f"{cfg.epochs // cfg.num_crops} passes of m={cfg.num_crops} crops per image per step",
        "crop-label correctness = share of training crops whose label's top-1 names an object visible in the crop "
        "(bench/SCENES.md: >= 30% of the object's box inside, or the object's box covering >= 50% of the crop), "
        "measured on the store's crops of the slots the replay uses (seed 0): (c), (f) their stored top-1 (CutMix "
        "mixes labels afterwards); (e) the same with FerKD's hard negatives (gt_prob < 0.1) given the ground "
        "truth; (a) the folder class on those crops (DALI draws (a)'s crops from the same distribution); (b) the "
        "label map pooled over those crops (the fresh crops of seed 0 are the store's crops, same sampler and "
        "seed); (d) the teacher's top-1 on those crops, which is the stored top-1 (label generation cuts them at "
        "the teacher's size, online KD resizes the student's crop)",
        "teacher forward passes: made once for all students (store: images x M; maps: one per image) or per "
        "student (online KD: every training crop); the teacher's own training is reported apart ('teacher')",
        "CPU-s and wall-s: one student's training (fit), all threads of this process; evaluation not counted",
    ]


def _chart(path: Path, cfg: AccuracyConfig, doc: dict) -> None:
    rows = doc["rows"]

    def bars(key: str, scale: float = 1.0, err: str | None = None, points: str | None = None) -> list[dict]:
        return [{"label": rows[r]["title"], "value": (rows[r][key] or 0.0) * scale,
                 "err": rows[r][err] if err else None, "points": rows[r][points] if points else None,
                 "group": "fkd-dali" if r in ("fkd", "ferkd", "fkd_cutmix") else "baseline"} for r in cfg.rows]

    seeds = [v for r in cfg.rows for v in rows[r]["top1"]]
    lo = 5 * math.floor(min(seeds) / 5 - 1)  # zoomed: the rows differ by points, not tens of points
    panels = [{"xlabel": f"test top-1 (%): mean, std (bar), seeds (dots); axis from {lo}%",
               "bars": bars("top1_mean", err="top1_std", points="top1"), "xlim": (lo, min(100, max(seeds) + 4))},
              {"xlabel": "top-1 minus (a) of the same seed (points): mean and seeds",
               "bars": bars("minus_hard_mean", points="minus_hard"), "target": 0.0, "target_label": "(a)"},
              {"xlabel": "training-crop labels naming a visible object (%)",
               "bars": bars("label_names_visible_object", 100.0)},
              {"xlabel": "CPU-seconds per student (training)", "bars": bars("cpu_s_mean")}]
    t = doc["teacher"]
    panels_chart(path, panels, f"Student accuracy on controlled scenes ({len(cfg.seeds)} seeds, {cfg.arch} "
                               f"students, teacher {t['recipe']['arch']} {t['test_top1']:.1f}% on the test images)",
                 f"{doc['machine'].get('cpu_model', '')}; {cfg.scenes.train} train / {cfg.scenes.test} test "
                 f"images, {cfg.epochs} epochs, m={cfg.num_crops}, M={cfg.crops_per_image}")


# -- CLI ---------------------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> AccuracyConfig:
    d = AccuracyConfig()
    p = argparse.ArgumentParser(prog="bench accuracy", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="every row, one seed, tiny sizes: checks the chain only")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help=f"student seeds (default {d.seeds})")
    p.add_argument("--rows", nargs="+", default=None, choices=ROWS, help="rows to train (default: all)")
    p.add_argument("--arch", default=None, help=f"student timm model (default {d.arch})")
    p.add_argument("--epochs", type=int, default=None, help=f"crops seen per image (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=None, help=f"crops per step (default {d.batch_size})")
    p.add_argument("--num-crops", "-m", type=int, default=None, help=f"m (default {d.num_crops})")
    p.add_argument("--crops-per-image", "-M", type=int, default=None, help=f"M of the store (default "
                                                                           f"{d.crops_per_image})")
    p.add_argument("--size", type=int, default=None, help=f"scene side in px (default {d.scenes.size})")
    p.add_argument("--train-images", type=int, default=None, help=f"default {d.scenes.train}")
    p.add_argument("--test-images", type=int, default=None, help=f"default {d.scenes.test}")
    p.add_argument("--teacher-images", type=int, default=None, help=f"default {d.scenes.teacher}")
    p.add_argument("--teacher-arch", default=None, help=f"default {d.teacher.arch}")
    p.add_argument("--teacher-epochs", type=int, default=None, help=f"default {d.teacher.epochs}")
    p.add_argument("--teacher-size", type=int, default=None,
                   help=f"teacher's training side in px (default {d.teacher.image_size} for {d.scenes.size} px "
                        "scenes, scaled with --size)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--assets", default=d.assets, help="scenes, teacher, store and maps, made once (default "
                                                      "%(default)s)")
    p.add_argument("--out", default=d.out, help="folder for accuracy.json and accuracy.png (default %(default)s)")
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    base = AccuracyConfig(**QUICK, quick=True) if a.quick else d
    scenes = replace(base.scenes, **{k: v for k, v in (("size", a.size), ("train", a.train_images),
                                                      ("test", a.test_images), ("teacher", a.teacher_images))
                                     if v is not None})
    teacher_size = a.teacher_size
    if teacher_size is None and a.size is not None and base.teacher.image_size is not None:
        teacher_size = round(base.teacher.image_size * a.size / base.scenes.size)
    teacher = replace(base.teacher, **{k: v for k, v in (("arch", a.teacher_arch), ("epochs", a.teacher_epochs),
                                                         ("image_size", teacher_size)) if v is not None})
    picked = {k: v for k, v in (("arch", a.arch), ("epochs", a.epochs), ("batch_size", a.batch_size),
                                ("num_crops", a.num_crops), ("crops_per_image", a.crops_per_image)) if v is not None}
    if a.seeds is not None:
        picked["seeds"] = tuple(a.seeds)
    if a.rows is not None:
        picked["rows"] = tuple(a.rows)
    return replace(base, scenes=scenes, teacher=teacher, device=a.device, threads=a.threads, assets=a.assets,
                   out=a.out, progress=a.progress, **picked)


def _summary(cfg: AccuracyConfig, doc: dict) -> dict:
    return {r: {"top1": round(v["top1_mean"], 2), "std": round(v["top1_std"], 2),
                "visible": round(100 * v["label_names_visible_object"], 1)} for r, v in doc["rows"].items()}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(argv, "accuracy", parse_args, run_accuracy, _summary)

"""`bench fidelity`: how close each kind of label is to the teacher's own output on the crop.

The oracle is the teacher (float32) on each stored crop as the replay graph cuts it at
the teacher's resolution and normalization, i.e. the pixels training replays. Labels:

- (a) the store's top-K label under each `--recovery` kind (hard, smoothing,
  marginal_smoothing with k = 1..K, marginal_renorm). The store comes from the same
  teacher on the same pixels, so these rows differ from the oracle only by top-K
  truncation, the recovery rule and float16 storage (which can tie the top-1 and top-2):
  a storage check, not evidence that FKD's labels beat the others;
- (b) ReLabel: the teacher's top-K label map of the whole image, RoI-aligned to the
  crop's box and softmaxed;
- (c) global: the teacher's softmax on the whole image (squashed to its input size),
  the same label for every crop of the image (plain per-image soft-label KD).

Two settings (`--setting`):

- photos (default): the bench corpus, `--corpus-images` JPEGs cut from the 20 source
  photos shipped with scikit-image and scikit-learn (`bench.corpus.SOURCE_PHOTOS`, mostly
  not ImageNet objects), a store of M = ceil(crops / images) crops per image, and the
  ImageNet teacher EfficientNet-Lite0, unconfident on these crops; ReLabel maps at 15x15
  (480 px, ReLabel's) and at the teacher's own 224 px (7x7);
- scenes: `bench accuracy`'s controlled scenes and the assets `make_assets` builds there
  (`--scenes-root`): its resnet10t teacher trained on the scenes at 96 px, its store
  (M = 32, top-5) and its ReLabel maps at the teacher's resolution (3x3 from 96 px), as
  in ReLabel, whose teacher made its maps at the resolution it was trained at. The first
  ceil(crops / images) stored crops of every train image are measured.

Per label q against the oracle p, averaged over crops: KL(p || q) in nats (q floored at
1e-8, so labels with zeros stay finite), KL(q || p), top-1 agreement (argmax q == argmax
p) and top-5 overlap (the share of p's top-5 among q's five largest; classes tied at q's
5th/6th place count as missing, so a one-hot label scores 1/5); over all crops, the
confident ones (the oracle's top-1 probability >= `--confident`), and unflipped and
flipped ones. Writes `<out>/fidelity.json` and `.png` (`fidelity-scenes.*` for scenes).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fkd_dali.errors import ConfigError
from fkd_dali.interop.relabel_maps import CNN_STRIDE as STRIDE

from .fidelity_settings import photo_setting, scene_setting
from .harness import load_average, load_notes, machine_description
from .labels import load_pil_rgb, teacher_crop
from .report import panels_chart, run_cli, write_json

KL_FLOOR = 1e-8  # labels are floored here inside KL(p || q): zeros in q would make it infinite
METRICS = ("kl", "kl_reverse", "top1_agreement", "top5_overlap")
SETTINGS = ("photos", "scenes")


@dataclass(frozen=True)
class FidelityBenchConfig:
    """Settings of one `bench fidelity` run (the CLI's defaults come from here).

    Attributes:
        crops: about how many crops to measure: M = ceil(crops / images) stored crops per image.
        top_k: K of the store and of the ReLabel maps.
        smoothing: eps of the `smoothing` recovery.
        batch_images: images per replay batch (each with its M crops).
        setting: "photos" (the corpus and an ImageNet teacher) or "scenes" (`bench accuracy`'s assets).
        scenes_root: the scene folder of the scenes setting (default: `bench accuracy`'s default root).
        confident: crops whose oracle top-1 probability is at least this form the confident subset.
    """

    setting: str = "photos"
    scenes_root: str | None = None
    confident: float = 0.5
    data: str | None = None
    corpus_images: int = 128
    corpus_seed: int = 0
    crops: int = 2048
    top_k: int = 5
    smoothing: float = 0.1
    teacher: str = "efficientnet_lite0"
    checkpoint: str | None = None
    seed: int = 0
    device: str = "auto"
    threads: int = 2
    batch_images: int = 4
    out: str = "runs/bench-fidelity"
    assets: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("corpus_images", "crops", "top_k", "threads", "batch_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.smoothing <= 1.0:
            raise ConfigError(f"smoothing must be in [0, 1], got {self.smoothing}")
        if not 0.0 < self.confident <= 1.0:
            raise ConfigError(f"confident must be in (0, 1], got {self.confident}")
        if self.setting not in SETTINGS:
            raise ConfigError(f"setting must be one of {', '.join(SETTINGS)}, got {self.setting!r}")
        if self.setting == "scenes" and (self.data or self.checkpoint):
            raise ConfigError("--setting scenes takes its images and teacher from --scenes-root: drop --data and "
                              "--checkpoint")

    @property
    def assets_dir(self) -> Path:
        return Path(self.assets) if self.assets else Path(self.out) / "assets"


# -- metrics -----------------------------------------------------------------------------

def label_agreement(oracle: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-crop fidelity of (B, C) labels `label` to (B, C) oracle distributions (see the module docstring)."""
    p, q = oracle.double(), label.double()
    kl = (torch.xlogy(p, p) - p * q.clamp_min(KL_FLOOR).log()).sum(1)
    kl_reverse = (torch.xlogy(q, q) - q * p.log()).sum(1)
    top1 = (q.argmax(1) == p.argmax(1)).double()
    five = min(5, q.shape[1])  # fewer classes than 5: the overlap of all of them
    sixth = q.topk(five + 1, dim=1).values[:, five:] if q.shape[1] > five else torch.full_like(q[:, :1], -math.inf)
    top5 = (q.gather(1, p.topk(five, dim=1).indices) > sixth).double().mean(1)
    return {"kl": kl, "kl_reverse": kl_reverse, "top1_agreement": top1, "top5_overlap": top5}


def confident_crops(oracle: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) bool: the crops on which the oracle's top-1 probability is at least `threshold`."""
    return oracle.amax(1) >= threshold


def summarize(per_crop: dict[str, torch.Tensor], flips: torch.Tensor,
              confident: torch.Tensor) -> dict[str, dict[str, float]]:
    """Means over all crops, the confident ones, unflipped and flipped ones (agreement and overlap in percent).

    A group without crops reports NaN.
    """
    out = {}
    for group, mask in (("all", torch.ones_like(flips)), ("confident", confident), ("unflipped", ~flips),
                        ("flipped", flips)):
        row = {"crops": int(mask.sum())}
        for name in METRICS:
            mean = float(per_crop[name][mask].mean()) if mask.any() else float("nan")
            row[name] = 100 * mean if name in ("top1_agreement", "top5_overlap") else mean
        out[group] = row
    return out


# -- the labels of every method ---------------------------------------------------------------

@dataclass
class Crops:
    """Every measured crop: the oracle, the stored top-K, and what ReLabel and global labels need."""

    oracle: torch.Tensor  # (N, C) float32 teacher softmax on the replayed crop
    index: torch.Tensor  # (N, K) stored top-K ids
    prob: torch.Tensor  # (N, K) stored probabilities (float16 in the store)
    image: torch.Tensor  # (N,) image id
    box: torch.Tensor  # (N, 4) (y, x, h, w) fractions of the image
    flip: torch.Tensor  # (N,) bool


@torch.inference_mode()
def replay_oracle(store_url: str, index, teacher, device: torch.device, batch_images: int, threads: int,
                  slots: int | None = None) -> Crops:
    """The teacher on the first `slots` stored crops of every image (default: all of them), cut by the replay
    graph at the teacher's size and normalization."""
    from fkd_dali.crops.boxes import boxes_to_fractions
    from fkd_dali.loaders.pass_table import read_pass_table
    from fkd_dali.loaders.replay import ReplayLoader
    from fkd_dali.loaders.sources import StoreCrops
    from fkd_dali.store.checks import check_dataset
    from fkd_dali.store.opening import open_store

    store = open_store(store_url)
    check_dataset(store, index)
    m, n = min(slots or store.crops_per_image, store.crops_per_image), len(index)
    table = read_pass_table(store, index.sizes, np.arange(m), np.arange(n))
    fractions = torch.from_numpy(boxes_to_fractions(table.boxes, index.sizes))  # (n, m, 4)
    loader = ReplayLoader(StoreCrops(store, index.sizes, prefetch=False), index, m=m, batch_size=m * batch_images,
                          size=teacher.input_size[-1], mean=teacher.mean, std=teacher.std,
                          interpolation=teacher.interpolation, threads=threads, device=device, half=False)
    model = teacher.model.to(device, memory_format=torch.channels_last).eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("oracle", "index", "prob", "image", "slot")}
    try:
        for batch in loader.table_batches(table):
            logits = model(batch.images.float().contiguous(memory_format=torch.channels_last))
            parts["oracle"].append(torch.softmax(logits.float(), dim=1).cpu())
            parts["index"].append(batch.field("index").cpu())
            parts["prob"].append(batch.field("prob").cpu())
            parts["image"].append(batch.meta[:, 0])
            parts["slot"].append(batch.meta[:, 1])
    finally:
        loader.close()
    cat = {k: torch.cat(v) for k, v in parts.items()}
    rows = torch.from_numpy(np.array(table.row_of))[cat["image"]]
    return Crops(cat["oracle"], cat["index"], cat["prob"], cat["image"], fractions[rows, cat["slot"]],
                 torch.from_numpy(np.array(table.flips))[rows, cat["slot"]].bool())


def store_labels(crops: Crops, num_classes: int, smoothing: float) -> list[tuple[str, dict, torch.Tensor]]:
    """(row label, row fields, (N, C) label) of the stored top-K under each recovery kind."""
    from fkd_dali.targets.recovery import recover_labels

    k_stored = crops.index.shape[1]
    kinds = [("hard", None), ("smoothing", None)] + [("marginal_smoothing", k) for k in range(1, k_stored + 1)] \
        + [("marginal_renorm", None)]
    out = []
    for kind, k in kinds:
        label = recover_labels(crops.index, crops.prob, num_classes, kind, k, smoothing)
        name = f"FKD store top-{k_stored}: {kind}" + (f" k={k}" if k is not None else "")
        out.append((name, {"method": "store", "recovery": kind, "k": k, "group": "fkd-dali"}, label))
    return out


def relabel_labels(crops: Crops, maps: torch.Tensor, num_classes: int) -> torch.Tensor:
    """ReLabel's label of every crop: its image's map (of `maps`, one per image) RoI-aligned to the crop box,
    softmaxed."""
    from fkd_dali.interop.relabel_maps import relabel_targets

    return torch.cat([relabel_targets(maps[crops.image[a:a + 256]], crops.box[a:a + 256], num_classes)
                      for a in range(0, len(crops.image), 256)])


@torch.inference_mode()
def global_labels(index, teacher, device: torch.device, batch: int = 16) -> torch.Tensor:
    """(n_images, C) teacher softmax on each whole image, squashed to the teacher's input size."""
    model = teacher.model.to(device, memory_format=torch.channels_last).eval()
    out = []
    for a in range(0, len(index), batch):
        images = []
        for i in range(a, min(a + batch, len(index))):
            img = load_pil_rgb(index.abspath(i))
            images.append(teacher_crop(img, (0, 0, img.height, img.width), False, teacher))
        x = torch.stack(images).to(device).contiguous(memory_format=torch.channels_last)
        out.append(torch.softmax(model(x).float(), dim=1).cpu())
    return torch.cat(out)


# -- the run --------------------------------------------------------------------------------------

def run_fidelity_benchmark(cfg: FidelityBenchConfig) -> dict:
    """Measure every label kind against the oracle; writes `<stem>.json` and `<stem>.png` (see `output_stem`)."""
    from fkd_dali.dist import pick_device

    load_start = load_average()
    device = pick_device(cfg.device)
    setting = (scene_setting if cfg.setting == "scenes" else photo_setting)(cfg, device)
    teacher, index = setting.teacher, setting.index
    crops = replay_oracle(setting.store, index, teacher, device, cfg.batch_images, cfg.threads, setting.slots)
    c = crops.oracle.shape[1]
    labels = store_labels(crops, c, cfg.smoothing)
    side = teacher.input_size[-1]
    for size, maps in setting.maps.items():
        own = ", the teacher's own" if size * STRIDE == side else ""
        labels.append((f"ReLabel: {size}x{size} top-{cfg.top_k} map ({size * STRIDE} px{own}), RoI-aligned",
                       {"method": "relabel", "map_size": size, "group": "baseline"},
                       relabel_labels(crops, maps, c)))
    labels.append(("global: teacher on the whole image", {"method": "global", "group": "baseline"},
                   global_labels(index, teacher, device)[crops.image]))
    confident = confident_crops(crops.oracle, cfg.confident)
    rows = [{"label": name, **fields, **summarize(label_agreement(crops.oracle, label), crops.flip, confident)}
            for name, fields, label in labels]
    machine = machine_description()
    load = {"start": load_start, "end": load_average()}
    top1 = crops.oracle.amax(1)
    doc = {"benchmark": "fidelity", "setting": cfg.setting, "machine": machine, "load_average": load,
           "config": asdict(cfg), "dataset": setting.dataset, "store": {**setting.store_info, "path": setting.store},
           "teacher": {"name": teacher.name, "timm_name": teacher.timm_name, "input_size": side,
                       "num_classes": teacher.num_classes},
           "crops": len(crops.image), "crops_per_image": setting.slots, "flipped_crops": int(crops.flip.sum()),
           "confident_crops": {"threshold": cfg.confident, "crops": int(confident.sum()),
                               "share": float(confident.double().mean())},
           "stored_top_k_mass": float(crops.prob.float().sum(1).mean()),
           "oracle_top1_prob": float(top1.mean()), "oracle_top1_prob_median": float(top1.median()),
           "rows": rows, "notes": setting.notes + _notes(cfg, teacher) + load_notes(load)}
    out = Path(cfg.out)
    write_json(out / f"{output_stem(cfg)}.json", doc)
    _chart(out / f"{output_stem(cfg)}.png", doc, machine)
    return doc


def output_stem(cfg: FidelityBenchConfig) -> str:
    """`fidelity` for the photos, `fidelity-scenes` for the scenes (both can live in one results folder)."""
    return "fidelity" if cfg.setting == "photos" else f"fidelity-{cfg.setting}"


def _notes(cfg: FidelityBenchConfig, teacher) -> list[str]:
    return [f"oracle = {teacher.name} (float32) on each crop as the replay graph cuts it at the teacher's "
            f"{teacher.input_size[-1]} px; the store's labels come from label generation with the same teacher on "
            "the same pixels, so rows (a) measure what top-K storage, float16 and each recovery lose, nothing "
            "else: a storage check",
            f"confident crops: the oracle's top-1 probability >= {cfg.confident:g}",
            f"KL(p || q) floors q at {KL_FLOOR:g}: labels that put 0 on a class the teacher gives mass to (hard, "
            "marginal_renorm) score large but finite values; KL(q || p) is the reverse direction",
            "top-5 overlap: the share of the oracle's top-5 among the label's five largest classes, ties at the "
            "label's 5th/6th place counted as missing (a one-hot label scores at most 20%)"]


def _chart(path: Path, doc: dict, machine: dict) -> None:
    rows, conf = doc["rows"], doc["confident_crops"]

    def bars(metric: str, group: str = "all") -> list[dict]:
        return [{"label": r["label"], "value": r[group][metric], "group": r["group"]} for r in rows]

    subset = f"confident crops ({conf['crops']}, oracle top-1 >= {conf['threshold']:g})"
    images = (f"{doc['dataset']['n_images']} scenes" if doc["setting"] == "scenes" else
              f"{doc['dataset']['n_images']} photos" + (f" from {doc['dataset']['source_photos']} sources"
                                                        if doc["dataset"].get("source_photos") else ""))
    panels_chart(path, [{"xlabel": "top-1 agreement with the oracle (%), all crops", "bars": bars("top1_agreement")},
                        {"xlabel": f"top-1 agreement (%), {subset}", "bars": bars("top1_agreement", "confident")},
                        {"xlabel": "top-5 overlap with the oracle (%), all crops", "bars": bars("top5_overlap")},
                        {"xlabel": "KL(oracle || label), nats", "bars": bars("kl")}],
                 f"Label fidelity vs the teacher on each crop: {doc['crops']} crops of {images}, teacher "
                 f"{doc['teacher']['name']} at {doc['teacher']['input_size']} px (mean top-1 prob "
                 f"{doc['oracle_top1_prob']:.2f}); the store rows are a storage check",
                 f"{machine['cpu_model']}, {machine['usable_cores']} cores")


def parse_args(argv: Sequence[str] | None) -> FidelityBenchConfig:
    d = FidelityBenchConfig()
    p = argparse.ArgumentParser(prog="bench fidelity", description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=SETTINGS, default=d.setting,
                   help="photos: the corpus and an ImageNet teacher; scenes: bench accuracy's scenes and assets")
    p.add_argument("--scenes-root", default=d.scenes_root, metavar="DIR",
                   help="scene folder of --setting scenes (default: bench accuracy's default root)")
    p.add_argument("--confident", type=float, default=d.confident,
                   help="confident subset: crops whose oracle top-1 probability is at least this")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="photos: an ImageNet-style folder instead of the corpus")
    src.add_argument("--corpus-images", type=int, default=d.corpus_images, metavar="N")
    p.add_argument("--corpus-seed", type=int, default=d.corpus_seed)
    p.add_argument("--crops", type=int, default=d.crops,
                   help="about this many crops: the first ceil(crops / images) stored crops of every image")
    p.add_argument("--top-k", "-K", type=int, default=d.top_k)
    p.add_argument("--smoothing", type=float, default=d.smoothing, help="eps of the smoothing recovery")
    p.add_argument("--teacher", default=d.teacher, help="photos: the teacher (scenes: the one bench accuracy trained)")
    p.add_argument("--checkpoint", default=d.checkpoint, help="photos: the teacher's weights")
    p.add_argument("--seed", type=int, default=d.seed, help="photos: crop seed of the store")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=d.threads, help="DALI threads")
    p.add_argument("--batch-images", type=int, default=d.batch_images, help="images (x M crops) per teacher batch")
    p.add_argument("--out", default=d.out, metavar="DIR")
    p.add_argument("--assets", default=d.assets, metavar="DIR", help="photos: corpus, store, maps (default OUT/assets)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return FidelityBenchConfig(setting=a.setting, scenes_root=a.scenes_root, confident=a.confident, data=a.data,
                               corpus_images=a.corpus_images, corpus_seed=a.corpus_seed, crops=a.crops,
                               top_k=a.top_k, smoothing=a.smoothing, teacher=a.teacher, checkpoint=a.checkpoint,
                               seed=a.seed, device=a.device, threads=a.threads, batch_images=a.batch_images,
                               out=a.out, assets=a.assets, progress=not a.no_progress)


def _summary(cfg: FidelityBenchConfig, doc: dict) -> dict:
    """Where the files are; one line per method: top-1 agreement (all and confident crops) and KL over all crops."""
    out = Path(cfg.out) / output_stem(cfg)
    return {"json": f"{out}.json", "png": f"{out}.png", "crops": doc["crops"],
            "confident_crops": doc["confident_crops"]["crops"],
            "top1_agreement": {r["label"]: round(r["all"]["top1_agreement"], 1) for r in doc["rows"]},
            "top1_agreement_confident": {r["label"]: round(r["confident"]["top1_agreement"], 1)
                                         for r in doc["rows"]},
            "kl": {r["label"]: round(r["all"]["kl"], 4) for r in doc["rows"]}}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bench fidelity` / `fkd-dali bench fidelity`; FkdError -> message, exit 2."""
    return run_cli(argv, "fidelity", parse_args, run_fidelity_benchmark, _summary)


if __name__ == "__main__":
    raise SystemExit(main())

"""`bench fidelity`: how close each kind of stored label is to the teacher's own output on the crop.

FKD's central claim: a label stored for a crop region loses (almost) nothing against
the teacher run on that region, while ReLabel's label map, RoI-aligned to the crop,
and a single label per image do lose. Measured here on real photos with a real teacher:

- crops: the M stored crops of every corpus image (a store made by fkd-dali's label
  generation, top-K), about `--crops` in all;
- oracle: the teacher (float32) on each crop as the replay graph cuts it at the
  teacher's resolution and normalization, i.e. the pixels training replays;
- (a) the store's top-K label recovered by each `--recovery` kind (hard, smoothing,
  marginal_smoothing with k = 1..K, marginal_renorm);
- (b) ReLabel: the teacher's 15x15 top-K label map of the whole image (480 px, as
  `bench store` makes them), RoI-aligned to the crop's box and softmaxed; and the
  same with a map at the teacher's own input size (7x7 from 224 px for a stride-32
  CNN), because ReLabel's teacher was trained at its map resolution and ours is not;
- (c) global: the teacher's softmax on the whole image (squashed to its input size),
  the same label for every crop of the image (plain per-image soft-label KD).

Per label q against the oracle p, averaged over crops, for all crops and separately for
unflipped and flipped ones: KL(p || q) in nats (q floored at 1e-8, so labels with zeros
stay finite), KL(q || p), top-1 agreement (argmax q == argmax p) and top-5 overlap
(the share of p's top-5 among q's five largest; classes tied at q's 5th/6th place count
as missing, so a one-hot label scores 1/5). Writes `<out>/fidelity.json` and
`<out>/fidelity.png`.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .corpus import prepare_dataset
from .harness import load_average, load_notes, machine_description
from .labels import load_pil_rgb, teacher_crop, write_relabel_maps, write_store_labels
from .report import panels_chart, run_cli, write_json
from fkd_dali.errors import ConfigError
from fkd_dali.interop.relabel_maps import CNN_STRIDE as STRIDE, MAP_SIZE

KL_FLOOR = 1e-8  # labels are floored here inside KL(p || q): zeros in q would make it infinite
METRICS = ("kl", "kl_reverse", "top1_agreement", "top5_overlap")


@dataclass(frozen=True)
class FidelityBenchConfig:
    """Settings of one `bench fidelity` run (the CLI's defaults come from here).

    Attributes:
        crops: about how many crops to measure: M = ceil(crops / images) stored crops per image.
        top_k: K of the store and of the ReLabel maps.
        smoothing: eps of the `smoothing` recovery.
        batch_images: images per replay batch (each with its M crops).
    """

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
    sixth = q.topk(6, dim=1).values[:, 5:6]
    top5 = (q.gather(1, p.topk(5, dim=1).indices) > sixth).double().mean(1)
    return {"kl": kl, "kl_reverse": kl_reverse, "top1_agreement": top1, "top5_overlap": top5}


def summarize(per_crop: dict[str, torch.Tensor], flips: torch.Tensor) -> dict[str, dict[str, float]]:
    """Means over all crops, unflipped and flipped ones (agreement and overlap in percent)."""
    out = {}
    for group, mask in (("all", torch.ones_like(flips)), ("unflipped", ~flips), ("flipped", flips)):
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
def replay_oracle(store_url: str, index, teacher, device: torch.device, batch_images: int, threads: int) -> Crops:
    """The teacher on every stored crop, cut by the replay graph at its own size and normalization."""
    from fkd_dali.crops.boxes import boxes_to_fractions
    from fkd_dali.loaders.pass_table import read_pass_table
    from fkd_dali.loaders.replay import ReplayLoader
    from fkd_dali.loaders.sources import StoreCrops
    from fkd_dali.store.opening import open_store

    store = open_store(store_url)
    m, n = store.crops_per_image, len(index)
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


def relabel_labels(crops: Crops, index, maps_root: Path, num_classes: int) -> torch.Tensor:
    """ReLabel's label of every crop: its image's map RoI-aligned to the crop box, softmaxed."""
    from fkd_dali.interop.relabel_maps import label_map_path, read_label_map, relabel_targets

    maps = torch.stack([read_label_map(label_map_path(maps_root, index.paths[i])) for i in range(len(index))])
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
    """Measure every label kind against the oracle; writes `fidelity.json` and `fidelity.png`."""
    from fkd_dali.dist import pick_device
    from fkd_dali.labels.teacher import load_teacher

    load_start = load_average()
    device = pick_device(cfg.device)
    index, dataset = prepare_dataset(cfg.data, cfg.corpus_images, cfg.corpus_seed, cfg.assets_dir, cfg.progress)
    m = math.ceil(cfg.crops / len(index))
    fp = index.fingerprint[:8]
    info, store = write_store_labels(index, cfg.assets_dir / f"store-{fp}-M{m}-K{cfg.top_k}", cfg.teacher,
                                     cfg.checkpoint, m, cfg.top_k, cfg.seed, str(device), cfg.threads,
                                     progress=cfg.progress)
    teacher = load_teacher(cfg.teacher, cfg.checkpoint)
    native = teacher.input_size[-1] // STRIDE  # map side at the teacher's own resolution
    maps = {MAP_SIZE: cfg.assets_dir / f"relabel-maps-{fp}-K{cfg.top_k}",  # the folder `bench store` writes
            native: cfg.assets_dir / f"relabel-maps-{fp}-K{cfg.top_k}-S{native}"}
    for size, root in maps.items():
        write_relabel_maps(index, root, teacher, cfg.top_k, map_size=size, progress=cfg.progress)
    crops = replay_oracle(store, index, teacher, device, cfg.batch_images, cfg.threads)
    c = crops.oracle.shape[1]
    labels = store_labels(crops, c, cfg.smoothing)
    for size, root in maps.items():
        labels.append((f"ReLabel: {size}x{size} top-{cfg.top_k} map ({size * STRIDE} px), RoI-aligned",
                       {"method": "relabel", "map_size": size, "group": "baseline"},
                       relabel_labels(crops, index, root, c)))
    labels.append(("global: teacher on the whole image", {"method": "global", "group": "baseline"},
                   global_labels(index, teacher, device)[crops.image]))
    rows = [{"label": name, **fields, **summarize(label_agreement(crops.oracle, label), crops.flip)}
            for name, fields, label in labels]
    machine = machine_description()
    load = {"start": load_start, "end": load_average()}
    notes = [f"oracle = {cfg.teacher} (float32) on each crop as the replay graph cuts it at the teacher's "
             f"{teacher.input_size[-1]} px; the store's labels come from label generation on the same pixels, so "
             "rows (a) measure what top-K storage and each recovery lose, nothing else",
             f"KL(p || q) floors q at {KL_FLOOR:g}: labels that put 0 on a class the teacher gives mass to (hard, "
             "marginal_renorm) score large but finite values; KL(q || p) is the reverse direction",
             "top-5 overlap: the share of the oracle's top-5 among the label's five largest classes, ties at the "
             "label's 5th/6th place counted as missing (a one-hot label scores at most 20%)"]
    notes.extend(load_notes(load))
    doc = {"benchmark": "fidelity", "machine": machine, "load_average": load, "config": asdict(cfg),
           "dataset": dataset, "store": {**asdict(info), "path": store, "crops_per_image": m},
           "crops": len(crops.image), "flipped_crops": int(crops.flip.sum()),
           "stored_top_k_mass": float(crops.prob.float().sum(1).mean()),
           "oracle_top1_prob": float(crops.oracle.max(1).values.mean()), "rows": rows, "notes": notes}
    out = Path(cfg.out)
    write_json(out / "fidelity.json", doc)
    _chart(out / "fidelity.png", cfg, doc, machine)
    return doc


def _chart(path: Path, cfg: FidelityBenchConfig, doc: dict, machine: dict) -> None:
    rows = doc["rows"]

    def bars(metric: str) -> list[dict]:
        return [{"label": r["label"], "value": r["all"][metric], "group": r["group"]} for r in rows]

    panels_chart(path, [{"xlabel": "top-1 agreement with the oracle (%)", "bars": bars("top1_agreement")},
                        {"xlabel": "top-5 overlap with the oracle (%)", "bars": bars("top5_overlap")},
                        {"xlabel": "KL(oracle || label), nats (lower is closer)", "bars": bars("kl")}],
                 f"Label fidelity vs the teacher on each crop: {doc['crops']} crops of {doc['dataset']['n_images']} "
                 f"real photos, teacher {cfg.teacher}",
                 f"{machine['cpu_model']}, {machine['usable_cores']} cores")


def parse_args(argv: Sequence[str] | None) -> FidelityBenchConfig:
    d = FidelityBenchConfig()
    p = argparse.ArgumentParser(prog="bench fidelity", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="ImageNet-style folder instead of the corpus")
    src.add_argument("--corpus-images", type=int, default=d.corpus_images, metavar="N")
    p.add_argument("--corpus-seed", type=int, default=d.corpus_seed)
    p.add_argument("--crops", type=int, default=d.crops, help="about this many crops (M = ceil(crops / images))")
    p.add_argument("--top-k", "-K", type=int, default=d.top_k)
    p.add_argument("--smoothing", type=float, default=d.smoothing, help="eps of the smoothing recovery")
    p.add_argument("--teacher", default=d.teacher)
    p.add_argument("--checkpoint", default=d.checkpoint)
    p.add_argument("--seed", type=int, default=d.seed, help="crop seed of the store")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=d.threads, help="DALI threads")
    p.add_argument("--batch-images", type=int, default=d.batch_images, help="images (x M crops) per teacher batch")
    p.add_argument("--out", default=d.out, metavar="DIR")
    p.add_argument("--assets", default=d.assets, metavar="DIR", help="corpus, store, maps (default OUT/assets)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return FidelityBenchConfig(data=a.data, corpus_images=a.corpus_images, corpus_seed=a.corpus_seed, crops=a.crops,
                               top_k=a.top_k, smoothing=a.smoothing, teacher=a.teacher, checkpoint=a.checkpoint,
                               seed=a.seed, device=a.device, threads=a.threads, batch_images=a.batch_images,
                               out=a.out, assets=a.assets, progress=not a.no_progress)


def _summary(cfg, doc: dict) -> dict:
    """One line per method: top-1 agreement and KL over all crops."""
    return {"crops": doc["crops"], "top1_agreement": {r["label"]: round(r["all"]["top1_agreement"], 1)
                                                      for r in doc["rows"]},
            "kl": {r["label"]: round(r["all"]["kl"], 4) for r in doc["rows"]}}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bench fidelity` / `fkd-dali bench fidelity`; FkdError -> message, exit 2."""
    return run_cli(argv, "fidelity", parse_args, run_fidelity_benchmark, _summary)


if __name__ == "__main__":
    raise SystemExit(main())

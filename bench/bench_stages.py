"""`bench stages`: where a loader's CPU time goes, stage by stage, in CPU-milliseconds per crop.

Explains the `bench loaders` figures. On one thread (DALI num_threads=1, one torch
thread, one DataLoader worker), over the same images and stored crops:

- fkd-dali: DALI graphs that stop after decode, after the m ROI resizes, and after
  normalize + stack (`fkd_dali.pipelines.fragments.decode_and_crop`, the replay's graph); then the
  whole replay loader without and with labels (adds file reads, pass table, DALI->torch
  copy, Python feed, label gather + recovery);
- FKD reference: PIL decode, m `resized_crop`, `to_tensor` + `normalize`, label-file load
  (FKD's published shape, M=500: `bench.labels.write_fkd_published`),
  collate + CPU label recovery, and the whole DataLoader (the rest is worker IPC);
- ReLabel: the same per crop (a decode per crop), plus map read and RoI-align recovery.

Each stage is the median over repeats of (process tree CPU seconds) / crops; a stage's
share is its difference to the previous one. Writes `<out>/stages.json` / `stages.png`.
"""
from __future__ import annotations

import argparse
import statistics
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from fkd_dali.errors import ConfigError

from .corpus import prepare_dataset
from .harness import load_average, load_notes, machine_description, measure, tree_cpu_seconds
from .labels import FKD_PUBLISHED_CROPS, write_fkd_published, write_relabel_maps, write_store_labels
from .report import run_cli, stacked_chart, write_json


@dataclass(frozen=True)
class StagesConfig:
    """Settings of one `bench stages` run (defaults match `bench loaders`' CPU run)."""

    data: str | None = None
    corpus_images: int = 128
    corpus_seed: int = 0
    m: int = 4
    batch_size: int = 64
    image_size: int = 224
    crops_per_image: int = 16
    top_k: int = 5
    teacher: str = "efficientnet_lite0"
    checkpoint: str | None = None
    images: int = 64
    repeats: int = 3
    seed: int = 0
    out: str = "runs/bench-stages"
    assets: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size % self.m or self.images < self.batch_size // self.m:
            raise ConfigError("batch size must be a multiple of m, and --images at least one batch of images")

    @property
    def assets_dir(self) -> Path:
        return Path(self.assets) if self.assets else Path(self.out) / "assets"


def cpu_per_crop(run: Callable[[], int], repeats: int) -> float:
    """Median over repeats of CPU milliseconds (process tree) per crop; `run` returns its crop count."""
    run()  # warm-up: first-call allocations, page cache
    values = []
    for _ in range(repeats):
        cpu0 = tree_cpu_seconds()
        crops = run()
        values.append(1000.0 * (tree_cpu_seconds() - cpu0) / crops)
    return statistics.median(values)


# -- fkd-dali ---------------------------------------------------------------------------

def _dali_stage(stage: str, encoded: list, rois: list, cfg: StagesConfig) -> Callable[[], int]:
    """A DALI CPU graph that stops after `stage` ("decode", "resize", "full"), fed the same batches."""
    from nvidia.dali import fn, pipeline_def, types

    from fkd_dali.pipelines.fragments import decode, decode_and_crop, interp_type

    ipb = cfg.batch_size // cfg.m
    n_batches = len(encoded) // ipb
    batches = [(encoded[b * ipb:(b + 1) * ipb], rois[b * ipb:(b + 1) * ipb]) for b in range(n_batches)]
    state = {"i": 0}

    def source():
        batch = batches[state["i"] % n_batches]
        state["i"] += 1
        return batch

    @pipeline_def(batch_size=ipb, num_threads=1, device_id=None, prefetch_queue_depth=1, exec_dynamic=True)
    def graph():
        jpegs, r = fn.external_source(source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.FLOAT])
        if stage == "full":
            return decode_and_crop(jpegs, r, cfg.m, cfg.image_size, "bilinear", (0.485, 0.456, 0.406),
                                   (0.229, 0.224, 0.225), gpu=False)
        image = decode(jpegs, gpu=False)
        if stage == "decode":
            return image
        return tuple(fn.resize(image, roi_start=r[k][0:2], roi_end=r[k][2:4], size=(cfg.image_size,) * 2,
                               interp_type=interp_type("bilinear"), antialias=True) for k in range(cfg.m))

    with warnings.catch_warnings():  # the decode-only and resize-only graphs leave inputs unused on purpose
        warnings.filterwarnings("ignore", message="The external source node")
        pipe = graph()
        pipe.build()

    def run() -> int:
        for _ in range(n_batches):
            pipe.run()
        return n_batches * ipb * cfg.m

    return run


def fkd_dali_stages(cfg: StagesConfig, index, store: str) -> dict[str, float]:
    from fkd_dali.crops.plan import make_pass_plan
    from fkd_dali.loaders.feed import flipped_rois, read_encoded
    from fkd_dali.loaders.pass_table import plan_table
    from fkd_dali.store.opening import open_store

    from .loaders import FkdDaliLoader, LoaderSpec

    st = open_store(store)
    table = plan_table(st, index.sizes, make_pass_plan(cfg.seed, 0, cfg.m, st.crops_per_image, len(index)))
    ids = table.images[:cfg.images]
    encoded = [read_encoded(index.abspath(int(i))) for i in ids]
    rois = [flipped_rois(table.rois[r], table.flips[r]) for r in range(len(ids))]
    out = {}
    for stage in ("decode", "resize", "full"):
        out[stage] = cpu_per_crop(_dali_stage(stage, encoded, rois, cfg), cfg.repeats)
    spec = LoaderSpec(index=index, batch_size=cfg.batch_size, workers=1, m=cfg.m, image_size=cfg.image_size,
                      store=store, seed=cfg.seed)
    batches = cfg.images // (cfg.batch_size // cfg.m)
    for name, labels in (("loader_nolabels", False), ("loader", True)):
        rounds = [measure(lambda labels=labels: FkdDaliLoader(spec, with_labels=labels), 2, batches)
                  for _ in range(cfg.repeats)]
        out[name] = statistics.median(r.cpu_s_per_1000 for r in rounds)
    return out


# -- FKD reference and ReLabel ------------------------------------------------------------

def reference_stages(cfg: StagesConfig, index, fkd_root: str, maps_root: str) -> dict[str, dict[str, float]]:
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF
    from torch.utils.data import default_collate

    from fkd_dali.interop.relabel_maps import relabel_targets

    from .labels import load_pil_rgb
    from .loaders import FkdReferenceDataset, LoaderSpec, ReLabelDataset, create_loader, fkd_soft_targets

    spec = LoaderSpec(index=index, batch_size=cfg.batch_size, workers=1, m=cfg.m, image_size=cfg.image_size,
                      fkd_labels=fkd_root, fkd_unpickle=True, label_maps=maps_root, seed=cfg.seed)
    fkd, rel = FkdReferenceDataset(spec), ReLabelDataset(spec)
    images = list(range(cfg.images))
    size = [cfg.image_size] * 2
    boxes = {i: fkd.load(i) for i in images}
    m = cfg.m

    def decode() -> int:
        for i in images:
            load_pil_rgb(fkd.paths[i])
        return len(images) * m

    def crop(tensor: bool) -> Callable[[], int]:
        def run() -> int:
            for i in images:
                img = load_pil_rgb(fkd.paths[i])
                coords, flip = boxes[i].coords, boxes[i].flip
                for s in range(m):
                    y, x, h, w = (coords[s] * [img.height, img.width, img.height, img.width]).round().astype(int)
                    c = TF.resized_crop(img, int(y), int(x), int(h), int(w), size, antialias=True)
                    c = TF.hflip(c) if flip[s] else c
                    if tensor:
                        TF.normalize(TF.to_tensor(c), spec.mean, spec.std)
            return len(images) * m
        return run

    def getitem() -> int:
        for i in images:
            fkd[i]
        return len(images) * m

    items = [fkd[i] for i in images[: cfg.batch_size // m]]

    def collate() -> int:
        crops, labels, _ = default_collate(items)
        crops.flatten(0, 1)
        fkd_soft_targets(labels.flatten(0, 1), 1000)
        return len(items) * m

    ipb = cfg.batch_size // m
    fkd_out = {"decode": cpu_per_crop(decode, cfg.repeats), "resize": cpu_per_crop(crop(False), cfg.repeats),
               "tensor": cpu_per_crop(crop(True), cfg.repeats), "getitem": cpu_per_crop(getitem, cfg.repeats),
               "collate": cpu_per_crop(collate, cfg.repeats)}
    fkd_out["loader"] = statistics.median(
        measure(lambda: create_loader("fkd-reference", spec), 2, cfg.images // ipb).cpu_s_per_1000
        for _ in range(cfg.repeats))

    def rl_decode_crop(tensor: bool) -> Callable[[], int]:
        def run() -> int:
            for i in images:
                img = load_pil_rgb(rel.paths[i])
                y, x, h, w = T.RandomResizedCrop.get_params(img, rel.scale, rel.ratio)
                c = TF.resized_crop(img, y, x, h, w, size, antialias=True)
                if tensor:
                    TF.normalize(TF.to_tensor(c), spec.mean, spec.std)
            return len(images)
        return run

    def rl_getitem() -> int:
        for i in images:
            rel[i]
        return len(images)

    rl_items = [rel[i] for i in images[: cfg.batch_size]]

    def rl_collate() -> int:
        crops, label_maps, box = default_collate(rl_items)
        relabel_targets(label_maps, box, 1000)
        return len(rl_items)

    rel_out = {"decode": cpu_per_crop(lambda: decode() // m, cfg.repeats),
               "resize": cpu_per_crop(rl_decode_crop(False), cfg.repeats),
               "tensor": cpu_per_crop(rl_decode_crop(True), cfg.repeats),
               "getitem": cpu_per_crop(rl_getitem, cfg.repeats),
               "collate": cpu_per_crop(rl_collate, cfg.repeats)}
    rel_out["loader"] = statistics.median(
        measure(lambda: create_loader("relabel", spec), 2, cfg.images // cfg.batch_size).cpu_s_per_1000
        for _ in range(cfg.repeats))
    return {"fkd-reference": fkd_out, "relabel": rel_out}


def breakdown(stages: dict[str, dict[str, float]]) -> dict[str, list[tuple[str, float]]]:
    """Cumulative stage figures -> each stage's own CPU-ms per crop (differences, floored at 0)."""
    d, f, r = stages["fkd-dali"], stages["fkd-reference"], stages["relabel"]
    pos = lambda v: max(0.0, v)  # noqa: E731
    return {
        "fkd-dali": [("decode", d["decode"]), ("resize", pos(d["resize"] - d["decode"])),
                     ("normalize + stack", pos(d["full"] - d["resize"])),
                     ("feed, copy to torch, Python", pos(d["loader_nolabels"] - d["full"])),
                     ("labels", pos(d["loader"] - d["loader_nolabels"]))],
        "fkd-reference": [("decode", f["decode"]), ("resize", pos(f["resize"] - f["decode"])),
                          ("to_tensor + normalize", pos(f["tensor"] - f["resize"])),
                          ("label file", pos(f["getitem"] - f["tensor"])),
                          ("collate + labels", f["collate"]),
                          ("DataLoader IPC, Python", pos(f["loader"] - f["getitem"] - f["collate"]))],
        "relabel": [("decode", r["decode"]), ("resize", pos(r["resize"] - r["decode"])),
                    ("to_tensor + normalize", pos(r["tensor"] - r["resize"])),
                    ("label file", pos(r["getitem"] - r["tensor"])), ("collate + labels", r["collate"]),
                    ("DataLoader IPC, Python", pos(r["loader"] - r["getitem"] - r["collate"]))],
    }


def run_stages_benchmark(cfg: StagesConfig) -> dict:
    torch.set_num_threads(1)
    load_start = load_average()
    index, dataset = prepare_dataset(cfg.data, cfg.corpus_images, cfg.corpus_seed, cfg.assets_dir, cfg.progress)
    if len(index) < cfg.images:
        raise ConfigError(f"--images {cfg.images} exceeds the {len(index)} images of the dataset")
    fp, mk = index.fingerprint[:8], f"M{cfg.crops_per_image}-K{cfg.top_k}"
    _, store = write_store_labels(index, cfg.assets_dir / f"store-{fp}-{mk}", cfg.teacher, cfg.checkpoint,
                                  cfg.crops_per_image, cfg.top_k, cfg.seed, "cpu", 1, progress=cfg.progress)
    fkd_root = cfg.assets_dir / f"fkd-published-{fp}-M{FKD_PUBLISHED_CROPS}-K{cfg.top_k}"
    write_fkd_published(store, fkd_root, FKD_PUBLISHED_CROPS)
    maps_root = cfg.assets_dir / f"relabel-maps-{fp}-K{cfg.top_k}"
    from fkd_dali.labels.teacher import load_teacher

    write_relabel_maps(index, maps_root, load_teacher(cfg.teacher, cfg.checkpoint), cfg.top_k, progress=cfg.progress)
    stages = {"fkd-dali": fkd_dali_stages(cfg, index, store),
              **reference_stages(cfg, index, str(fkd_root), str(maps_root))}
    parts = breakdown(stages)
    machine = machine_description()
    load = {"start": load_start, "end": load_average()}
    notes = ["CPU-milliseconds per crop on one thread / one worker; cumulative figures per stage in `stages`, "
             "each stage's own share in `breakdown` (differences of medians, so small shares are noisy)"]
    notes.extend(load_notes(load))
    doc = {"benchmark": "stages", "machine": machine, "load_average": load, "config": asdict(cfg),
           "dataset": dataset, "stages": stages,
           "breakdown": {k: [{"stage": s, "cpu_ms_per_crop": v} for s, v in p] for k, p in parts.items()},
           "notes": notes}
    out = Path(cfg.out)
    write_json(out / "stages.json", doc)
    stacked_chart(out / "stages.png", [(f"{k} m={cfg.m}" if k != "relabel" else k, p) for k, p in parts.items()],
                  "CPU-milliseconds per crop (one thread)",
                  f"Where the CPU time goes: {dataset['n_images']} JPEGs (~{dataset['mean_kb']:.0f} KB), "
                  f"{cfg.image_size} px crops",
                  f"{machine['cpu_model']}, {machine['usable_cores']} cores")
    return doc


def parse_args(argv: Sequence[str] | None) -> StagesConfig:
    d = StagesConfig()
    p = argparse.ArgumentParser(prog="bench stages", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR")
    src.add_argument("--corpus-images", type=int, default=d.corpus_images, metavar="N")
    p.add_argument("--corpus-seed", type=int, default=d.corpus_seed)
    p.add_argument("--m", type=int, default=d.m)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="crops per batch")
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--crops-per-image", "-M", type=int, default=d.crops_per_image)
    p.add_argument("--top-k", "-K", type=int, default=d.top_k)
    p.add_argument("--teacher", default=d.teacher)
    p.add_argument("--checkpoint", default=d.checkpoint)
    p.add_argument("--images", type=int, default=d.images, help="images profiled per repeat")
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, metavar="DIR")
    p.add_argument("--assets", default=d.assets, metavar="DIR")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return StagesConfig(data=a.data, corpus_images=a.corpus_images, corpus_seed=a.corpus_seed, m=a.m,
                        batch_size=a.batch_size, image_size=a.image_size, crops_per_image=a.crops_per_image,
                        top_k=a.top_k, teacher=a.teacher, checkpoint=a.checkpoint, images=a.images,
                        repeats=a.repeats, seed=a.seed, out=a.out, assets=a.assets, progress=not a.no_progress)


def _summary(cfg, doc: dict) -> dict:
    """The one-line summary printed after the run (besides the JSON and PNG paths)."""
    return {"cpu_ms_per_crop": {k: {b["stage"]: round(b["cpu_ms_per_crop"], 2) for b in v}
                                for k, v in doc["breakdown"].items()}}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bench stages` / `fkd-dali bench stages`; FkdError -> message, exit 2."""
    return run_cli(argv, "stages", parse_args, run_stages_benchmark, _summary)


if __name__ == "__main__":
    raise SystemExit(main())

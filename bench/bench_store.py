"""`bench store`: bytes per image of a soft-label store vs FKD files vs ReLabel maps; pass-table load time.

Sizes: a store made by fkd-dali's label generation (the real teacher on the corpus, M
crops, top-K), the FKD per-image files `export_fkd` writes from that store, and ReLabel
maps [2, K, 15, 15] from the same teacher, all at the same K (and M where M applies).
With M below 500 the store's per-crop bytes are extrapolated to M=500 (and said so);
FKD files are uncompressed, so their size at M=500 is measured exactly on one file.

Pass table: a synthetic store of N images x M=500 x K=5 (boxes from the real crop
sampler, realistic-ish top-5 labels) is written chunk by chunk with
`LabelStore.write_chunk`; then `read_pass_table` (and the raw `read_slots` inside it)
is timed for m=4 on passes 0, 1, 2 (median), with the page cache warm and with the
store's files evicted first, and extrapolated linearly to ImageNet's 1.28M images.
Writes `<out>/store.json` and `<out>/store.png`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fkd_dali.errors import ConfigError

from .corpus import prepare_dataset
from .harness import load_average, load_notes, machine_description
from .labels import export_store_fkd, write_relabel_maps, write_store_labels, write_synthetic_labels
from .report import panels_chart, run_cli, write_json

IMAGENET_TRAIN_IMAGES = 1_281_167
CROP_FIELDS = ("crops/box", "crops/flip", "labels/index", "labels/prob")
TARGET_BYTES_PER_IMAGE = 10_000  # at M=500, K=5 (docs/design.md, "Targets")
TARGET_PASS_TABLE_S = 2.0  # 1.28M images, local disk
# Below these sizes a verdict on the targets would be an artefact of the small run, not a measurement:
# with few crops or images the store's per-chunk headers and per-image index dominate the bytes per crop
# that are multiplied by 500, and a pass table of a few thousand images times in milliseconds, which the
# extrapolation to 1.28M images multiplies by hundreds (the committed runs: M=16, 128 images, 100,000 images).
MIN_JUDGED_CROPS = 16
MIN_JUDGED_IMAGES = 64
MIN_JUDGED_SYNTHETIC_IMAGES = 50_000


@dataclass(frozen=True)
class StoreBenchConfig:
    """Settings of one `bench store` run (the CLI's defaults come from here).

    Attributes:
        crops_per_image, top_k: M and K of the real-teacher store (and its FKD files).
        target_crops: the M the sizes are also reported at (the design's 500).
        synthetic_images, synthetic_crops: N and M of the synthetic pass-table store
            (0 images skips that part); m: crops per pass read from it; repeats: passes timed.
        full_scale_images: the image count the pass-table time is extrapolated to.
        keep_synthetic: keep the synthetic store for the next run (else deleted after).
    """

    data: str | None = None
    corpus_images: int = 128
    corpus_seed: int = 0
    crops_per_image: int = 16
    top_k: int = 5
    teacher: str = "efficientnet_lite0"
    checkpoint: str | None = None
    seed: int = 0
    device: str = "auto"
    threads: int = 2
    target_crops: int = 500
    synthetic_images: int = 100_000
    synthetic_crops: int = 500
    m: int = 4
    repeats: int = 3
    full_scale_images: int = IMAGENET_TRAIN_IMAGES
    out: str = "runs/bench-store"
    assets: str | None = None
    keep_synthetic: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("corpus_images", "crops_per_image", "top_k", "target_crops", "synthetic_crops", "m",
                     "repeats", "full_scale_images", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.synthetic_images < 0:
            raise ConfigError("synthetic-images must be >= 0 (0 skips the pass-table part)")
        if self.m > self.synthetic_crops:
            raise ConfigError(f"m={self.m} exceeds the synthetic store's M={self.synthetic_crops}")

    @property
    def assets_dir(self) -> Path:
        return Path(self.assets) if self.assets else Path(self.out) / "assets"


def sizes_too_small(cfg: StoreBenchConfig) -> str | None:
    """Why the store-size target cannot be judged from this run's sizes (None: it can)."""
    if cfg.crops_per_image < MIN_JUDGED_CROPS or cfg.corpus_images < MIN_JUDGED_IMAGES:
        return (f"sizes measured at M={cfg.crops_per_image} on {cfg.corpus_images} images are too small to judge the "
                f"M={cfg.target_crops} target (per-chunk overhead dominates; use -M >= {MIN_JUDGED_CROPS} and "
                f"--corpus-images >= {MIN_JUDGED_IMAGES})")
    return None


def pass_table_too_small(cfg: StoreBenchConfig) -> str | None:
    """Why the pass-table target cannot be judged from this run's synthetic store (None: it can)."""
    if 0 < cfg.synthetic_images < MIN_JUDGED_SYNTHETIC_IMAGES:
        return (f"the pass table of {cfg.synthetic_images:,} images extrapolated x"
                f"{cfg.full_scale_images / cfg.synthetic_images:,.0f} is too small to judge the "
                f"{TARGET_PASS_TABLE_S:g} s target (use --synthetic-images >= {MIN_JUDGED_SYNTHETIC_IMAGES:,})")
    return None


# -- sizes --------------------------------------------------------------------------

def folder_bytes(root: str | os.PathLike[str], suffix: str | None = None) -> tuple[int, int, int]:
    """(files, apparent bytes, allocated bytes on disk) of the files under `root` (optionally by suffix)."""
    files = apparent = allocated = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if suffix is not None and not name.endswith(suffix):
                continue
            st = os.stat(os.path.join(dirpath, name))
            files += 1
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return files, apparent, allocated


def store_sizes(url: str) -> dict:
    """Bytes of a store's crop fields and of its per-image index, per image and per crop."""
    from fkd_dali.store.opening import open_store
    from fkd_dali.store.schema import ARRAY_KEYS

    store = open_store(url)
    per_array = {k: int(store.group[k].nbytes_stored()) for k in ARRAY_KEYS if k in store.group}
    crops = sum(per_array[k] for k in CROP_FIELDS)
    n, m = store.n_images, store.crops_per_image
    files, apparent, allocated = folder_bytes(url)
    return {"n_images": n, "crops_per_image": m, "top_k": store.spec.label.k, "per_array_bytes": per_array,
            "crop_field_bytes_per_crop": crops / (n * m),
            "index_bytes_per_image": (sum(per_array.values()) - crops) / n,
            "bytes_per_image": sum(per_array.values()) / n, "files": files,
            "disk_apparent_bytes_per_image": apparent / n, "disk_allocated_bytes_per_image": allocated / n}


def fkd_file_bytes_at(m: int, k: int, tmp: Path) -> int:
    """Exact size of one FKD label file with M=m crops, K=k (torch.save does not compress)."""
    from fkd_dali.interop.fkd_files import write_fkd_file

    path = tmp / f"fkd-size-M{m}.tar"
    coords = np.tile(np.array([[0.1, 0.1, 0.5, 0.5]], np.float32), (m, 1))
    write_fkd_file(path, coords, np.zeros(m, bool), np.tile(np.arange(k), (m, 1)), np.full((m, k), 0.1, np.float32))
    size = path.stat().st_size
    path.unlink()
    return size


def measure_sizes(cfg: StoreBenchConfig) -> tuple[dict, dict]:
    """The size comparison on the corpus; returns (sizes section, dataset description)."""
    index, dataset = prepare_dataset(cfg.data, cfg.corpus_images, cfg.corpus_seed, cfg.assets_dir, cfg.progress)
    fp = index.fingerprint[:8]
    mk = f"M{cfg.crops_per_image}-K{cfg.top_k}"
    info, url = write_store_labels(index, cfg.assets_dir / f"store-{fp}-{mk}", cfg.teacher, cfg.checkpoint,
                                   cfg.crops_per_image, cfg.top_k, cfg.seed, cfg.device, cfg.threads,
                                   progress=cfg.progress)
    store = store_sizes(url)
    fkd_root = cfg.assets_dir / f"fkd-labels-{fp}-{mk}"
    export_store_fkd(url, fkd_root)
    files, apparent, allocated = folder_bytes(fkd_root, ".tar")
    maps_root = cfg.assets_dir / f"relabel-maps-{fp}-K{cfg.top_k}"
    from fkd_dali.labels.teacher import load_teacher

    write_relabel_maps(index, maps_root, load_teacher(cfg.teacher, cfg.checkpoint), cfg.top_k,
                       progress=cfg.progress)
    map_files, map_apparent, map_allocated = folder_bytes(maps_root, ".pt")
    big_m = cfg.target_crops
    fkd_big = fkd_file_bytes_at(big_m, cfg.top_k, cfg.assets_dir)
    per_crop = store["crop_field_bytes_per_crop"]
    store_big = per_crop * big_m + store["index_bytes_per_image"]
    sizes = {
        "M": cfg.crops_per_image, "K": cfg.top_k, "teacher": info.teacher, "store_path": url,
        "store": store,
        "fkd_files": {"files": files, "bytes_per_image": apparent / max(1, files),
                      "disk_allocated_bytes_per_image": allocated / max(1, files), "path": str(fkd_root)},
        "relabel_maps": {"files": map_files, "bytes_per_image": map_apparent / max(1, map_files),
                         "disk_allocated_bytes_per_image": map_allocated / max(1, map_files),
                         "map_size": 15, "path": str(maps_root), "note": "independent of M"},
        f"at_M{big_m}": {
            "store_bytes_per_image": store_big,
            "store_method": "measured" if cfg.crops_per_image == big_m else
            f"extrapolated from M={cfg.crops_per_image}: {per_crop:.2f} bytes per crop (real teacher labels) x "
            f"{big_m} + {store['index_bytes_per_image']:.1f} bytes of per-image index",
            "fkd_file_bytes_per_image": fkd_big, "fkd_method": f"measured: one file written with M={big_m}, "
            "K as above (torch.save stores the arrays uncompressed, so size depends only on M and K)",
            "relabel_bytes_per_image": map_apparent / max(1, map_files),
            "target_store_bytes_per_image": TARGET_BYTES_PER_IMAGE,
            "store_target_met": store_big <= TARGET_BYTES_PER_IMAGE,
            "store_target_judged": sizes_too_small(cfg) is None},
    }
    sizes["ratios"] = {"fkd_files_over_store": sizes["fkd_files"]["bytes_per_image"] / store["bytes_per_image"],
                       "relabel_over_store": sizes["relabel_maps"]["bytes_per_image"] / store["bytes_per_image"],
                       f"fkd_files_over_store_at_M{big_m}": fkd_big / store_big}
    return sizes, dataset


# -- the synthetic pass-table store ----------------------------------------------------

def _synthetic_index(n: int, seed: int):
    from fkd_dali.data.index import DatasetIndex

    rng = np.random.default_rng([seed, n])
    long = np.where(rng.random(n) < 0.8, 500, rng.integers(333, 500, n))
    short = np.rint(long * rng.choice([0.75, 2 / 3, 1.0, 0.8, 0.5625], n, p=[0.55, 0.2, 0.1, 0.1, 0.05]))
    portrait = rng.random(n) < 0.2
    sizes = np.stack([np.where(portrait, long, short), np.where(portrait, short, long)], 1).astype(np.int32)
    classes = rng.integers(0, 1000, n).astype(np.int32)
    return DatasetIndex(root="", paths=[f"c{c:04d}/synthetic_{i:08d}.JPEG" for i, c in enumerate(classes)],
                        classes=classes, sizes=sizes, nbytes=np.full(n, 110_000, np.int64),
                        class_names=[f"c{c:04d}" for c in range(1000)])


def write_synthetic_store(url: str, n: int, m: int, k: int, seed: int, progress: bool) -> None:
    """N images x M crops x top-K written chunk by chunk (boxes from the real crop sampler)."""
    write_synthetic_labels(url, _synthetic_index(n, seed), m, k, seed, progress)
    os.sync()  # dirty pages must reach the disk before they can be evicted for the cold reads


def evict(root: str | os.PathLike[str]) -> bool:
    """Drop the files under `root` from the page cache (POSIX_FADV_DONTNEED); False where unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for dirpath, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def time_pass_tables(url: str, m: int, repeats: int, seed: int) -> dict:
    """Median seconds of `read_slots` and `read_pass_table` over passes 0..repeats-1, cold and warm."""
    from fkd_dali.crops.plan import make_pass_plan, pass_slots
    from fkd_dali.loaders.pass_table import read_pass_table
    from fkd_dali.store.opening import open_store

    store = open_store(url)
    sizes = np.asarray(store.group["images/size"][:])
    n, big_m = store.n_images, store.crops_per_image
    out: dict = {"passes": list(range(repeats))}
    for cache in ("cold", "warm"):
        raw, table = [], []
        for p in range(repeats):
            slots = pass_slots(p, m, big_m)
            if cache == "cold" and not evict(url):
                out["cold_unsupported"] = True
            t0 = time.perf_counter()
            store.read_slots(slots.tolist())
            raw.append(time.perf_counter() - t0)
            if cache == "cold":
                evict(url)
            plan = make_pass_plan(seed, p, m, big_m, n, 0, 1)
            t0 = time.perf_counter()
            read_pass_table(store, sizes, plan.slots, plan.images, p)
            table.append(time.perf_counter() - t0)
        out[cache] = {"read_slots_s": raw, "read_pass_table_s": table,
                      "read_slots_median_s": statistics.median(raw),
                      "read_pass_table_median_s": statistics.median(table)}
    return out


def measure_pass_table(cfg: StoreBenchConfig) -> dict:
    url = str(cfg.assets_dir / f"synthetic-N{cfg.synthetic_images}-M{cfg.synthetic_crops}-K{cfg.top_k}.zarr")
    manifest = Path(url + ".done")
    t_write = None
    if not manifest.is_file():
        shutil.rmtree(url, ignore_errors=True)
        t0 = time.perf_counter()
        write_synthetic_store(url, cfg.synthetic_images, cfg.synthetic_crops, cfg.top_k, cfg.seed, cfg.progress)
        t_write = time.perf_counter() - t0
        manifest.write_text("complete\n")
    try:
        sizes = store_sizes(url)
        timing = time_pass_tables(url, cfg.m, cfg.repeats, cfg.seed)
    finally:
        if not cfg.keep_synthetic:
            shutil.rmtree(url, ignore_errors=True)
            manifest.unlink(missing_ok=True)
    scale = cfg.full_scale_images / cfg.synthetic_images
    extrapolated = {c: timing[c]["read_pass_table_median_s"] * scale for c in ("cold", "warm")}
    return {"n_images": cfg.synthetic_images, "crops_per_image": cfg.synthetic_crops, "K": cfg.top_k, "m": cfg.m,
            "write_s": t_write, "store": sizes, "timing": timing, "full_scale_images": cfg.full_scale_images,
            "extrapolated_read_pass_table_s": extrapolated,
            "extrapolation": f"linear in images: median x {cfg.full_scale_images} / {cfg.synthetic_images}"
            if scale != 1 else "none (measured at full scale)",
            "target_s": TARGET_PASS_TABLE_S,
            "target_met": {c: v <= TARGET_PASS_TABLE_S for c, v in extrapolated.items()},
            "target_judged": pass_table_too_small(cfg) is None,
            "labels": "synthetic (see bench.labels.synthetic_labels); boxes from "
                      "fkd_dali.crops.boxes.sample_crops"}


# -- the run --------------------------------------------------------------------------

def run_store_benchmark(cfg: StoreBenchConfig) -> dict:
    """Measure, write `store.json` and `store.png`, return the JSON document."""
    load_start = load_average()
    sizes, dataset = measure_sizes(cfg)
    pass_table = measure_pass_table(cfg) if cfg.synthetic_images else None
    machine = machine_description()
    load = {"start": load_start, "end": load_average()}
    notes = ["bytes_per_image counts every stored byte of the store (crop fields + per-image index); FKD files and "
             "ReLabel maps are file sizes (apparent); *_allocated_* are disk blocks (small files round up)"]
    if cfg.crops_per_image != cfg.target_crops:
        notes.append(f"the store's size at M={cfg.target_crops} is an extrapolation from M={cfg.crops_per_image}")
    warnings = [w for w in (sizes_too_small(cfg), pass_table_too_small(cfg) if pass_table else None) if w]
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr, flush=True)
    notes.extend(warnings)
    notes.extend(load_notes(load))
    doc = {"benchmark": "store", "warnings": warnings, "machine": machine, "load_average": load, "config": asdict(cfg),
           "dataset": dataset, "sizes": sizes, "pass_table": pass_table, "notes": notes}
    out = Path(cfg.out)
    write_json(out / "store.json", doc)
    _chart(out / "store.png", cfg, sizes, pass_table, machine)
    return doc


def _chart(path: Path, cfg: StoreBenchConfig, sizes: dict, pass_table: dict | None, machine: dict) -> None:
    big = sizes[f"at_M{cfg.target_crops}"]
    kb = 1 / 1000
    panels = [
        {"xlabel": f"KB per image, M={cfg.crops_per_image}, K={cfg.top_k} (measured)", "bars": [
            {"label": "fkd-dali store", "value": sizes["store"]["bytes_per_image"] * kb, "group": "fkd-dali"},
            {"label": "FKD files", "value": sizes["fkd_files"]["bytes_per_image"] * kb},
            {"label": "ReLabel maps", "value": sizes["relabel_maps"]["bytes_per_image"] * kb}]},
        {"xlabel": f"KB per image, M={cfg.target_crops}, K={cfg.top_k}", "target": TARGET_BYTES_PER_IMAGE * kb,
         "target_label": "target", "bars": [
            {"label": "store" + (" (extrapolated)" if cfg.crops_per_image != cfg.target_crops else ""),
             "value": big["store_bytes_per_image"] * kb, "group": "fkd-dali"}]
         + ([{"label": "store (synthetic labels)", "value": pass_table["store"]["bytes_per_image"] * kb,
              "group": "ablation"}] if pass_table and pass_table["crops_per_image"] == cfg.target_crops else [])
         + [{"label": "FKD files", "value": big["fkd_file_bytes_per_image"] * kb},
            {"label": "ReLabel maps", "value": big["relabel_bytes_per_image"] * kb}]},
    ]
    if pass_table:
        ext = pass_table["extrapolated_read_pass_table_s"]
        scale = "extrapolated" if pass_table["n_images"] != pass_table["full_scale_images"] else "measured"
        panels.append({"xlabel": f"s to load a pass table, {pass_table['full_scale_images'] / 1e6:.2f}M images, "
                                 f"m={pass_table['m']} ({scale})", "target": TARGET_PASS_TABLE_S,
                       "target_label": "target", "bars": [
                           {"label": "cold page cache", "value": ext["cold"], "group": "fkd-dali"},
                           {"label": "warm page cache", "value": ext["warm"], "group": "fkd-dali"}]})
    panels_chart(path, panels, "Soft-label storage: fkd-dali store vs FKD files vs ReLabel maps",
                 f"{machine['cpu_model']}, {machine['usable_cores']} cores; teacher {sizes['teacher']}")


def parse_args(argv: Sequence[str] | None) -> StoreBenchConfig:
    d = StoreBenchConfig()
    p = argparse.ArgumentParser(prog="bench store", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="ImageNet-style folder to label instead of the corpus")
    src.add_argument("--corpus-images", type=int, default=d.corpus_images, metavar="N")
    p.add_argument("--corpus-seed", type=int, default=d.corpus_seed)
    p.add_argument("--crops-per-image", "-M", type=int, default=d.crops_per_image,
                   help="M of the real-teacher store (default %(default)s; sizes are also given at --target-crops)")
    p.add_argument("--top-k", "-K", type=int, default=d.top_k)
    p.add_argument("--target-crops", type=int, default=d.target_crops, help="M to report sizes at (default 500)")
    p.add_argument("--teacher", default=d.teacher)
    p.add_argument("--checkpoint", default=d.checkpoint)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="label generation device: auto, cpu, cuda")
    p.add_argument("--threads", type=int, default=d.threads, help="DALI threads for label generation")
    p.add_argument("--synthetic-images", type=int, default=d.synthetic_images, metavar="N",
                   help="images of the synthetic pass-table store (default %(default)s; 1281167 for ImageNet "
                        "scale, ~11 GB; 0 skips)")
    p.add_argument("--synthetic-crops", type=int, default=d.synthetic_crops, metavar="M")
    p.add_argument("--m", type=int, default=d.m, help="crops per image per pass (default %(default)s)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="passes timed (median)")
    p.add_argument("--full-scale-images", type=int, default=d.full_scale_images)
    p.add_argument("--keep-synthetic", action="store_true", help="keep the synthetic store for the next run")
    p.add_argument("--out", default=d.out, metavar="DIR")
    p.add_argument("--assets", default=d.assets, metavar="DIR", help="corpus and label files (default OUT/assets)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return StoreBenchConfig(data=a.data, corpus_images=a.corpus_images, corpus_seed=a.corpus_seed,
                            crops_per_image=a.crops_per_image, top_k=a.top_k, teacher=a.teacher,
                            checkpoint=a.checkpoint, seed=a.seed, device=a.device, threads=a.threads,
                            target_crops=a.target_crops, synthetic_images=a.synthetic_images,
                            synthetic_crops=a.synthetic_crops, m=a.m, repeats=a.repeats,
                            full_scale_images=a.full_scale_images, out=a.out, assets=a.assets,
                            keep_synthetic=a.keep_synthetic, progress=not a.no_progress)


def _summary(cfg, doc: dict) -> dict:
    """The one-line summary printed after the run (besides the JSON and PNG paths)."""
    s = doc["sizes"]
    big = s[f"at_M{cfg.target_crops}"]
    summary = {"bytes_per_image": {"store": round(s["store"]["bytes_per_image"]),
                         "fkd_files": round(s["fkd_files"]["bytes_per_image"]),
                         "relabel_maps": round(s["relabel_maps"]["bytes_per_image"])},
               f"bytes_per_image_at_M{cfg.target_crops}": {"store": round(big["store_bytes_per_image"]),
                                                         "fkd_files": big["fkd_file_bytes_per_image"]}}
    if doc["warnings"]:
        summary["warnings"] = doc["warnings"]
    if doc["pass_table"]:
        summary["pass_table_s_full_scale"] = {k: round(v, 3) for k, v in
                                              doc["pass_table"]["extrapolated_read_pass_table_s"].items()}
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bench store` / `fkd-dali bench store`; FkdError -> message, exit 2."""
    return run_cli(argv, "store", parse_args, run_store_benchmark, _summary)


if __name__ == "__main__":
    raise SystemExit(main())

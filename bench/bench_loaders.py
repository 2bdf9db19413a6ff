"""`bench loaders`: data-loading speed of every registered loader on the same JPEGs, side by side.

Prepares what the loaders need (a corpus or the user's folder; a soft-label store from
fkd-dali's label generation with a real teacher; FKD label files of FKD's published
shape (M=500, top-5) whose first crops are that store's; ReLabel maps from the same
teacher), runs the harness (alternating rounds,
medians), and writes `<out>/loaders.json` and `<out>/loaders.png`; prints one JSON
line with their paths and the median crops/s. Rows of the "fkd-dali" group get their
ratios to every baseline row, the design's targets are checked from those ratios, and
the label overhead compares fkd-dali with its no-labels twin. Tests call
`run_loaders_benchmark`, never `main`.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from fkd_dali.data.index import DatasetIndex
from fkd_dali.errors import ConfigError
from fkd_dali.labels.teacher import Teacher, load_teacher

from .corpus import prepare_dataset
from .harness import (
    Entry,
    RoundResult,
    load_average,
    load_notes,
    machine_description,
    ratios,
    run_rounds,
    summarize,
)
from .labels import write_fkd_published, write_relabel_maps, write_store_labels
from .loaders import LOADERS, LoaderInfo, LoaderSpec
from .report import bar_chart, run_cli, write_json


@dataclass(frozen=True)
class LoadersConfig:
    """Settings of one `bench loaders` run (the CLI's defaults come from here).

    Attributes:
        data: an ImageNet-style folder to read; None builds a corpus of `corpus_images`.
        batch_size: crops per batch, for every loader.
        workers: DataLoader workers / DALI threads, for every loader.
        rounds, warmup, batches: rounds per loader, untimed and timed batches per round;
            warmup None means 2 * workers + 2, enough to fill DataLoader's prefetch
            queue (2 batches per worker) so that timing starts in steady state.
        m: crops per decoded image; multi-crop loaders get one row per value.
        loaders: names from the registry; empty means all.
        out: folder of loaders.json / loaders.png; `assets` (default out/assets)
            keeps the corpus and label files for reuse by later runs.
        fkd_crops: M crops stored per image in the generated store; top_k: K classes kept
            per crop (store, FKD files, ReLabel maps).
        fkd_file_crops: M of the FKD reference's files (FKD publishes 500): the store's
            crops first, then further crops of its sampler with synthetic labels
            (`bench.labels.write_fkd_published`).
        fkd_labels, label_maps, store: existing label files to use instead of generating;
            a given store is also what FKD files are exported from.
        device: where batches are delivered: "auto" (CUDA when present), "cpu", "cuda[:N]".
    """

    data: str | None = None
    corpus_images: int = 64
    corpus_seed: int = 0
    batch_size: int = 64
    workers: int = 2
    rounds: int = 3
    warmup: int | None = None
    batches: int = 20
    m: tuple[int, ...] = (4,)
    loaders: tuple[str, ...] = ()
    out: str = "runs/bench-loaders"
    assets: str | None = None
    teacher: str = "efficientnet_lite0"
    checkpoint: str | None = None
    fkd_crops: int = 16
    fkd_file_crops: int = 500
    top_k: int = 5
    num_classes: int = 1000
    fkd_labels: str | None = None
    label_maps: str | None = None
    store: str | None = None
    seed: int = 0
    image_size: int = 224
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("corpus_images", "batch_size", "rounds", "batches", "fkd_crops", "fkd_file_crops", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if (self.warmup is not None and self.warmup < 0) or self.workers < 0:
            raise ConfigError("warmup and workers must be >= 0")
        for m in self.m:
            if m < 1 or self.batch_size % m:
                raise ConfigError(f"every m must divide the batch size {self.batch_size}; got m={m}")
            if m > self.fkd_crops and not (self.fkd_labels or self.store):
                raise ConfigError(f"m={m} exceeds the {self.fkd_crops} crops stored per image; raise --fkd-crops")
            if m > self.fkd_file_crops:
                raise ConfigError(f"m={m} exceeds the {self.fkd_file_crops} crops of each FKD file; "
                                  "raise --fkd-file-crops")

    @property
    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def warmup_batches(self) -> int:
        return 2 * self.workers + 2 if self.warmup is None else self.warmup

    @property
    def assets_dir(self) -> Path:
        return Path(self.assets) if self.assets else Path(self.out) / "assets"


@dataclass
class _Assets:
    """Lazily loaded teacher and the LoaderSpec fields filled by asset preparation."""

    cfg: LoadersConfig
    index: DatasetIndex
    teacher: Teacher | None = None
    spec_fields: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)

    def get_teacher(self) -> Teacher:
        if self.teacher is None:
            self.teacher = load_teacher(self.cfg.teacher, self.cfg.checkpoint)
        return self.teacher


def _asset_dir(a: _Assets, kind: str, with_mk: bool = True) -> Path:
    """assets/<kind>-<dataset fingerprint>[-M<M>-K<K>]: corpora of other sizes keep their own assets."""
    mk = f"-M{a.cfg.fkd_crops}-K{a.cfg.top_k}" if with_mk else f"-K{a.cfg.top_k}"
    return a.cfg.assets_dir / f"{kind}-{a.index.fingerprint[:8]}{mk}"


def _store(a: _Assets) -> None:
    if "store" in a.spec_fields:
        return
    if a.cfg.store:
        a.spec_fields["store"] = a.cfg.store
        a.labels["store"] = {"path": a.cfg.store, "given": True}
        return
    info, url = write_store_labels(a.index, _asset_dir(a, "store"), a.cfg.teacher, a.cfg.checkpoint,
                                   a.cfg.fkd_crops, a.cfg.top_k, a.cfg.seed, device=a.cfg.resolved_device,
                                   threads=max(1, a.cfg.workers), progress=a.cfg.progress)
    a.spec_fields.update(store=url, num_classes=info.num_classes)
    a.labels["store"] = {**asdict(info), "path": url}


def _fkd_labels(a: _Assets) -> None:
    """FKD files of FKD's published shape whose first crops are the store the fkd-dali rows replay."""
    if a.cfg.fkd_labels:
        a.spec_fields["fkd_labels"] = a.cfg.fkd_labels
        return
    _store(a)
    root = a.cfg.assets_dir / f"fkd-published-{a.index.fingerprint[:8]}-M{a.cfg.fkd_file_crops}-K{a.cfg.top_k}"
    info = write_fkd_published(a.spec_fields["store"], root, a.cfg.fkd_file_crops)
    a.spec_fields.update(fkd_labels=str(root), fkd_unpickle=True, num_classes=info.num_classes)
    a.labels["fkd_labels"] = asdict(info)


def _label_maps(a: _Assets) -> None:
    if a.cfg.label_maps:
        a.spec_fields["label_maps"] = a.cfg.label_maps
        return
    root = _asset_dir(a, "relabel-maps", with_mk=False)
    info = write_relabel_maps(a.index, root, a.get_teacher(), a.cfg.top_k, progress=a.cfg.progress)
    a.spec_fields.update(label_maps=str(root), num_classes=info.num_classes)
    a.labels["label_maps"] = asdict(info)


#: Asset name (as in LoaderInfo.needs) -> function that prepares it.
ASSET_PREPARERS: dict[str, Callable[[_Assets], None]] = {
    "fkd_labels": _fkd_labels, "label_maps": _label_maps, "store": _store}


def resolve_dataset(cfg: LoadersConfig) -> tuple[DatasetIndex, dict]:
    """The index to benchmark on and a description of it (corpus config when built here)."""
    return prepare_dataset(cfg.data, cfg.corpus_images, cfg.corpus_seed, cfg.assets_dir, cfg.progress)


#: The design's targets for the fkd-dali replay at m=4 (docs/design.md, "Targets"): per device
#: kind, (baseline row, metric of `ratios`, minimum).
TARGETS: dict[str, tuple[tuple[str, str, float], ...]] = {
    "cpu": (("fkd-reference m=4", "cpu_efficiency", 2.0), ("relabel", "cpu_efficiency", 2.5)),
    "cuda": (("fkd-reference m=4", "speed", 5.0),),
}
TARGET_SUBJECT = "fkd-dali m=4"
GPU_CROPS_PER_S = 20_000.0  # replay at m=4 on one H100
GPU_LABEL_OVERHEAD = 0.03


def check_targets(device: str, rows: Sequence[dict], ratio_rows: Sequence[dict],
                  overhead: Sequence[dict]) -> list[dict]:
    """Each target that this run's rows can judge, with its value and whether it is met."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    out = []
    for baseline, metric, need in TARGETS[kind]:
        r = next((r for r in ratio_rows if r["subject"] == TARGET_SUBJECT and r["baseline"] == baseline), None)
        if r is not None:
            value = r[metric]
            what = "crops per CPU-second" if metric == "cpu_efficiency" else "crops/s"
            out.append({"target": f"{TARGET_SUBJECT} >= {need:g}x {baseline} in {what}", "subject": TARGET_SUBJECT,
                        "baseline": baseline, "metric": metric, "minimum": need, "value": value,
                        "met": value is not None and value >= need})
    if kind == "cuda":
        row = next((r for r in rows if r["label"] == TARGET_SUBJECT), None)
        if row is not None:
            out.append({"target": f"{TARGET_SUBJECT} >= {GPU_CROPS_PER_S:,.0f} crops/s", "metric": "crops_per_s",
                        "minimum": GPU_CROPS_PER_S, "value": row["crops_per_s"],
                        "met": row["crops_per_s"] >= GPU_CROPS_PER_S})
        lo = next((o for o in overhead if o["m"] == 4), None)
        if lo is not None:
            out.append({"target": f"labels add < {GPU_LABEL_OVERHEAD:.0%} to pipeline time (m=4)",
                        "metric": "time_overhead", "maximum": GPU_LABEL_OVERHEAD, "value": lo["time_overhead"],
                        "met": lo["time_overhead"] < GPU_LABEL_OVERHEAD})
    return out


def label_overhead(entries: Sequence[Entry], results: dict[str, list[RoundResult]]) -> list[dict]:
    """Per m: how much attaching labels adds to time and CPU per crop (paired per round)."""
    out = []
    for e in entries:
        twin = f"fkd-dali-nolabels m={e.meta['m']}"
        if e.meta["loader"] != "fkd-dali" or twin not in results:
            continue
        (r,) = ratios([twin], [e.label], results)  # speed = no-labels / labels crops/s
        cpu = r["cpu_efficiency"]
        out.append({"m": e.meta["m"], "with_labels": e.label, "without_labels": twin,
                    "time_overhead": r["speed"] - 1.0, "cpu_overhead": None if cpu is None else cpu - 1.0})
    return out


def build_entries(cfg: LoadersConfig, spec: LoaderSpec,
                  chosen: Sequence[tuple[str, LoaderInfo]]) -> list[Entry]:
    """One entry per loader, or per (loader, m) for multi-crop loaders."""
    entries = []
    for name, info in chosen:
        for m in (cfg.m if info.multi_crop else (1,)):
            s = dataclasses.replace(spec, m=m)
            entries.append(Entry(f"{name} m={m}" if info.multi_crop else name,
                                 (lambda info=info, s=s: info.factory(s)),
                                 {"loader": name, "m": m, "group": info.group, "targets": info.targets,
                                  "description": info.description}))
    return entries


def run_loaders_benchmark(cfg: LoadersConfig, teacher: Teacher | None = None,
                          extra: Sequence[tuple[str, LoaderInfo]] = ()) -> dict:
    """Run the benchmark and write its JSON and PNG; returns the JSON document.

    Args:
        cfg: the run's settings.
        teacher: use this teacher instead of loading `cfg.teacher` (tests pass a tiny one).
        extra: loaders to run besides the registered ones named in `cfg.loaders`.
    """
    names = list(cfg.loaders) or LOADERS.names()
    chosen = [(n, LOADERS.get(n)) for n in names] + list(extra)
    chosen.sort(key=lambda c: ({"fkd-dali": 0, "ablation": 1}.get(c[1].group, 2), c[0]))
    load_start = load_average()
    index, dataset = resolve_dataset(cfg)
    assets = _Assets(cfg, index, teacher, {"num_classes": cfg.num_classes})
    for need in sorted({n for _, info in chosen for n in info.needs}):
        if need not in ASSET_PREPARERS:
            raise ConfigError(f"no way to prepare asset {need!r}; known: {', '.join(sorted(ASSET_PREPARERS))}")
        ASSET_PREPARERS[need](assets)
    assets.teacher = None  # free the teacher before timing
    spec = LoaderSpec(index=index, batch_size=cfg.batch_size, workers=cfg.workers, image_size=cfg.image_size,
                      seed=cfg.seed, device=cfg.resolved_device, **assets.spec_fields)
    entries = build_entries(cfg, spec, chosen)
    results = run_rounds(entries, cfg.rounds, cfg.warmup_batches, cfg.batches, progress=cfg.progress)
    rows = [summarize(e, results[e.label]) for e in entries]
    subjects = [e.label for e in entries if e.meta["group"] == "fkd-dali"]
    baselines = [e.label for e in entries if e.meta["group"] == "baseline"]
    ratio_rows = ratios(subjects, baselines, results)
    overhead = label_overhead(entries, results)
    machine = machine_description()
    load = {"start": load_start, "end": load_average()}
    notes = ["crops/s and CPU-seconds are medians over rounds; ratios are medians of per-round "
             "ratios; CPU time covers this process and all its worker processes; peak RSS sums "
             "the process tree (shared pages counted per process); PSS at the window's end shares them out",
             f"the FKD reference reads files of FKD's published shape (M={cfg.fkd_file_crops}, top-{cfg.top_k}, "
             "numpy arrays in a torch-saved list, loaded with a full unpickle as FKD's loader does); their first "
             f"{cfg.fkd_crops} crops are the store's, which the fkd-dali rows replay, the others continue the "
             "store's crop sampler with synthetic labels (a file's cost does not depend on label values)"]
    notes.extend(load_notes(load))
    doc = {"benchmark": "loaders", "machine": machine, "load_average": load,
           "config": {**asdict(cfg), "warmup_batches": cfg.warmup_batches, "device": spec.device}, "dataset": dataset,
           "labels": assets.labels, "num_classes": spec.num_classes, "rows": rows, "ratios": ratio_rows,
           "label_overhead": overhead, "targets": check_targets(spec.device, rows, ratio_rows, overhead),
           "notes": notes}
    out = Path(cfg.out)
    write_json(out / "loaders.json", doc)
    gpu = ", ".join(machine["gpus"]) or "no GPU"
    bar_chart(out / "loaders.png", rows,
              f"Data loading: {dataset['n_images']} JPEGs (~{dataset['mean_kb']:.0f} KB), batch "
              f"{cfg.batch_size} crops, {cfg.workers} workers/threads",
              f"{machine['cpu_model']}, {machine['usable_cores']} cores, {gpu}")
    return doc


def parse_args(argv: Sequence[str] | None) -> LoadersConfig:
    d = LoadersConfig()
    p = argparse.ArgumentParser(prog="bench loaders", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="ImageNet-style folder root/<class>/<image> to read")
    src.add_argument("--corpus-images", type=int, default=d.corpus_images, metavar="N",
                     help="build a corpus of N real-photo JPEGs instead (default %(default)s)")
    p.add_argument("--corpus-seed", type=int, default=d.corpus_seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="crops per batch (default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers / DALI threads")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--warmup", type=int, default=d.warmup,
                   help="untimed batches per round (default 2 * workers + 2)")
    p.add_argument("--batches", type=int, default=d.batches, help="timed batches per round (default %(default)s)")
    p.add_argument("--m", type=int, nargs="+", default=list(d.m), help="crops per image, e.g. --m 1 2 4 8")
    p.add_argument("--loaders", nargs="+", default=list(d.loaders), metavar="NAME",
                   help=f"subset of: {', '.join(LOADERS.names())} (default all)")
    p.add_argument("--out", default=d.out, metavar="DIR")
    p.add_argument("--assets", default=d.assets, metavar="DIR", help="corpus and label files (default OUT/assets)")
    p.add_argument("--teacher", default=d.teacher)
    p.add_argument("--checkpoint", default=d.checkpoint)
    p.add_argument("--fkd-crops", "-M", type=int, default=d.fkd_crops,
                   help="M crops per image in the generated store (default %(default)s)")
    p.add_argument("--fkd-file-crops", type=int, default=d.fkd_file_crops,
                   help="M crops per FKD label file: the store's, then more of its sampler (default %(default)s, "
                        "FKD's published labels)")
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--fkd-labels", metavar="DIR", help="existing FKD label files (<class>/<stem>.tar)")
    p.add_argument("--label-maps", metavar="DIR", help="existing ReLabel maps (<class>/<stem>.pt)")
    p.add_argument("--num-classes", type=int, default=d.num_classes,
                   help="classes of existing label files (generated ones know theirs)")
    p.add_argument("--store", metavar="PATH", help="existing fkd-dali store over the same images (default: "
                   "generate one with --teacher; FKD files are exported from it)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="where batches go: auto (CUDA if present), cpu, cuda[:N]")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return LoadersConfig(data=a.data, corpus_images=a.corpus_images, corpus_seed=a.corpus_seed,
                         batch_size=a.batch_size, workers=a.workers, rounds=a.rounds, warmup=a.warmup,
                         batches=a.batches, m=tuple(a.m), loaders=tuple(a.loaders), out=a.out, assets=a.assets,
                         teacher=a.teacher, checkpoint=a.checkpoint, fkd_crops=a.fkd_crops,
                         fkd_file_crops=a.fkd_file_crops, top_k=a.top_k,
                         num_classes=a.num_classes, fkd_labels=a.fkd_labels, label_maps=a.label_maps,
                         store=a.store, seed=a.seed, device=a.device, progress=not a.no_progress)


def _summary(cfg, doc: dict) -> dict:
    """The one-line summary printed after the run (besides the JSON and PNG paths)."""
    return {"crops_per_s": {r["label"]: round(r["crops_per_s"], 1) for r in doc["rows"]},
            "ratios": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                       for r in doc["ratios"]],
            "targets": [{"target": t["target"], "value": round(t["value"], 3) if t["value"] is not None
                         else None, "met": t["met"]} for t in doc["targets"]]}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bench loaders` / `fkd-dali bench loaders`; FkdError -> message, exit 2."""
    return run_cli(argv, "loaders", parse_args, run_loaders_benchmark, _summary)


if __name__ == "__main__":
    raise SystemExit(main())

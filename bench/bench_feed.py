"""`bench feed`: the replay's host path without decoding, in images per CPU-second.

On a GPU the replay's decode and resize run on the device; what stays on the host is
the Python chain: the pass plan and table, reading each file's bytes, assembling the
per-step feed (boxes, flips, meta), handing it to `fn.external_source`, and gathering
labels. This benchmark runs that chain (`fkd_dali.loaders.replay.ReplayLoader`, the
real code) with the decode + crop graph swapped for a pass-through graph over the same
external source, on an ImageNet-shaped folder (20,000 files in 1,000 class folders:
hard links to a few real ~110 KB JPEGs) and a store of as many images (M=500,
synthetic top-5 labels, boxes from the real crop sampler).

Cumulative stages, each a loader of its own over the same passes (one thread):
`table` (pass plan + pass table), `files` (+ reading every file of each step),
`feed` (+ assembling what the external source gets), `external source` (+ DALI's
external source and iterator, pass-through graph, batches assembled in torch) and
`labels` (+ gathering each crop's top-K). `feed` and `labels` are also run at every
`--threads` (DALI threads and file-reading threads). Tables are read synchronously
at the start of each pass (no prefetch thread) and each timed window covers one pass's
worth of steps, so it holds exactly one table read, as training does per pass.

Harness: alternating rounds, warm-up, medians, CPU time of the whole process (DALI's
threads included). Writes `<out>/feed.json` and `<out>/feed.png`.
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from fkd_dali.data.index import DatasetIndex
from fkd_dali.defaults import IMAGENET_MEAN, IMAGENET_STD
from fkd_dali.errors import ConfigError
from fkd_dali.loaders.replay import ReplayLoader

from .harness import Entry, RoundResult, load_average, load_notes, machine_description, run_rounds
from .report import panels_chart, run_cli, write_json

#: What the host path must reach (images per CPU-second through the external source).
TARGET_IMAGES_PER_CPU_S = 10_000.0
#: The GPU replay target per GPU (20,000 crops/s at m=4).
GPU_IMAGES_PER_S = 5_000.0
#: Cumulative stages, in chain order: (stage, what it adds).
STAGES = (("table", "pass plan + pass table"), ("files", "file read"), ("feed", "feed assembly"),
          ("external source", "external source"), ("labels", "label gather"))


@dataclass(frozen=True)
class FeedConfig:
    """Settings of one `bench feed` run (the CLI's defaults come from here).

    Attributes:
        images, classes: files and class folders of the linked corpus.
        sources, corpus_seed: the real corpus the files link to (its size and seed).
        crops_per_image, top_k: M and K of the synthetic store.
        m, batch_size: crops per image and per step (images per step = batch_size / m).
        threads: thread counts the feed and the whole chain are run at.
        rounds, warmup: alternating rounds; untimed steps before each window.
        batches: timed steps per window; None means one pass (images // images per step).
        out: folder of feed.json / feed.png; `assets` (default out/assets) keeps the
            corpus and store for reuse.
    """

    images: int = 20_000
    classes: int = 1000
    sources: int = 64
    corpus_seed: int = 0
    crops_per_image: int = 500
    top_k: int = 5
    m: int = 4
    batch_size: int = 256
    threads: tuple[int, ...] = (1, 2)
    rounds: int = 5
    warmup: int = 16
    batches: int | None = None
    seed: int = 0
    out: str = "runs/bench-feed"
    assets: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("images", "classes", "sources", "crops_per_image", "top_k", "m", "batch_size", "rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.m or self.m > self.crops_per_image:
            raise ConfigError(f"m={self.m} must divide the batch size {self.batch_size} and be <= M")
        if self.images < self.images_per_step:
            raise ConfigError(f"{self.images} images do not fill one step of {self.images_per_step}")
        if not self.threads or min(self.threads) < 1 or self.warmup < 0:
            raise ConfigError("threads must be >= 1 and warmup >= 0")

    @property
    def images_per_step(self) -> int:
        return self.batch_size // self.m

    @property
    def timed_steps(self) -> int:
        return self.batches or self.images // self.images_per_step

    @property
    def assets_dir(self) -> Path:
        return Path(self.assets) if self.assets else Path(self.out) / "assets"


# -- the chain with decoding replaced ------------------------------------------------

def make_passthrough_pipeline(source, batch_size: int, num_threads: int):
    """The replay's external source (`crop_inputs`, zero-copy as in the replay) with the decode + crop graph replaced.

    Outputs what the crop graph's outputs would be built from, at no cost: each image's
    ROIs stand in for its crops (shape (m, 4), so the loader's batch assembly runs
    unchanged), and its meta row gets the byte count of the encoded input appended, so
    every input is consumed by the graph.
    """
    from nvidia.dali import fn, pipeline_def, types

    from fkd_dali.pipelines.crops import crop_inputs, zero_copy_ok

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=None, prefetch_queue_depth=2,
                  exec_dynamic=True)
    def passthrough():
        encoded, rois, meta = crop_inputs(source, no_copy=zero_copy_ok(source, 2))
        return rois, fn.cat(meta, encoded.shape(dtype=types.INT64))

    return passthrough()


class PassThroughReplay(ReplayLoader):
    """`ReplayLoader` whose DALI graph passes its inputs through instead of decoding them."""

    def _build_pipeline(self, source):
        return make_passthrough_pipeline(source, self.images_per_step, self.threads)


class StageLoader:
    """One cumulative stage of the chain over passes 0, 1, ...; yields the image count of each step.

    The harness counts `images.shape[0]`, so every figure of this benchmark is per image.
    """

    def __init__(self, cfg: FeedConfig, index: DatasetIndex, store_url: str, stage: str, threads: int) -> None:
        from fkd_dali.loaders.sources import StoreCrops
        from fkd_dali.store.opening import open_store
        from fkd_dali.store.schema import TOPK_ONLY

        if stage not in dict(STAGES):
            raise ConfigError(f"unknown stage {stage!r}; valid: {', '.join(dict(STAGES))}")
        self.stage = stage
        fields = TOPK_ONLY if stage == "labels" else frozenset()
        self.replay: ReplayLoader | None = PassThroughReplay(
            StoreCrops(open_store(store_url), index.sizes, fields, prefetch=False), index, m=cfg.m,
            batch_size=cfg.batch_size, size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=cfg.seed, threads=threads)
        self._unit = torch.empty(cfg.images_per_step)

    def batches(self) -> Iterator[tuple[torch.Tensor, None]]:
        pass_idx = 0
        while self.replay is not None:
            for _ in self._steps(self.replay, pass_idx):
                yield self._unit, None
            pass_idx += 1

    def _steps(self, replay: ReplayLoader, pass_idx: int) -> Iterator[object]:
        if self.stage == "table":
            table = replay.table(pass_idx)
            return iter(range(len(table.images) // replay.images_per_step))
        if self.stage == "files":
            return replay.files(pass_idx)
        if self.stage == "feed":
            return _source_calls(replay.feed(pass_idx))
        return replay.pass_batches(pass_idx)

    def close(self) -> None:
        if self.replay is not None:
            self.replay.close()
            self.replay = None


def _source_calls(feed: Iterator) -> Iterator[tuple]:
    """What DALI's external source receives per step: a `BatchSource` called until the feed ends."""
    from fkd_dali.loaders.feed import BatchSource

    source = BatchSource()
    source.set_epoch(feed)
    while True:
        try:
            yield source()
        except StopIteration:
            return


# -- assets, entries, report ------------------------------------------------------------

def prepare_assets(cfg: FeedConfig) -> tuple[DatasetIndex, str, dict]:
    """The linked corpus, its index and the synthetic store (built once under the assets folder)."""
    from fkd_dali.data.index import build_index

    from .corpus import CorpusConfig, build_corpus, build_linked_corpus
    from .labels import synthetic_store

    source = build_corpus(cfg.assets_dir / f"corpus-{cfg.sources}-seed{cfg.corpus_seed}",
                          CorpusConfig(n_images=cfg.sources, seed=cfg.corpus_seed), progress=cfg.progress)
    linked = build_linked_corpus(cfg.assets_dir / f"linked-{cfg.images}-c{cfg.classes}-from{cfg.sources}"
                                 f"-seed{cfg.corpus_seed}", cfg.images, source, cfg.classes)
    index = build_index(linked.root, progress=cfg.progress)
    _, url = synthetic_store(index, cfg.assets_dir / f"synthetic-{index.fingerprint[:8]}-M{cfg.crops_per_image}"
                             f"-K{cfg.top_k}", cfg.crops_per_image, cfg.top_k, cfg.seed, cfg.progress)
    dataset = {"root": index.root, "n_images": len(index), "n_classes": len(index.class_names),
               "distinct_files": min(cfg.sources, len(index)), "mean_kb": float(index.nbytes.mean()) / 1000,
               "fingerprint": index.fingerprint, "store": url, "crops_per_image": cfg.crops_per_image,
               "top_k": cfg.top_k, "labels": "synthetic (bench.labels.synthetic_labels); boxes from the crop sampler"}
    return index, url, dataset


def build_entries(cfg: FeedConfig, index: DatasetIndex, store_url: str) -> list[Entry]:
    """The breakdown stages at one thread, plus the feed and the whole chain at every thread count."""
    wanted = [(stage, 1) for stage, _ in STAGES]
    wanted += [(stage, t) for t in cfg.threads if t != 1 for stage in ("feed", "labels")]
    return [Entry(f"{stage} ({t} thread{'s' if t > 1 else ''})",
                  (lambda stage=stage, t=t: StageLoader(cfg, index, store_url, stage, t)),
                  {"stage": stage, "threads": t}) for stage, t in wanted]


def summarize_entry(entry: Entry, rounds: Sequence[RoundResult]) -> dict:
    """A report row in images: medians over rounds and every round's figures."""
    speed = [r.crops_per_s for r in rounds]
    cpu_us = [1e6 * r.cpu_seconds / r.crops for r in rounds]
    med = statistics.median(cpu_us)
    return {"label": entry.label, **entry.meta, "images_per_s": statistics.median(speed),
            "images_per_s_min": min(speed), "images_per_s_max": max(speed), "cpu_us_per_image": med,
            "images_per_cpu_s": 1e6 / med if med > 0 else None, "peak_rss_mb": max(r.peak_rss_mb for r in rounds),
            "rounds": [{"images": r.crops, "seconds": r.seconds, "cpu_seconds": r.cpu_seconds,
                        "images_per_s": r.crops_per_s, "cpu_us_per_image": 1e6 * r.cpu_seconds / r.crops}
                       for r in rounds]}


def breakdown(rows: Sequence[dict]) -> list[dict]:
    """Each stage's own CPU-us per image at one thread: differences of the cumulative medians."""
    cumulative = {r["stage"]: r["cpu_us_per_image"] for r in rows if r["threads"] == 1}
    out, before = [], 0.0
    for stage, name in STAGES:
        out.append({"stage": name, "cpu_us_per_image": max(0.0, cumulative[stage] - before),
                    "cumulative_cpu_us_per_image": cumulative[stage]})
        before = cumulative[stage]
    return out


def headline(rows: Sequence[dict]) -> list[dict]:
    """Feed alone and through the external source (labels gathered), per thread count, vs the target."""
    out = []
    for r in rows:
        if r["stage"] in ("feed", "labels"):
            where = "feed alone" if r["stage"] == "feed" else "through external source"
            out.append({"path": where, "threads": r["threads"], "images_per_s": r["images_per_s"],
                        "images_per_cpu_s": r["images_per_cpu_s"], "cpu_us_per_image": r["cpu_us_per_image"],
                        "cores_per_gpu": GPU_IMAGES_PER_S / r["images_per_cpu_s"] if r["images_per_cpu_s"] else None})
    return out


def check_target(head: Sequence[dict]) -> dict:
    through = [h for h in head if h["path"] == "through external source"]
    worst = min((h["images_per_cpu_s"] or 0.0) for h in through)
    return {"target": f">= {TARGET_IMAGES_PER_CPU_S:,.0f} images per CPU-second through the external source "
                      "(at every thread count)", "minimum": TARGET_IMAGES_PER_CPU_S, "value": worst,
            "met": worst >= TARGET_IMAGES_PER_CPU_S}


def run_feed_benchmark(cfg: FeedConfig) -> dict:
    """Prepare the assets, run the rounds, write feed.json and feed.png; returns the JSON document."""
    torch.set_num_threads(1)
    load_start = load_average()
    index, store_url, dataset = prepare_assets(cfg)
    entries = build_entries(cfg, index, store_url)
    results = run_rounds(entries, cfg.rounds, cfg.warmup, cfg.timed_steps, progress=cfg.progress)
    rows = [summarize_entry(e, results[e.label]) for e in entries]
    parts, head = breakdown(rows), headline(rows)
    target = check_target(head)
    machine = machine_description()
    load = {"start": load_start, "end": load_average()}
    notes = ["decoding replaced by a pass-through graph; CPU time of the whole process (DALI threads included); "
             "medians over rounds; stage figures are differences of cumulative medians (one thread), so small "
             "ones are noisy",
             "cores_per_gpu = 5,000 images/s (20,000 crops/s at m=4) / images per CPU-second: the host cores one "
             "GPU's replay process needs for this path alone, beside DALI's decode and resize on the GPU"]
    notes.extend(load_notes(load))
    doc = {"benchmark": "feed", "machine": machine, "load_average": load,
           "config": {**asdict(cfg), "timed_steps": cfg.timed_steps, "images_per_step": cfg.images_per_step},
           "dataset": dataset, "rows": rows, "headline": head, "breakdown": parts, "target": target, "notes": notes}
    out = Path(cfg.out)
    write_json(out / "feed.json", doc)
    _chart(out / "feed.png", cfg, head, parts, target, machine, dataset)
    return doc


def _chart(path: Path, cfg: FeedConfig, head: Sequence[dict], parts: Sequence[dict], target: dict,
           machine: dict, dataset: dict) -> None:
    def bar(h: dict, value: str) -> dict:
        return {"label": f"{h['path']}, {h['threads']} thr", "value": h[value],
                "group": "fkd-dali" if h["path"] != "feed alone" else "ablation"}

    panels_chart(path, [
        {"xlabel": "images per CPU-second (median)", "bars": [bar(h, "images_per_cpu_s") for h in head],
         "target": target["minimum"], "target_label": f"target {target['minimum']:,.0f}"},
        {"xlabel": "images / s (median)", "bars": [bar(h, "images_per_s") for h in head],
         "target": GPU_IMAGES_PER_S, "target_label": "one GPU's need"},
        {"xlabel": "CPU-us per image, by stage (1 thread)",
         "bars": [{"label": p["stage"], "value": p["cpu_us_per_image"], "group": "fkd-dali"} for p in parts]},
    ], f"Replay host path without decoding: {dataset['n_images']:,} files (~{dataset['mean_kb']:.0f} KB), "
       f"m={cfg.m}, batch {cfg.batch_size} crops",
        f"{machine['cpu_model']}, {machine['usable_cores']} cores")


def parse_args(argv: Sequence[str] | None) -> FeedConfig:
    d = FeedConfig()
    p = argparse.ArgumentParser(prog="bench feed", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=d.images, help="files in the linked corpus (default %(default)s)")
    p.add_argument("--classes", type=int, default=d.classes)
    p.add_argument("--sources", type=int, default=d.sources, help="distinct real JPEGs the files link to")
    p.add_argument("--corpus-seed", type=int, default=d.corpus_seed)
    p.add_argument("--crops-per-image", "-M", type=int, default=d.crops_per_image)
    p.add_argument("--top-k", "-K", type=int, default=d.top_k)
    p.add_argument("--m", type=int, default=d.m)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="crops per step (default %(default)s)")
    p.add_argument("--threads", type=int, nargs="+", default=list(d.threads))
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps per window")
    p.add_argument("--batches", type=int, default=d.batches, help="timed steps per window (default: one pass)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, metavar="DIR")
    p.add_argument("--assets", default=d.assets, metavar="DIR")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return FeedConfig(images=a.images, classes=a.classes, sources=a.sources, corpus_seed=a.corpus_seed,
                      crops_per_image=a.crops_per_image, top_k=a.top_k, m=a.m, batch_size=a.batch_size,
                      threads=tuple(a.threads), rounds=a.rounds, warmup=a.warmup, batches=a.batches, seed=a.seed,
                      out=a.out, assets=a.assets, progress=not a.no_progress)


def _summary(cfg: FeedConfig, doc: dict) -> dict:
    """The one-line summary printed after the run (besides the JSON and PNG paths)."""
    return {"images_per_cpu_s": {f"{h['path']}, {h['threads']} thr": round(h["images_per_cpu_s"] or 0.0)
                                 for h in doc["headline"]},
            "cpu_us_per_image": {p["stage"]: round(p["cpu_us_per_image"], 1) for p in doc["breakdown"]},
            "target_met": doc["target"]["met"]}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bench feed` / `fkd-dali bench feed`; FkdError -> message, exit 2."""
    return run_cli(argv, "feed", parse_args, run_feed_benchmark, _summary)


if __name__ == "__main__":
    raise SystemExit(main())

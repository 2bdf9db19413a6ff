"""`bench train`: training throughput with real data (replayed crops + stored labels) vs synthetic tensors,
and FKD replay vs online KD (the teacher in the loop).

All sides are `fkd_dali.train.loop.fit` with the same model, batch, precision and step
count; the synthetic side (`synthetic=True`) replays one random batch made on the
device, so the gap is what the data path costs the training loop (target: real >= 97%
of synthetic, docs/design.md, meant for GPUs). The online side (`--labels online`, the same
teacher that made the store) cuts fresh crops with the same crop graph and runs the
teacher on every one of them: FKD / online is the speed-up FKD claims (paper: 3-5x at
similar accuracy), reported in wall-clock images/s and in CPU-seconds per image (the
figure that holds on a shared machine). `fit` times from the end of its first step, so
start-up (model build, first DALI batch) is excluded from the speeds; the CPU-seconds
count the whole `fit` call, start-up included (a few percent of a 40-step run).
Per-pass checkpoints are included on every side.
The labels are a store made by fkd-dali's label generation on the corpus (real
teacher). Rounds rotate the order of the sides; medians. Writes `<out>/train.json` and
`<out>/train.png`.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from fkd_dali.errors import ConfigError

from .corpus import prepare_dataset
from .harness import load_average, load_notes, machine_description, tree_cpu_seconds
from .labels import write_store_labels
from .report import panels_chart, run_cli, write_json

TARGET_RATIO = 0.97  # real-data / synthetic-data training throughput (docs/design.md, "Targets", GPU)
PAPER_SPEEDUP = 3.0  # FKD vs online KD: the low end of the paper's 3-5x
KINDS = ("real", "synthetic", "online")

#: Defaults per device kind: a small CPU run, FKD's GPU recipe.
DEFAULTS = {
    "cpu": {"arch": "resnet10t", "image_size": 112, "batch_size": 64, "steps": 40, "channels_last": False,
            "corpus_images": 128},
    "cuda": {"arch": "resnet50", "image_size": 224, "batch_size": 256, "steps": 200, "channels_last": True,
             "corpus_images": 1024},
}


@dataclass(frozen=True)
class TrainBenchConfig:
    """Settings of one `bench train` run; None fields take the device's entry of `DEFAULTS`.

    Attributes:
        batch_size: crops per step; num_crops: m; steps: optimizer steps per run (the
            first is not timed).
        crops_per_image, top_k: M and K of the generated store.
        amp: as `fkd-dali train --amp` (auto: bf16 on GPU, off on CPU).
        threads: DALI threads of the replay loader.
    """

    data: str | None = None
    corpus_images: int | None = None
    corpus_seed: int = 0
    arch: str | None = None
    image_size: int | None = None
    batch_size: int | None = None
    num_crops: int = 4
    steps: int | None = None
    channels_last: bool | None = None
    amp: str = "auto"
    crops_per_image: int = 16
    top_k: int = 5
    teacher: str = "efficientnet_lite0"
    checkpoint: str | None = None
    threads: int = 2
    device: str = "auto"
    rounds: int = 2
    seed: int = 0
    out: str = "runs/bench-train"
    assets: str | None = None
    online: bool = True  # also time online KD
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("num_crops", "crops_per_image", "top_k", "threads", "rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 2:
            raise ConfigError("steps must be >= 2 (the first step is not timed)")

    @property
    def assets_dir(self) -> Path:
        return Path(self.assets) if self.assets else Path(self.out) / "assets"

    def resolved(self) -> "TrainBenchConfig":
        """A copy with the device chosen and every None filled from `DEFAULTS`."""
        import torch

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        kind = "cuda" if device.startswith("cuda") else "cpu"
        fill = {k: v for k, v in DEFAULTS[kind].items() if getattr(self, k) is None}
        cfg = TrainBenchConfig(**{**asdict(self), **fill, "device": device})
        if cfg.batch_size % cfg.num_crops:  # type: ignore[operator]
            raise ConfigError(f"batch size {cfg.batch_size} (crops) must be a multiple of num-crops {cfg.num_crops}")
        return cfg


def run_fit(cfg: TrainBenchConfig, root: str, n_images: int, store: str, kind: str, out: Path) -> dict:
    """One `fit` of `cfg.steps` steps over the `n_images` of `root`; its throughput (timed after step 1).

    `kind`: "real" (replay of `store`), "synthetic" (device tensors) or "online" (online KD
    with the teacher that made the store).
    """
    from fkd_dali.config import TrainConfig
    from fkd_dali.train.loop import fit

    images_per_step = cfg.batch_size // cfg.num_crops  # type: ignore[operator]
    steps_per_pass = max(1, n_images // images_per_step)
    passes = math.ceil(cfg.steps / steps_per_pass) + 1  # type: ignore[operator]
    shutil.rmtree(out, ignore_errors=True)
    cpu0 = tree_cpu_seconds()
    online = kind == "online"
    labels = dict(labels="online", teacher=cfg.teacher, teacher_checkpoint=cfg.checkpoint) if online else \
        dict(labels=store)
    result = fit(TrainConfig(
        data=root, **labels, arch=cfg.arch, output=str(out), epochs=passes * cfg.num_crops,  # type: ignore[arg-type]
        num_crops=cfg.num_crops, batch_size=cfg.batch_size, image_size=cfg.image_size,  # type: ignore[arg-type]
        amp=cfg.amp, channels_last=bool(cfg.channels_last), warmup_epochs=0.0, seed=cfg.seed, device=cfg.device,
        threads=cfg.threads, synthetic=kind == "synthetic", max_steps=cfg.steps, progress=cfg.progress,
        log_interval=max(1, cfg.steps // 4)))  # type: ignore[operator]
    cpu = tree_cpu_seconds() - cpu0
    shutil.rmtree(out, ignore_errors=True)
    crops = result.steps * cfg.batch_size  # type: ignore[operator]
    return {"kind": kind, "steps": result.steps, "crops_per_s": result.crops_per_s,
            "images_per_s": result.images_per_s, "final_loss": result.final_loss, "cpu_s": cpu,
            "cpu_s_per_1000_crops": 1000 * cpu / crops}


def run_train_benchmark(cfg: TrainBenchConfig) -> dict:
    """`fit` runs of each side, in a rotating order; writes `train.json` and `train.png`."""
    cfg = cfg.resolved()
    load_start = load_average()
    index, dataset = prepare_dataset(cfg.data, cfg.corpus_images, cfg.corpus_seed, cfg.assets_dir,  # type: ignore[arg-type]
                                     cfg.progress)
    fp = index.fingerprint[:8]
    info, store = write_store_labels(index, cfg.assets_dir / f"store-{fp}-M{cfg.crops_per_image}-K{cfg.top_k}",
                                     cfg.teacher, cfg.checkpoint, cfg.crops_per_image, cfg.top_k, cfg.seed,
                                     cfg.device, cfg.threads, progress=cfg.progress)
    kinds = KINDS if cfg.online else KINDS[:2]
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(cfg.rounds):
        for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:  # each side leads in turn
            runs[kind].append(run_fit(cfg, index.root, len(index), store, kind, Path(cfg.out) / "run"))
    result = _result(runs)
    machine = machine_description()
    load = {"start": load_start, "end": load_average()}
    notes = ["crops/s = training samples/s; images/s = crops/s / num_crops (FKD's accounting: each image gives m "
             "crops per step); ratio = median over rounds of real / synthetic crops/s of the same round"]
    if cfg.online:
        notes.append(f"online KD: the teacher ({cfg.teacher}) runs on every training crop, resized on the device "
                     "from the student's crop to its own input size; fkd_over_online = median over rounds of replay "
                     "(real) / online images/s of the same round, the paper's FKD speed-up (3-5x); "
                     "fkd_over_online_cpu = the same with online / replay CPU-seconds per crop (whole fit call)")
    if not cfg.device.startswith("cuda"):  # type: ignore[union-attr]
        notes.append("on CPU the replay's decode threads and the training step share the same cores, so real data "
                     "cannot match synthetic tensors; the 97% target is meant for GPU training, where decoding "
                     "runs beside the GPU step")
    notes.extend(load_notes(load))
    doc = {"benchmark": "train", "machine": machine, "load_average": load, "config": asdict(cfg),
           "dataset": dataset, "store": {**asdict(info), "path": store}, "result": result, "rounds": runs,
           "notes": notes}
    out = Path(cfg.out)
    write_json(out / "train.json", doc)
    _chart(out / "train.png", cfg, result, machine)
    return doc


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(x[key] for x in runs)


def _result(runs: dict[str, list[dict]]) -> dict:
    """Medians of each side and the per-round ratios (real / synthetic and, with online runs, real / online)."""
    ratios = [a["crops_per_s"] / b["crops_per_s"] for a, b in zip(runs["real"], runs["synthetic"])]
    result = {f"{k}_{unit}_per_s": _median(v, f"{unit}_per_s") for k, v in runs.items() for unit in ("crops", "images")}
    result.update({f"{k}_cpu_s_per_1000_crops": _median(v, "cpu_s_per_1000_crops") for k, v in runs.items()})
    result.update(ratio=statistics.median(ratios), ratio_per_round=ratios, target_ratio=TARGET_RATIO)
    result["target_met"] = result["ratio"] >= TARGET_RATIO
    if "online" in runs:
        speedups = [a["images_per_s"] / b["images_per_s"] for a, b in zip(runs["real"], runs["online"])]
        cpu = [b["cpu_s_per_1000_crops"] / a["cpu_s_per_1000_crops"] for a, b in zip(runs["real"], runs["online"])]
        result.update(fkd_over_online=statistics.median(speedups), fkd_over_online_per_round=speedups,
                      fkd_over_online_cpu=statistics.median(cpu), fkd_over_online_cpu_per_round=cpu,
                      paper_speedup=[PAPER_SPEEDUP, 5.0])
    return result


def _chart(path: Path, cfg: TrainBenchConfig, result: dict, machine: dict) -> None:
    """Images/s of each side; real / synthetic against its target; FKD / online against the paper's 3x."""
    bars = [{"label": "FKD replay (stored labels)", "value": result["real_images_per_s"], "group": "fkd-dali"},
            {"label": "synthetic tensors", "value": result["synthetic_images_per_s"]}]
    panels = [{"xlabel": "training images / s (median)", "bars": bars},
              {"xlabel": "real / synthetic", "target": TARGET_RATIO, "target_label": f"target {TARGET_RATIO:.0%}",
               "bars": [{"label": "ratio", "value": result["ratio"], "group": "fkd-dali"}]}]
    if "fkd_over_online" in result:
        bars.append({"label": "online KD (teacher in the loop)", "value": result["online_images_per_s"]})
        panels.append({"xlabel": "FKD speed-up over online KD", "target": PAPER_SPEEDUP, "target_label": "paper 3-5x",
                       "bars": [{"label": "images/s (wall clock)", "value": result["fkd_over_online"],
                                 "group": "fkd-dali"},
                                {"label": "CPU-s per image", "value": result["fkd_over_online_cpu"],
                                 "group": "fkd-dali"}]})
    panels_chart(path, panels, f"Training throughput: {cfg.arch} at {cfg.image_size} px, batch {cfg.batch_size} "
                 f"crops (m={cfg.num_crops}), {cfg.steps} steps; teacher {cfg.teacher}",
                 f"{machine['cpu_model']}, {machine['usable_cores']} cores, {cfg.device}")


def parse_args(argv: Sequence[str] | None) -> TrainBenchConfig:
    d = TrainBenchConfig()
    p = argparse.ArgumentParser(prog="bench train", description=__doc__.splitlines()[0],
                                epilog="defaults: CPU " + json.dumps(DEFAULTS["cpu"]) + "; GPU "
                                + json.dumps(DEFAULTS["cuda"]))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="ImageNet-style folder instead of the corpus")
    src.add_argument("--corpus-images", type=int, default=d.corpus_images, metavar="N")
    p.add_argument("--corpus-seed", type=int, default=d.corpus_seed)
    p.add_argument("--arch", default=d.arch, help="timm student")
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="crops per step")
    p.add_argument("--num-crops", "-m", type=int, default=d.num_crops)
    p.add_argument("--steps", type=int, default=d.steps, help="steps per run (the first is not timed)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=d.channels_last)
    p.add_argument("--amp", default=d.amp, help="auto, bf16, fp16, off")
    p.add_argument("--crops-per-image", "-M", type=int, default=d.crops_per_image)
    p.add_argument("--top-k", "-K", type=int, default=d.top_k)
    p.add_argument("--teacher", default=d.teacher)
    p.add_argument("--checkpoint", default=d.checkpoint)
    p.add_argument("--threads", type=int, default=d.threads, help="DALI threads")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, metavar="DIR")
    p.add_argument("--assets", default=d.assets, metavar="DIR", help="corpus and store (default OUT/assets)")
    p.add_argument("--no-online", action="store_true", help="skip the online-KD runs")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return TrainBenchConfig(data=a.data, corpus_images=a.corpus_images, corpus_seed=a.corpus_seed, arch=a.arch,
                            image_size=a.image_size, batch_size=a.batch_size, num_crops=a.num_crops, steps=a.steps,
                            channels_last=a.channels_last, amp=a.amp, crops_per_image=a.crops_per_image,
                            top_k=a.top_k, teacher=a.teacher, checkpoint=a.checkpoint, threads=a.threads,
                            device=a.device, rounds=a.rounds, seed=a.seed, out=a.out, assets=a.assets,
                            online=not a.no_online, progress=not a.no_progress)


def _summary(cfg, doc: dict) -> dict:
    """The one-line summary printed after the run (besides the JSON and PNG paths)."""
    r = doc["result"]
    out = {"real_crops_per_s": round(r["real_crops_per_s"], 1),
           "synthetic_crops_per_s": round(r["synthetic_crops_per_s"], 1),
           "ratio": round(r["ratio"], 3), "target_met": r["target_met"]}
    if "fkd_over_online" in r:
        out.update(online_images_per_s=round(r["online_images_per_s"], 2), fkd_over_online=round(r["fkd_over_online"], 2),
                   fkd_over_online_cpu=round(r["fkd_over_online_cpu"], 2))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bench train` / `fkd-dali bench train`; FkdError -> message, exit 2."""
    return run_cli(argv, "train", parse_args, run_train_benchmark, _summary)


if __name__ == "__main__":
    raise SystemExit(main())

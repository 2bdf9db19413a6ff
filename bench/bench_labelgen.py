"""`bench labelgen`: label-generation crops/s against teacher-only inference on the same batch size.

Label generation is the real thing: `generate_labels` over the corpus with the real
teacher (M crops per image, top-K), into a fresh store each round, timed by its own
summary (the labelling loop: file reads, DALI decode + crops, teacher, top-K, chunk
writes; not the teacher load or pipeline build). Teacher-only inference sends random
tensors of the same batch size through the same model with the same settings
(channels_last, inference mode, bf16 autocast on GPU, float32 on CPU): the ceiling
label generation is measured against (target: >= 90%). Rounds alternate the two;
medians. Writes `<out>/labelgen.json` and `<out>/labelgen.png`.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from fkd_dali.errors import ConfigError

from .corpus import prepare_dataset
from .harness import load_average, load_notes, machine_description, tree_cpu_seconds
from .labels import labelgen_device
from .report import ratio_chart, run_cli, write_json

TARGET_RATIO = 0.90  # label generation / teacher-only inference (docs/design.md, "Targets")


@dataclass(frozen=True)
class LabelGenBenchConfig:
    """Settings of one `bench labelgen` run (the CLI's defaults come from here).

    Attributes:
        crops_per_image, top_k: M and K of the generated store.
        batch_size: crops per teacher forward pass, in both measurements.
        crops_per_round: crops cut per decoded image and DALI round (labelgen's default 8).
        infer_batches: timed teacher-only batches per round (after one warm-up batch).
        threads: DALI threads (label generation); torch keeps its own thread count.
    """

    data: str | None = None
    corpus_images: int = 64
    corpus_seed: int = 0
    crops_per_image: int = 16
    top_k: int = 5
    teacher: str = "efficientnet_lite0"
    checkpoint: str | None = None
    batch_size: int = 256
    crops_per_round: int = 8
    threads: int = 2
    device: str = "auto"
    rounds: int = 3
    infer_batches: int = 3
    seed: int = 0
    out: str = "runs/bench-labelgen"
    assets: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("corpus_images", "crops_per_image", "top_k", "batch_size", "crops_per_round", "threads",
                     "rounds", "infer_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")

    @property
    def assets_dir(self) -> Path:
        return Path(self.assets) if self.assets else Path(self.out) / "assets"


def run_labelgen_once(cfg: LabelGenBenchConfig, root: str, store: Path) -> dict:
    """One label generation into a fresh store; its own timing plus the process tree's CPU time."""
    from fkd_dali.config import LabelGenConfig
    from fkd_dali.labels.generate import generate_labels

    shutil.rmtree(store, ignore_errors=True)
    cpu0, t0 = tree_cpu_seconds(), time.perf_counter()
    summary = generate_labels(LabelGenConfig(
        data=root, out=str(store), teacher=cfg.teacher, checkpoint=cfg.checkpoint,
        crops_per_image=cfg.crops_per_image, top_k=cfg.top_k, seed=cfg.seed, batch_size=cfg.batch_size,
        crops_per_round=cfg.crops_per_round, device=labelgen_device(cfg.device), threads=cfg.threads,
        progress=cfg.progress))
    cpu, wall = tree_cpu_seconds() - cpu0, time.perf_counter() - t0
    shutil.rmtree(store, ignore_errors=True)
    return {"crops": summary.crops, "seconds": summary.seconds, "crops_per_s": summary.crops_per_s,
            "call_seconds": wall, "call_cpu_seconds": cpu}


class TeacherOnly:
    """The teacher on random tensors: same model, batch, channels_last and precision as labelgen."""

    def __init__(self, cfg: LabelGenBenchConfig) -> None:
        from fkd_dali.dist import pick_device
        from fkd_dali.labels.teacher import load_teacher

        teacher = load_teacher(cfg.teacher, cfg.checkpoint)
        self.device = pick_device(labelgen_device(cfg.device))
        self.model = teacher.model.to(self.device, memory_format=torch.channels_last)
        self.input_size = teacher.input_size
        gen = torch.Generator().manual_seed(cfg.seed)
        self.x = torch.randn(cfg.batch_size, *teacher.input_size, generator=gen).to(self.device).contiguous(
            memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self) -> None:
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                self.model(self.x)
            torch.cuda.synchronize(self.device)
        else:
            self.model(self.x)

    def measure(self, batches: int) -> dict:
        self.forward()  # warm-up
        cpu0, t0 = tree_cpu_seconds(), time.perf_counter()
        for _ in range(batches):
            self.forward()
        seconds, cpu = time.perf_counter() - t0, tree_cpu_seconds() - cpu0
        crops = batches * self.x.shape[0]
        return {"crops": crops, "seconds": seconds, "crops_per_s": crops / seconds, "cpu_seconds": cpu}


def run_labelgen_benchmark(cfg: LabelGenBenchConfig) -> dict:
    """Alternating rounds of label generation and teacher-only inference; writes JSON + PNG."""
    load_start = load_average()
    index, dataset = prepare_dataset(cfg.data, cfg.corpus_images, cfg.corpus_seed, cfg.assets_dir, cfg.progress)
    store = cfg.assets_dir / "labelgen-bench-store.zarr"
    teacher = TeacherOnly(cfg)
    labelgen: list[dict] = []
    infer: list[dict] = []
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=2 * cfg.rounds, desc="bench labelgen", unit="run")
    for r in range(cfg.rounds):
        order = ("labelgen", "infer") if r % 2 == 0 else ("infer", "labelgen")
        for what in order:
            if bar is not None:
                bar.set_postfix_str(f"round {r + 1}/{cfg.rounds}: {what}")
            if what == "labelgen":
                labelgen.append(run_labelgen_once(cfg, index.root, store))
            else:
                infer.append(teacher.measure(cfg.infer_batches))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    ratios = [a["crops_per_s"] / b["crops_per_s"] for a, b in zip(labelgen, infer)]
    result = {
        "labelgen_crops_per_s": statistics.median(x["crops_per_s"] for x in labelgen),
        "teacher_only_crops_per_s": statistics.median(x["crops_per_s"] for x in infer),
        "ratio": statistics.median(ratios), "ratio_per_round": ratios, "target_ratio": TARGET_RATIO,
    }
    result["target_met"] = result["ratio"] >= TARGET_RATIO
    result["teacher_only_cpu_s_per_1000_crops"] = statistics.median(
        1000 * x["cpu_seconds"] / x["crops"] for x in infer)
    result["labelgen_call_cpu_s_per_1000_crops"] = statistics.median(
        1000 * x["call_cpu_seconds"] / x["crops"] for x in labelgen)
    machine = machine_description()
    load = {"start": load_start, "end": load_average()}
    notes = ["ratio = median over rounds of (label generation crops/s) / (teacher-only crops/s) of the same round",
             "labelgen CPU time covers the whole call (teacher load and pipeline build included)"]
    if teacher.device.type == "cpu":
        notes.append("on CPU, DALI's decode and crop threads take cores the teacher would otherwise use, so "
                     "label generation cannot reach teacher-only speed; the 90% target is meant for GPUs, where "
                     "decoding runs on the GPU's decoder beside the teacher")
    notes.extend(load_notes(load))
    doc = {"benchmark": "labelgen", "machine": machine, "load_average": load,
           "config": {**asdict(cfg), "device": str(teacher.device), "teacher_input_size": list(teacher.input_size)},
           "dataset": dataset, "result": result, "labelgen_rounds": labelgen, "teacher_only_rounds": infer,
           "notes": notes}
    out = Path(cfg.out)
    write_json(out / "labelgen.json", doc)
    ratio_chart(out / "labelgen.png", ("label generation", result["labelgen_crops_per_s"]),
                ("teacher only", result["teacher_only_crops_per_s"]), "crops / s (median)", result["ratio"],
                "label generation / teacher only", TARGET_RATIO,
                f"Label generation vs teacher-only inference: {cfg.teacher}, batch {cfg.batch_size} crops, "
                f"M={cfg.crops_per_image}, {dataset['n_images']} images",
                f"{machine['cpu_model']}, {machine['usable_cores']} cores, {teacher.device}")
    return doc


def parse_args(argv: Sequence[str] | None) -> LabelGenBenchConfig:
    d = LabelGenBenchConfig()
    p = argparse.ArgumentParser(prog="bench labelgen", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="ImageNet-style folder to label instead of the corpus")
    src.add_argument("--corpus-images", type=int, default=d.corpus_images, metavar="N")
    p.add_argument("--corpus-seed", type=int, default=d.corpus_seed)
    p.add_argument("--crops-per-image", "-M", type=int, default=d.crops_per_image)
    p.add_argument("--top-k", "-K", type=int, default=d.top_k)
    p.add_argument("--teacher", default=d.teacher)
    p.add_argument("--checkpoint", default=d.checkpoint)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="crops per teacher forward pass")
    p.add_argument("--crops-per-round", type=int, default=d.crops_per_round)
    p.add_argument("--threads", type=int, default=d.threads, help="DALI threads")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--infer-batches", type=int, default=d.infer_batches, help="timed teacher-only batches per round")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, metavar="DIR")
    p.add_argument("--assets", default=d.assets, metavar="DIR", help="corpus (default OUT/assets)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return LabelGenBenchConfig(data=a.data, corpus_images=a.corpus_images, corpus_seed=a.corpus_seed,
                               crops_per_image=a.crops_per_image, top_k=a.top_k, teacher=a.teacher,
                               checkpoint=a.checkpoint, batch_size=a.batch_size, crops_per_round=a.crops_per_round,
                               threads=a.threads, device=a.device, rounds=a.rounds, infer_batches=a.infer_batches,
                               seed=a.seed, out=a.out, assets=a.assets, progress=not a.no_progress)


def _summary(cfg, doc: dict) -> dict:
    """The one-line summary printed after the run (besides the JSON and PNG paths)."""
    r = doc["result"]
    return {"labelgen_crops_per_s": round(r["labelgen_crops_per_s"], 1),
            "teacher_only_crops_per_s": round(r["teacher_only_crops_per_s"], 1),
            "ratio": round(r["ratio"], 3), "target_met": r["target_met"]}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bench labelgen` / `fkd-dali bench labelgen`; FkdError -> message, exit 2."""
    return run_cli(argv, "labelgen", parse_args, run_labelgen_benchmark, _summary)


if __name__ == "__main__":
    raise SystemExit(main())

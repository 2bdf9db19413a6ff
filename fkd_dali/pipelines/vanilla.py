"""Vanilla pipeline: DALI's own random-resized-crop + flip with hard folder labels (no distillation).

The no-KD baseline and the "vanilla DALI" benchmark row. Image order comes from the same
crop plan as replay (one crop per image per epoch, so a pass is one epoch), fed through
an external source; crops and flips come from DALI's RNG (seeded per rank), so unlike
replay a resumed vanilla run sees the same images at the same steps but other crops.
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

from fkd_dali.crop_plan import PassPlan, make_pass_plan
from fkd_dali.errors import ConfigError
from fkd_dali.index import DatasetIndex
from fkd_dali.replay import ReplayBatch
from pipelines.fragments import interp_type, normalize
from pipelines.validation import EpochRunner, image_feed


@pipeline_def
def _vanilla_graph(source, size: int, scale: Sequence[float], ratio: Sequence[float], interpolation: str,
                   mean: Sequence[float], std: Sequence[float], flip_prob: float, gpu: bool, half: bool):
    encoded, meta = fn.external_source(source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT64])
    image = fn.decoders.image_random_crop(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                          random_area=list(scale), random_aspect_ratio=list(ratio),
                                          num_attempts=10, adjust_orientation=False)
    image = fn.resize(image, size=(size, size), interp_type=interp_type(interpolation), antialias=True)
    image = normalize(image, fn.random.coin_flip(probability=flip_prob), mean, std, half)
    return image, meta


def make_vanilla_pipeline(source, size: int, mean: Sequence[float], std: Sequence[float], batch_size: int,
                          num_threads: int, device_id: int | None, interpolation: str = "bilinear",
                          scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                          flip_prob: float = 0.5, half: bool | None = None, seed: int = 0) -> Pipeline:
    """Build the vanilla pipeline (outputs: images (B, 3, size, size), meta (B, 2) = image id, class)."""
    gpu = device_id is not None
    return _vanilla_graph(source, size, tuple(scale), tuple(ratio), interpolation, tuple(mean), tuple(std),
                          flip_prob, gpu, gpu if half is None else half, batch_size=batch_size,
                          num_threads=num_threads, device_id=device_id, prefetch_queue_depth=2, seed=seed,
                          exec_dynamic=True)


class VanillaLoader:
    """One random crop per image per pass with its folder class: `pass_batches(p)` like `ReplayLoader`.

    Args: as `fkd_dali.replay.ReplayLoader` (batch_size = crops = images per step on this
    rank), plus the random-resized-crop `scale`, `ratio` and `flip_prob`.
    Batches are `ReplayBatch(images, classes (B,), None, meta)` with meta (image id, -1).
    """

    def __init__(self, index: DatasetIndex, batch_size: int, size: int, mean: Sequence[float],
                 std: Sequence[float], interpolation: str = "bilinear", seed: int = 0, rank: int = 0,
                 world: int = 1, device: torch.device | str = "cpu", threads: int | None = None,
                 scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 flip_prob: float = 0.5) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.index, self.batch_size = index, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.device = torch.device(device)
        device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        threads = threads or min(8, os.cpu_count() or 1)
        dali_seed = (seed * 7919 + rank) % (2**31 - 1)
        self._runner = EpochRunner(lambda src: make_vanilla_pipeline(
            src, size, mean, std, batch_size, threads, device_id, interpolation, scale, ratio, flip_prob,
            seed=dali_seed))

    def plan(self, pass_idx: int) -> PassPlan:
        return make_pass_plan(self.seed, pass_idx, 1, 1, len(self.index), self.rank, self.world)

    @property
    def steps_per_pass(self) -> int:
        return self.plan(0).steps(self.batch_size)

    def pass_batches(self, pass_idx: int, start_step: int = 0) -> Iterator[ReplayBatch]:
        plan = self.plan(pass_idx)
        steps = plan.steps(self.batch_size)
        if start_step >= steps:
            return
        ids = plan.images[start_step * self.batch_size: steps * self.batch_size]
        for images, meta in self._runner.epoch(image_feed(self.index, ids, self.batch_size)):
            meta = meta.to(torch.int64).cpu()
            crop_meta = torch.stack([meta[:, 0], torch.full_like(meta[:, 0], -1)], dim=1)
            yield ReplayBatch(images.to(self.device, non_blocking=True),
                              meta[:, 1].to(self.device, non_blocking=True), None, crop_meta)

    def close(self) -> None:
        pass


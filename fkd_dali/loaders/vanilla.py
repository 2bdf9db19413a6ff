"""The vanilla loader: DALI's own random-resized-crop with hard folder labels (no distillation).

The no-KD baseline of `fkd-dali train --labels none` and the "vanilla DALI" benchmark row.
Image order comes from the same crop plan as replay (one crop per image per epoch, so a
pass is one epoch); crops and flips come from DALI's RNG (seeded per rank), so unlike
replay a resumed vanilla run sees the same images at the same steps but other crops.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from fkd_dali.crops.plan import PassPlan, make_pass_plan
from fkd_dali.data.index import DatasetIndex
from fkd_dali.defaults import CROP_RATIO, CROP_SCALE, FLIP_PROB, VANILLA_INTERPOLATION, default_threads
from fkd_dali.dist import dali_device_id
from fkd_dali.errors import ConfigError
from fkd_dali.loaders.batch import CropBatch
from fkd_dali.loaders.feed import EpochRunner, image_feed
from fkd_dali.pipelines.vanilla import make_vanilla_pipeline


class VanillaLoader:
    """One random crop per image per pass with its folder class: `pass_batches(p)` like `ReplayLoader`.

    Args: as `fkd_dali.loaders.replay.ReplayLoader` (batch_size = crops = images per step on this
    rank), plus the random-resized-crop `scale`, `ratio` and `flip_prob`.
    Batches are `CropBatch`es whose one field is "folder_class" (B,), meta (image id, -1).
    """

    def __init__(self, index: DatasetIndex, batch_size: int, size: int, mean: Sequence[float],
                 std: Sequence[float], interpolation: str = VANILLA_INTERPOLATION, seed: int = 0, rank: int = 0,
                 world: int = 1, device: torch.device | str = "cpu", threads: int | None = None,
                 scale: Sequence[float] = CROP_SCALE, ratio: Sequence[float] = CROP_RATIO,
                 flip_prob: float = FLIP_PROB) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.index, self.batch_size = index, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.device = torch.device(device)
        device_id = dali_device_id(self.device)
        threads = threads or default_threads()
        dali_seed = (seed * 7919 + rank) % (2**31 - 1)
        self._runner = EpochRunner(lambda src: make_vanilla_pipeline(
            src, size, mean, std, batch_size, threads, device_id, interpolation, scale, ratio, flip_prob,
            seed=dali_seed))

    def plan(self, pass_idx: int) -> PassPlan:
        return make_pass_plan(self.seed, pass_idx, 1, 1, len(self.index), self.rank, self.world)

    @property
    def steps_per_pass(self) -> int:
        return self.plan(0).steps(self.batch_size)

    def pass_batches(self, pass_idx: int, start_step: int = 0) -> Iterator[CropBatch]:
        plan = self.plan(pass_idx)
        steps = plan.steps(self.batch_size)
        if start_step >= steps:
            return
        ids = plan.images[start_step * self.batch_size: steps * self.batch_size]
        for images, meta in self._runner.epoch(image_feed(self.index, ids, self.batch_size)):
            meta = meta.to(torch.int64).cpu()
            crop_meta = torch.stack([meta[:, 0], torch.full_like(meta[:, 0], -1)], dim=1)
            yield CropBatch(images.to(self.device, non_blocking=True), crop_meta,
                            {"folder_class": meta[:, 1].to(self.device, non_blocking=True)})

    def close(self) -> None:
        pass


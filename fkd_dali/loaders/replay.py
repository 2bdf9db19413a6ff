"""The replay loader: a crop source's crops, batch by batch, cut by the DALI crop graph, fields on the device.

A chain of stages, each a pure function of (seed, pass, rank, world):

1. plan: `make_pass_plan` -> this rank's images (in order) and the pass's m slots;
2. pass table: the source's boxes, flips and declared fields of those slots for those
   images (`fkd_dali.loaders.sources`: a store's crops, read once per pass in a background
   thread, or crops drawn afresh);
3. feed: per step, the images' encoded bytes plus their m pixel boxes and flips (array
   slices of the table), and a meta row (image id, table row);
4. crop pipeline: `fkd_dali.pipelines.crops.make_crop_pipeline` (the graph label generation
   uses, so the student sees the pixels the teacher saw), decode once, m crops;
5. fields: each crop's declared fields gathered from the table on the device, by image id.

Batches are `CropBatch`es with crops of one image adjacent in slot order. `start_step`
skips steps without reading or decoding them (resume).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from fkd_dali.crops.plan import PassPlan, make_pass_plan
from fkd_dali.data.index import DatasetIndex
from fkd_dali.defaults import INTERPOLATION, default_threads
from fkd_dali.dist import dali_device_id
from fkd_dali.errors import ConfigError
from fkd_dali.loaders.batch import CropBatch
from fkd_dali.loaders.feed import BatchSource, EpochRunner, FeedBatch, FileReader, JitterBatchSource
from fkd_dali.loaders.pass_table import DeviceFields, PassTable
from fkd_dali.loaders.sources import CropSource


class _Feeder:
    """Turns a pass table's rows into `FeedBatch`es of dense arrays; files are read a step ahead.

    Per pass, the meta rows (image id, table row) are built once; per step, boxes,
    flips and meta are row slices of the table (views, one array each per batch), so
    the only per-image work left is reading the file.
    """

    def __init__(self, index: DatasetIndex, read_threads: int = 1) -> None:
        self.reader = FileReader(index, read_threads, dali_tensors=True)

    def files(self, images: np.ndarray, row_blocks: Sequence[slice]) -> Iterator[tuple[list[str], list[np.ndarray]]]:
        """(paths, bytes) of each block of `images`, the next block's files read while this one is used."""
        return self.reader.steps(images, row_blocks)

    def batches(self, table: PassTable, row_blocks: Sequence[slice],
                jitter: np.ndarray | None = None) -> Iterator[FeedBatch]:
        """The feed of `row_blocks`; `jitter` (rows, m, 3) adds each image's colour-jitter factors."""
        meta = np.stack([table.images, np.arange(len(table.images), dtype=np.int64)], axis=1)
        for rows, (paths, data) in zip(row_blocks, self.files(table.images, row_blocks)):
            yield FeedBatch(encoded=data, rois=table.rois[rows], flips=table.flips[rows], meta=meta[rows],
                            paths=paths, jitter=None if jitter is None else jitter[rows])

    def close(self) -> None:
        self.reader.close()


class ReplayLoader:
    """Cuts a crop source's crops for one rank: `pass_batches(p)` yields the `CropBatch`es of pass p.

    Args:
        source: where the crops come from (`StoreCrops` for FKD replay, `FreshCrops` for
            online KD and ReLabel); its tables carry the fields the run declared.
        index: the dataset index (paths relative to its root).
        m: crops of each image per pass (num_crops).
        batch_size: crops per step on this rank; a multiple of m (images per step = batch_size / m).
        size: output side in pixels (the student's training resolution).
        mean, std: the student's normalization (fractions of 255).
        interpolation: the student's resize interpolation ("bilinear", "bicubic", ...).
        seed: the crop-plan seed (image order per pass).
        rank, world: this process's place in DDP.
        device: where batches are delivered; a CUDA device also decodes on the GPU.
        threads: DALI CPU threads.
        read_threads: threads reading files ahead of the feed. One reads ~40,000 cached
            files/s, so more only adds GIL contention; raise it for high-latency (network) storage.
        half: float16 crops (default: on GPU only).
        color_jitter: strength S of per-crop colour jitter after the crop (0 = off; see
            `fkd_dali.crops.jitter`); labels are those of the un-jittered crops.
    """

    def __init__(self, source: CropSource, index: DatasetIndex, m: int, batch_size: int, size: int,
                 mean: Sequence[float], std: Sequence[float], interpolation: str = INTERPOLATION, seed: int = 0,
                 rank: int = 0, world: int = 1, device: torch.device | str = "cpu",
                 threads: int | None = None, half: bool | None = None, read_threads: int = 1,
                 color_jitter: float = 0.0) -> None:
        if batch_size < 1 or batch_size % m:
            raise ConfigError(f"a batch of {batch_size} crops per process is not a positive multiple of the "
                              f"{m} crops per image (--num-crops): use a multiple of {m}")
        self.source, self.index = source, index
        self.m, self.M = m, source.crops_per_image
        self.batch_size = batch_size
        self.images_per_step = batch_size // m
        self.size, self.mean, self.std, self.interpolation = size, tuple(mean), tuple(std), interpolation
        self.seed, self.rank, self.world = seed, rank, world
        self.device = torch.device(device)
        self.threads = threads or default_threads()
        self.half = half
        self.color_jitter = color_jitter
        make_pass_plan(seed, 0, m, self.M, len(index), rank, world)  # validates m, rank, world now
        self._feeder = _Feeder(index, read_threads)
        self._runner = EpochRunner(self._build_pipeline, JitterBatchSource if color_jitter else BatchSource)

    # -- stage 1: plan ---------------------------------------------------------
    def plan(self, pass_idx: int) -> PassPlan:
        return make_pass_plan(self.seed, pass_idx, self.m, self.M, len(self.index), self.rank, self.world)

    @property
    def steps_per_pass(self) -> int:
        return self.plan(0).steps(self.images_per_step)

    # -- stage 2: pass table ---------------------------------------------------
    def table(self, pass_idx: int) -> PassTable:
        return self.source.table(self.plan(pass_idx))

    # -- stage 3: feed ------------------------------------------------------------
    def _pass_blocks(self, table: PassTable, start_step: int) -> list[slice]:
        ipb = self.images_per_step
        return [slice(s * ipb, (s + 1) * ipb) for s in range(start_step, len(table.images) // ipb)]

    def files(self, pass_idx: int, start_step: int = 0) -> Iterator[tuple[list[str], list[np.ndarray]]]:
        """The file-read stage of pass `pass_idx` alone: (paths, bytes) per step, as the feed reads them."""
        table = self.table(pass_idx)
        return self._feeder.files(table.images, self._pass_blocks(table, start_step))

    def feed(self, pass_idx: int, start_step: int = 0) -> Iterator[FeedBatch]:
        """The feed of pass `pass_idx` alone (what the crop pipeline's external source gets), no DALI."""
        table = self.table(pass_idx)
        return self._feeder.batches(table, self._pass_blocks(table, start_step))

    # -- stage 4: crop pipeline ------------------------------------------------
    def _build_pipeline(self, source):
        """The DALI graph fed by `source` (benchmarks swap in a pass-through graph here)."""
        from fkd_dali.pipelines.crops import make_crop_pipeline

        return make_crop_pipeline(source, n_crops=self.m, size=self.size, interpolation=self.interpolation,
                                  mean=self.mean, std=self.std, batch_size=self.images_per_step,
                                  num_threads=self.threads, device_id=dali_device_id(self.device),
                                  half=self.half, seed=self.seed, jitter=bool(self.color_jitter))

    # -- the chain ---------------------------------------------------------------
    def pass_batches(self, pass_idx: int, start_step: int = 0) -> Iterator[CropBatch]:
        """The batches of pass `pass_idx`, from step `start_step` (earlier steps are not decoded)."""
        table = self.table(pass_idx)
        yield from self._run(table, self._pass_blocks(table, start_step))

    def table_batches(self, table: PassTable, images_per_batch: int | None = None) -> Iterator[CropBatch]:
        """Every row of an ad-hoc table (e.g. held-out slots), the last batch possibly smaller."""
        if table.m != self.m:
            raise ConfigError(f"table has {table.m} slots per image; this loader cuts m={self.m}")
        ipb = images_per_batch or self.images_per_step
        if ipb > self.images_per_step:
            raise ConfigError(f"batches of {ipb} images exceed this loader's {self.images_per_step}")
        n = len(table.images)
        yield from self._run(table, [slice(a, min(a + ipb, n)) for a in range(0, n, ipb)])

    def _run(self, table: PassTable, blocks: list[slice]) -> Iterator[CropBatch]:
        if not blocks:
            return
        fields = table.to_device(self.device)
        slots = torch.from_numpy(np.array(table.slots))
        jitter = self._jitter_factors(table) if self.color_jitter else None
        for crops, meta in self._runner.epoch(self._feeder.batches(table, blocks, jitter)):
            yield self._assemble(crops, meta, fields, slots)

    def _jitter_factors(self, table: PassTable) -> np.ndarray:
        """(rows, m, 3) colour-jitter factors of the table's crops, a pure function of (seed, pass, image, slot)."""
        from fkd_dali.crops.jitter import jitter_factors

        return jitter_factors(self.color_jitter, self.seed, table.pass_idx, table.images, table.slots)

    def _assemble(self, crops: torch.Tensor, meta: torch.Tensor, fields: DeviceFields,
                  slots: torch.Tensor) -> CropBatch:
        b = crops.shape[0]
        images = crops.reshape(b * self.m, *crops.shape[2:])
        if images.device != self.device:
            images = images.to(self.device, non_blocking=True)
        ids = meta[:, 0].to(torch.int64).cpu()
        crop_meta = torch.stack([ids.repeat_interleave(self.m), slots.repeat(b)], dim=1)
        return CropBatch(images, crop_meta, fields.gather(ids.to(self.device, non_blocking=True)))

    def close(self) -> None:
        self.source.close()
        self._feeder.close()
        self._runner.close()

"""Validation pipeline: decode, resize the shorter side to size / crop_pct, centre crop, normalize.

timm's eval transform (`Resize(floor(size / crop_pct))` + `CenterCrop(size)`), in DALI.
Images come from an external source over a dataset index (one shard per rank, no
padding, so every image is counted once); the meta row (image id, class id) rides
along. `ImageSource` and `EpochRunner` are shared with the vanilla pipeline.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

from fkd_dali.index import DatasetIndex
from pipelines.fragments import decode, interp_type
from pipelines.iterators import BatchSource, CropIterator, read_encoded


class ImageFeed(NamedTuple):
    """One batch for an `ImageSource`: encoded files and an int64 meta row per image."""

    encoded: list[np.ndarray]
    meta: list[np.ndarray]
    paths: list[str]


class ImageSource(BatchSource):
    """External source (batch mode) over the `ImageFeed`s of the current epoch."""

    FIELDS = ("encoded", "meta")


def image_feed(index: DatasetIndex, ids: Sequence[int], batch_size: int) -> Iterator[ImageFeed]:
    """Batches of (bytes, [image id, class id]) for `ids`, in order; the last may be smaller."""
    ids = np.asarray(ids, dtype=np.int64)
    for a in range(0, len(ids), batch_size):
        chunk = ids[a:a + batch_size]
        paths = [index.abspath(int(i)) for i in chunk]
        yield ImageFeed([read_encoded(p) for p in paths],
                        [np.array([i, index.classes[i]], np.int64) for i in chunk], paths)


class EpochRunner:
    """Runs one DALI epoch per call over a feed; rebuilds the pipeline if an epoch was abandoned.

    DALI iterators cannot be reset mid-epoch (batches already prefetched would leak into
    the next epoch), so a consumer that stops early marks the pipeline for rebuilding.
    """

    def __init__(self, build: Callable[[ImageSource], Pipeline]) -> None:
        self._build = build
        self._iter = None
        self._dirty = False

    def epoch(self, feed: Iterable[ImageFeed]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._iter is None or self._dirty:
            source = ImageSource()
            self._iter = CropIterator(self._build(source), source)
        self._dirty = True
        yield from self._iter.epoch(feed)
        self._dirty = False


@pipeline_def
def _validation_graph(source, size: int, resize_size: int, interpolation: str, mean: Sequence[float],
                      std: Sequence[float], gpu: bool, half: bool):
    encoded, meta = fn.external_source(source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT64])
    image = decode(encoded, gpu)
    image = fn.resize(image, resize_shorter=resize_size, interp_type=interp_type(interpolation), antialias=True)
    image = fn.crop_mirror_normalize(image, crop=(size, size), crop_pos_x=0.5, crop_pos_y=0.5,
                                     mean=[255.0 * v for v in mean], std=[255.0 * v for v in std],
                                     dtype=types.FLOAT16 if half else types.FLOAT, output_layout="CHW")
    return image, meta


def resize_size(size: int, crop_pct: float) -> int:
    """The shorter side before the centre crop, as timm computes it: floor(size / crop_pct)."""
    return int(math.floor(size / crop_pct))


def make_validation_pipeline(source, size: int, crop_pct: float, interpolation: str, mean: Sequence[float],
                             std: Sequence[float], batch_size: int, num_threads: int, device_id: int | None,
                             half: bool | None = None) -> Pipeline:
    """Build the validation pipeline (outputs: images (B, 3, size, size), meta (B, 2))."""
    gpu = device_id is not None
    return _validation_graph(source, size, resize_size(size, crop_pct), interpolation, tuple(mean), tuple(std),
                             gpu, gpu if half is None else half, batch_size=batch_size, num_threads=num_threads,
                             device_id=device_id, prefetch_queue_depth=2, exec_dynamic=True)


class ValidationLoader:
    """This rank's shard of a validation folder (images rank, rank + world, ...), as device tensors.

    Iterating yields `(images, classes, image_ids)`: images on `device`, folder class ids
    (int64) on `device`, image ids on the CPU.
    """

    def __init__(self, index: DatasetIndex, size: int, crop_pct: float, interpolation: str,
                 mean: Sequence[float], std: Sequence[float], batch_size: int = 64, threads: int = 2,
                 device: torch.device | str = "cpu", rank: int = 0, world: int = 1) -> None:
        self.index = index
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.ids = np.arange(rank, len(index), world, dtype=np.int64)
        device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        self._runner = EpochRunner(lambda src: make_validation_pipeline(
            src, size, crop_pct, interpolation, mean, std, batch_size, threads, device_id))

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if len(self.ids) == 0:
            return
        for images, meta in self._runner.epoch(image_feed(self.index, self.ids, self.batch_size)):
            meta = meta.to(torch.int64).cpu()
            yield (images.to(self.device, non_blocking=True), meta[:, 1].to(self.device, non_blocking=True),
                   meta[:, 0])

"""The validation loader: one rank's shard of a labelled folder through the validation pipeline."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from fkd_dali.data.index import DatasetIndex
from fkd_dali.dist import dali_device_id
from fkd_dali.loaders.feed import EpochRunner, image_feed
from fkd_dali.pipelines.validation import make_validation_pipeline


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
        device_id = dali_device_id(self.device)
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

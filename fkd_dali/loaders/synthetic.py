"""Synthetic batches for measuring the training step alone (`fkd-dali train --synthetic`)."""
from __future__ import annotations

from typing import Iterator

import torch

from fkd_dali.loaders.batch import CropBatch


class SyntheticLoader:
    """Random tensors made once on the device, replayed every step: no file, decode or label cost.

    For measuring the training step alone (`fkd-dali train --synthetic`): the batch has the
    same image shape and dtype and the same fields (names, shapes, dtypes) as one batch of
    the real loader it stands in for (`like`), so the step's target function and
    calibration run unchanged; `steps_per_pass` matches the real loader's.
    """

    def __init__(self, like: CropBatch, steps_per_pass: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.device = like.images.device
        self.steps_per_pass = steps_per_pass
        images = torch.randn(like.images.shape, generator=gen).to(self.device, like.images.dtype)
        self._batch = CropBatch(images, like.meta.clone(), {k: v.clone() for k, v in like.fields.items()})

    def pass_batches(self, pass_idx: int, start_step: int = 0) -> Iterator[CropBatch]:
        for _ in range(start_step, self.steps_per_pass):
            yield self._batch

    def close(self) -> None:
        pass

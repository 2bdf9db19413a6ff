"""Synthetic batches for measuring the training step alone (`fkd-dali train --synthetic`)."""
from __future__ import annotations

from typing import Iterator

import torch

from fkd_dali.loaders.replay import ReplayBatch


class SyntheticLoader:
    """Random tensors made once on the device, replayed every step: no file, decode or label cost.

    For measuring the training step alone (`fkd-dali train --synthetic`); batches have the
    same shapes and dtypes as the real loader's, and `steps_per_pass` matches it.
    """

    def __init__(self, batch_size: int, size: int, steps_per_pass: int, num_classes: int, k: int | None,
                 device: torch.device | str, half: bool = False, seed: int = 0, full: bool = False) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.device = torch.device(device)
        self.steps_per_pass = steps_per_pass
        self.batch_size = batch_size
        dtype = torch.float16 if half else torch.float32
        images = torch.randn(batch_size, 3, size, size, generator=gen).to(self.device, dtype)
        if k is None:  # hard labels
            index = torch.randint(0, num_classes, (batch_size,), generator=gen).to(self.device)
            prob = None
        else:
            index = torch.stack([torch.randperm(num_classes, generator=gen)[:k] for _ in range(batch_size)])
            prob = torch.softmax(torch.randn(batch_size, k, generator=gen), dim=1)
            index, prob = index.to(self.device), prob.to(self.device)
        meta = torch.full((batch_size, 2), -1, dtype=torch.int64)
        dense = torch.softmax(torch.randn(batch_size, num_classes, generator=gen), 1).to(self.device) if full else None
        self._batch = ReplayBatch(images, index, prob, meta, dense)

    def pass_batches(self, pass_idx: int, start_step: int = 0) -> Iterator[ReplayBatch]:
        for _ in range(start_step, self.steps_per_pass):
            yield self._batch

    def close(self) -> None:
        pass

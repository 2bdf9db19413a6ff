"""The records batch loaders yield: crops with their declared fields (`CropBatch`), and crops with targets (`FkdBatch`).

Every loader of a training step (replay, fresh crops, vanilla, synthetic) yields
`CropBatch`es and has the `BatchLoader` interface; `fkd_dali.loaders.fkd_loader.FkdLoader`
turns them into `FkdBatch`es with one target function, whatever the mode.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Protocol

import torch


@dataclass(frozen=True)
class CropBatch:
    """One step of one rank: crops of one image adjacent, in slot order.

    images: (B, 3, S, S) float (float16 on a GPU) on the device, B = images per step x m.
    meta: (B, 2) int64 CPU tensor, per crop (dataset image id, store slot; -1 for vanilla).
    fields: per-crop values on the device, by name: those the run declared (see
        `fkd_dali.loaders.pass_table`: "index", "prob", "dense", "gt_prob", "gt_class",
        "box", "flip"), or "folder_class" (B,) int64 for vanilla batches.
    """

    images: torch.Tensor
    meta: torch.Tensor
    fields: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def field(self, name: str) -> torch.Tensor:
        """The field `name`; a `KeyError` naming the fields this batch has otherwise."""
        try:
            return self.fields[name]
        except KeyError:
            raise KeyError(f"this batch has no field {name!r} (it has {sorted(self.fields)}): the run did not "
                           "declare it") from None


@dataclass(frozen=True)
class FkdBatch:
    """One step of one process with its targets; unpacks as ``images, target = batch``.

    images: (B, 3, S, S) on the loader's device (float16 on a GPU, float32 on the CPU),
        crops of one image adjacent (B = images per step x m).
    target: (B, C) float32 soft targets, rows summing to 1.
    meta: (B, 2) int64 CPU tensor: per crop (dataset image id, store slot).
    gt_prob: (B,) float32 teacher probability of each crop's ground-truth class, and
    gt_class: (B,) int64 that class (in the teacher's classes); only with `with_gt_prob`.
    """

    images: torch.Tensor
    target: torch.Tensor
    meta: torch.Tensor
    gt_prob: torch.Tensor | None = None
    gt_class: torch.Tensor | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.images, self.target))


class BatchLoader(Protocol):
    """What every loader of training crops offers: passes of equal steps on every rank, resumable at any step."""

    device: torch.device
    #: global steps in one pass on this rank (the same on every rank)
    steps_per_pass: int

    def pass_batches(self, pass_idx: int, start_step: int = 0) -> Iterator[CropBatch]:
        """The batches of pass `pass_idx` from step `start_step` (earlier steps are not decoded)."""
        ...

    def close(self) -> None: ...

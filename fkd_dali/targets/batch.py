"""Dense training targets of a batch, on the training device: what the loss and the batch mixer take.

Every training mode gives (B, C) float32 rows that sum to 1, so CutMix/Mixup and the
soft cross-entropy treat them alike: the store's top-K labels recovered as `--recovery`
says (FKD), the softmax at `--temperature` of a "logits" store's raw outputs (self-
supervised teachers), one-hot folder classes (vanilla), or the teacher's output on the
batch's crops recovered the same way (online KD, `fkd_dali.train.online`).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from fkd_dali.targets.recovery import recover_labels, softmax_targets
from fkd_dali.loaders.replay import ReplayBatch

#: batch -> (B, C) float32 targets on the batch's device
TargetFn = Callable[[ReplayBatch], torch.Tensor]


def stored_targets(num_classes: int, kind: str, k: int | None, smoothing: float) -> TargetFn:
    """Targets recovered from the stored top-K (or dense) labels the replay loader gathered."""
    def targets(batch: ReplayBatch) -> torch.Tensor:
        return recover_labels(batch.index, batch.prob, num_classes, kind, k, smoothing,  # type: ignore[arg-type]
                              batch.full)

    return targets


def logit_targets(temperature: float) -> TargetFn:
    """softmax(stored logits / T) of a "logits" store (self-supervised teacher), gathered as `batch.full`."""
    def targets(batch: ReplayBatch) -> torch.Tensor:
        return softmax_targets(batch.full, temperature)  # type: ignore[arg-type]

    return targets


def folder_targets(num_classes: int) -> TargetFn:
    """One-hot rows of the folder classes (vanilla training: `batch.index` holds class ids)."""
    def targets(batch: ReplayBatch) -> torch.Tensor:
        return F.one_hot(batch.index, num_classes).to(torch.float32)  # type: ignore[arg-type]

    return targets

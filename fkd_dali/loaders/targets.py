"""Dense training targets of a batch, on the training device: what the loss and the batch mixer take.

Every training mode gives (B, C) float32 rows that sum to 1, so CutMix/Mixup and the
soft cross-entropy treat them alike. A target function is the one thing a mode adds to
its batch loader (`FkdLoader`): the store's top-K labels recovered as `--recovery` says
(FKD replay), the softmax at `--temperature` of a "logits" store's raw outputs
(self-supervised teachers), one-hot folder classes (vanilla), the teacher's output on
the batch's crops (online KD, `fkd_dali.train.online`) or label maps pooled over each
crop's box (ReLabel, `fkd_dali.train.relabel`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from fkd_dali.errors import ConfigError
from fkd_dali.loaders.batch import CropBatch
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.schema import CropField, LabelKind
from fkd_dali.targets.recovery import Recovery, softmax_targets

#: batch -> (B, C) float32 targets on the batch's device
TargetFn = Callable[[CropBatch], torch.Tensor]


@dataclass(frozen=True)
class StoredTargets:
    """Targets recovered from the stored top-K (or dense) labels the replay loader gathered."""

    num_classes: int
    recovery: Recovery

    def __call__(self, batch: CropBatch) -> torch.Tensor:
        return self.recovery(batch.fields.get("index"), batch.fields.get("prob"), self.num_classes,
                             batch.fields.get("dense"))


@dataclass(frozen=True)
class LogitTargets:
    """softmax(stored outputs / T) of a "logits" store (self-supervised teacher)."""

    temperature: float

    def __call__(self, batch: CropBatch) -> torch.Tensor:
        return softmax_targets(batch.field("dense"), self.temperature)


@dataclass(frozen=True)
class FolderTargets:
    """One-hot rows of the folder classes (vanilla training)."""

    num_classes: int

    def __call__(self, batch: CropBatch) -> torch.Tensor:
        return F.one_hot(batch.field("folder_class"), self.num_classes).to(torch.float32)


@dataclass(frozen=True)
class StoreTargets:
    """What replaying a store trains on: the fields to gather, the target function, the loss temperature."""

    fields: frozenset[CropField]
    targets: TargetFn
    temperature: float  # of the soft cross-entropy: the store's, a --temperature, or T of a logits store


def store_targets(store: LabelStore, recovery: Recovery, temperature: float | None = None,
                  with_gt_prob: bool = False) -> StoreTargets:
    """The targets of replaying `store` with `recovery`, checked against what the store holds.

    `temperature`: for a "logits" store required (the targets are softmax(outputs / T) and
    the student is softened alike); for a store of probabilities it only softens the
    student in the loss (default: the store's own temperature).

    Raises:
        ConfigError: the recovery does not fit the store (k above its K, `full` without
            dense labels, anything but `full` or no temperature on a logits store).
        LabelStoreError: `with_gt_prob` on a store without labels/gt_prob.
    """
    extra = {CropField.GT_PROB} if with_gt_prob else set()
    label = store.spec.label
    if label.kind is LabelKind.LOGITS:
        _check_logits_recovery(store, recovery, temperature)
        fields = frozenset({CropField.DENSE, *extra})
        store.check_fields(fields)
        return StoreTargets(fields, LogitTargets(temperature), temperature)  # type: ignore[arg-type]
    recovery.check(stored_k=label.k)
    if recovery.kind == "full" and label.kind is not LabelKind.FULL:
        raise ConfigError(f"--recovery full needs a store with dense labels; {store.url} holds top-{label.k} only: "
                          "pick another --recovery or regenerate with --full")
    dense = {CropField.DENSE} if recovery.kind == "full" else set()
    fields = frozenset({CropField.TOPK, *dense, *extra})
    store.check_fields(fields)
    return StoreTargets(fields, StoredTargets(label.num_classes, recovery),
                        temperature if temperature is not None else label.temperature)  # type: ignore[arg-type]


def _check_logits_recovery(store: LabelStore, recovery: Recovery, temperature: float | None) -> None:
    """A "logits" store trains only on softmax(stored outputs / T): `--recovery full` with a `--temperature`."""
    width = store.spec.label.num_classes
    if recovery.kind != "full":
        raise ConfigError(f"--recovery {recovery.kind}: store {store.url} holds a self-supervised teacher's {width} "
                          "raw outputs per crop (kind logits), whose only target is their softmax: use --recovery "
                          "full with --temperature T")
    if temperature is None:
        raise ConfigError(f"store {store.url} holds raw teacher outputs (kind logits) with no temperature applied: "
                          "choose one with --temperature T (create_loader: temperature=T); the targets are "
                          "softmax(outputs / T)")

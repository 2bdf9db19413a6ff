"""FerKD calibration (`--calibrate ferkd`): each crop's recovered target, judged by how much of
its image's ground-truth class the teacher saw in it, on the training device.

FerKD (Shen, "FerKD: Surgical Label Adaptation for Efficient Distillation", ICCV 2023,
arXiv 2312.17473) observes that RandomResizedCrop turns an image into easy positives,
hard positives and hard negatives (crops that show only context or background), and
that FKD trusts the teacher's soft label equally on all of them; it calibrates the
less-confident crops "to be the context using softened hard groundtruth labels". The
store holds, per crop, the teacher's probability of the image's ground-truth class
(`labels/gt_prob`; `FkdBatch.gt_prob` and `.gt_class`), and this module sorts the
crops of a batch into three bands by two thresholds, T_e = `--ferkd-easy` and
T_n = `--ferkd-negative` (T_n <= T_e):

    band           rule                  target
    easy positive  gt_prob >= T_e        the recovered soft label
    hard positive  T_n <= gt_prob < T_e  the recovered soft label
    hard negative  gt_prob < T_n         as `--ferkd-negatives` says:
        soft-gt  the softened ground truth (1 - eps) * onehot(gt) + eps / C, eps = `--ferkd-smoothing`
        drop     the recovered label with loss weight 0 (the crop teaches nothing)
        weight   the recovered label with loss weight `--ferkd-negative-weight`

Worked rows (C = 4, gt class 2, T_e = 0.5, T_n = 0.1, eps = 0.1): a crop with gt_prob
0.7 is easy and keeps its target; one with 0.3 is a hard positive and keeps it too; one
with 0.05 is a hard negative and gets [0.025, 0.025, 0.925, 0.025] (soft-gt), or its own
target with weight 0 (drop) or 0.5 (weight).

The thresholds are ours: FerKD published neither code nor thresholds, and these
defaults are NOT validated against the paper's accuracy. The reasoning behind them:
T_e = 0.5 is the smallest probability that makes the ground truth certainly the
teacher's top-1 (no other class can hold as much), so "easy" means "the teacher agrees
with the folder label, clearly"; T_n = 0.1 marks a crop where the teacher gives the
image's class less than a tenth of its belief (still 100x the uniform 1/1000 on
ImageNet), i.e. it clearly sees something else in the crop: FerKD's low-confidence
crops that show context. eps = 0.1 is the usual label smoothing (Inception-v3, timm's
default) for "softened hard labels"; the down-weighting default 0.5 halves such a
crop's loss. With soft-gt the calibration replaces targets only, so the loss stays the
plain unweighted one; drop and weight return per-sample loss weights, which the batch
mixer carries (`fkd_dali.train.mix.mix_weighted_targets`) and `soft_cross_entropy` applies.

Order: calibration takes each crop's recovered target before CutMix/Mixup/SelfMix, so a
mixed crop's target mixes calibrated targets. Band counts are (3,) int64 tensors built
with comparisons only (no `bincount`/`one_hot`, which read the data back to the host):
the loop sums them on the device and all-reduces once per pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fkd_dali.config import TrainConfig
from fkd_dali.errors import ConfigError, LabelStoreError
from fkd_dali.loaders.batch import FkdBatch
from fkd_dali.registry import Registry
from fkd_dali.targets.recovery import recover_labels

BANDS = ("easy", "hard", "negative")  # the band ids 0, 1, 2, in this order
NEGATIVE = BANDS.index("negative")


@dataclass(frozen=True)
class FerKDSpec:
    """The calibration's options (the `--ferkd-*` flags; see the module docstring for their meaning)."""

    easy: float  # T_e
    negative: float  # T_n <= T_e
    negatives: str  # one of FERKD_NEGATIVE_MODES
    negative_weight: float  # loss weight of hard negatives in mode "weight"
    smoothing: float  # eps of the soft ground truth in mode "soft-gt"

    def __post_init__(self) -> None:
        if not 0.0 <= self.negative <= self.easy <= 1.0:
            raise ConfigError(f"FerKD thresholds need 0 <= --ferkd-negative ({self.negative}) <= --ferkd-easy "
                              f"({self.easy}) <= 1")
        _NEGATIVE_MODES.get(self.negatives)  # an unknown mode fails here, with the valid ones

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> FerKDSpec:
        return cls(cfg.ferkd_easy, cfg.ferkd_negative, cfg.ferkd_negatives, cfg.ferkd_negative_weight,
                   cfg.ferkd_smoothing)


@dataclass(frozen=True)
class Calibrated:
    """A batch's calibrated targets.

    targets: (B, C) float32 rows summing to 1.
    weight: (B,) float32 loss weights, or None when every crop has weight 1 (mode soft-gt).
    counts: (3,) int64 crops per band (easy, hard, negative), on the targets' device.
    """

    targets: torch.Tensor
    weight: torch.Tensor | None
    counts: torch.Tensor


def crop_bands(gt_prob: torch.Tensor, easy: float, negative: float) -> torch.Tensor:
    """(B,) int64 band of each crop: 0 easy (p >= easy), 1 hard positive, 2 hard negative (p < negative).

    With negative <= easy, ``p < negative`` implies ``p < easy``, so the band is the
    number of thresholds the probability falls below.
    """
    return (gt_prob < easy).to(torch.int64) + (gt_prob < negative).to(torch.int64)


def band_counts(bands: torch.Tensor) -> torch.Tensor:
    """(3,) int64 crops per band, without a host synchronisation."""
    ids = torch.arange(len(BANDS), device=bands.device)
    return (bands.unsqueeze(1) == ids).sum(dim=0)


def soft_ground_truth(gt_class: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(B, C) ``(1 - eps) * onehot(gt) + eps / C``: the `smoothing` recovery of a top-1 "label" of the ground truth."""
    index = gt_class.to(torch.int64).unsqueeze(1)
    return recover_labels(index, torch.ones(index.shape, device=index.device), num_classes, "smoothing",
                          smoothing=smoothing)


# -- what hard negatives get: (targets, negative mask, gt_class, spec) -> (targets, weight | None) ----
_NegativeRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, FerKDSpec],
                         tuple[torch.Tensor, Optional[torch.Tensor]]]
_NEGATIVE_MODES: Registry[_NegativeRule] = Registry("--ferkd-negatives mode")


@_NEGATIVE_MODES.register("soft-gt")
def _soft_gt(targets: torch.Tensor, negative: torch.Tensor, gt_class: torch.Tensor,
             spec: FerKDSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FerKD's calibration: hard negatives learn the softened ground truth ("the context of its class")."""
    soft = soft_ground_truth(gt_class, targets.shape[1], spec.smoothing)
    return torch.where(negative.unsqueeze(1), soft, targets), None


def _weighted(targets: torch.Tensor, negative: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    ones = torch.ones(negative.shape, dtype=torch.float32, device=negative.device)
    return targets, torch.where(negative, ones * weight, ones)


@_NEGATIVE_MODES.register("drop")
def _drop(targets: torch.Tensor, negative: torch.Tensor, gt_class: torch.Tensor,
          spec: FerKDSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hard negatives keep their label with loss weight 0: they teach nothing (the mean still divides by B)."""
    return _weighted(targets, negative, 0.0)


@_NEGATIVE_MODES.register("weight")
def _down_weight(targets: torch.Tensor, negative: torch.Tensor, gt_class: torch.Tensor,
                 spec: FerKDSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hard negatives keep their label with loss weight `spec.negative_weight`."""
    return _weighted(targets, negative, spec.negative_weight)


def calibrate_ferkd(targets: torch.Tensor, gt_prob: torch.Tensor, gt_class: torch.Tensor,
                    spec: FerKDSpec) -> Calibrated:
    """Calibrate (B, C) recovered targets by each crop's (B,) teacher probability of its (B,) ground-truth class.

    Vectorised, on the targets' device; see the module docstring for the bands and the
    worked rows. The inputs are not modified.

    Raises:
        LabelStoreError: `gt_prob` or `gt_class` is not one value per target row.
    """
    rows = targets.shape[0]
    if tuple(gt_prob.shape) != (rows,) or tuple(gt_class.shape) != (rows,):
        raise LabelStoreError(f"FerKD calibration needs one ground-truth probability and class per crop: "
                              f"{rows} targets, gt_prob {tuple(gt_prob.shape)}, gt_class {tuple(gt_class.shape)}")
    bands = crop_bands(gt_prob.to(targets.device), spec.easy, spec.negative)
    calibrated, weight = _NEGATIVE_MODES.get(spec.negatives)(targets, bands == NEGATIVE,
                                                             gt_class.to(targets.device), spec)
    return Calibrated(calibrated, weight, band_counts(bands))


class FerKDCalibration:
    """`--calibrate ferkd` on an `FkdBatch`: `calibrate_ferkd` with the batch's gt_prob and gt_class."""

    def __init__(self, spec: FerKDSpec) -> None:
        self.spec = spec

    def __call__(self, batch: FkdBatch, targets: torch.Tensor) -> Calibrated:
        if batch.gt_prob is None or batch.gt_class is None:
            raise LabelStoreError(
                "--calibrate ferkd needs the teacher's per-crop ground-truth probabilities (labels/gt_prob), and "
                "this run's loader delivered none: add them to the store with `fkd-dali labels add-gt-prob STORE "
                "--data ROOT` (or generate it with --gt-prob), or drop --calibrate")
        return calibrate_ferkd(targets, batch.gt_prob, batch.gt_class, self.spec)


def make_calibration(cfg: TrainConfig) -> FerKDCalibration | None:
    """The run's calibration (`--calibrate`, checked by `TrainConfig`: "ferkd" is the only one), or None."""
    if cfg.calibrate is None:
        return None
    return FerKDCalibration(FerKDSpec.from_config(cfg))


def describe_bands(counts: list[int]) -> str:
    """One log line: crops per band with percentages, e.g. ``easy 6 (60.0%), hard 3 (30.0%), negative 1 (10.0%)``."""
    total = sum(counts) or 1
    return ", ".join(f"{name} {n} ({100.0 * n / total:.1f}%)" for name, n in zip(BANDS, counts))

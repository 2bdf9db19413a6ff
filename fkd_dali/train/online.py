"""Online KD (`fkd-dali train --labels online --teacher NAME`): the teacher labels every training crop in the loop.

The "oracle" KD that FKD replaces, kept as a baseline to measure FKD against: same
student, same crops machinery (`fkd_dali.loaders.sources.FreshCrops` cut by the replay loader), same label
recovery and loss; only the labels come from the teacher now instead of the store.
The teacher's output is treated exactly like a stored label: softmax at the loss
temperature, top-K (K = `--recovery-k`, else label generation's default K), then
`--recovery` (``full`` keeps the whole softmax).

Pixels: the crop is cut once, at the student's resolution and normalization; the
teacher gets a copy on the device, un-normalized, resized to its own input size
(its pretrained interpolation, antialiased) and normalized with its own mean/std.
Consequence: a teacher with a larger input than the student (224 px vs a 112 px
student) sees an upsampled copy holding only the student's detail, where label
generation cuts each crop at the teacher's resolution from the decoded image; at
equal sizes the two agree up to rounding. Cutting twice in the DALI graph would avoid
that at the cost of a second resize per crop and a graph unlike FKD's replay; the
baseline keeps FKD's graph.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from fkd_dali.config import LabelGenConfig, TrainConfig, check_recovery, field_default
from fkd_dali.errors import ConfigError, TeacherError
from fkd_dali.labels.teacher import Teacher, TeacherForward, load_teacher, resolve_teacher_name
from fkd_dali.loaders.batch import CropBatch
from fkd_dali.targets.recovery import recover_labels

_TORCH_MODES = {"bicubic": "bicubic", "cubic": "bicubic", "bilinear": "bilinear", "linear": "bilinear",
                "nearest": "nearest"}


def online_top_k(cfg: TrainConfig, num_classes: int) -> int:
    """K of the teacher's top-K labels in online KD: `--recovery-k`, else label generation's default
    (at most the teacher's class count); an explicit K above the class count is refused."""
    if cfg.recovery_k is not None and cfg.recovery_k > num_classes:
        raise ConfigError(f"--recovery-k {cfg.recovery_k} exceeds the teacher's {num_classes} classes; pass k <= "
                          f"{num_classes}")
    return cfg.recovery_k or min(int(field_default(LabelGenConfig, "top_k")), num_classes)


class OnlineTeacher:
    """Targets of a batch from the teacher's output on its crops (a `TargetFn`).

    Args:
        teacher: the loaded teacher (moved to `device` here, eval mode).
        student: the student's pixel contract (`model_data_config`): size, mean, std.
        device: the training device.
        amp_dtype: autocast dtype of the teacher's forward (None: float32).
        kind, k, smoothing: the label recovery (as `--recovery`, `--recovery-k`, `--smoothing`).
        temperature: softmax temperature of the teacher's output (the loss temperature).
    """

    def __init__(self, teacher: Teacher, student: dict[str, Any], device: torch.device,
                 amp_dtype: torch.dtype | None, kind: str, k: int, smoothing: float, temperature: float) -> None:
        check_recovery(kind, k, stored_k=None, smoothing=smoothing)
        self.forward = TeacherForward(teacher, device, amp_dtype)
        self.device = device
        self.kind, self.k, self.smoothing, self.temperature = kind, k, smoothing, temperature
        self.size = (int(teacher.input_size[1]), int(teacher.input_size[2]))  # (H, W)
        self.mode = _TORCH_MODES.get(teacher.interpolation, "bicubic")
        self._student_mean, self._student_std = _channel_stats(student["mean"], student["std"], device)
        self._teacher_mean, self._teacher_std = _channel_stats(teacher.mean, teacher.std, device)
        self._resize = (int(student["size"]),) * 2 != self.size

    def teacher_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Student-normalized crops -> the teacher's size and normalization (float32, channels_last)."""
        x = images.float() * self._student_std + self._student_mean  # pixel values in [0, 1]
        if self._resize:
            antialias = self.mode != "nearest"
            x = F.interpolate(x, size=self.size, mode=self.mode, antialias=antialias,
                              align_corners=False if self.mode != "nearest" else None)
        x = (x - self._teacher_mean) / self._teacher_std
        return x.contiguous(memory_format=torch.channels_last)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C) float32 softmax of the teacher at `temperature` on the crops."""
        return self.forward.probabilities(self.teacher_pixels(images), self.temperature)

    def __call__(self, batch: CropBatch) -> torch.Tensor:
        probs = self.probabilities(batch.images)
        if self.kind == "full":
            return probs
        top_p, top_i = probs.topk(self.k, dim=1)
        return recover_labels(top_i, top_p, probs.shape[1], self.kind, self.k, self.smoothing)


def _channel_stats(mean: Sequence[float], std: Sequence[float],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std as (1, 3, 1, 1) tensors that broadcast over NCHW batches."""
    return tuple(torch.tensor([float(x) for x in v], device=device).view(1, 3, 1, 1)  # type: ignore[return-value]
                 for v in (mean, std))


def load_online_teacher(cfg: TrainConfig) -> Teacher:
    """The `--teacher` of an online-KD run, with its local weights (`--teacher-checkpoint`), on the CPU.

    Raises:
        TeacherError: an unknown name, or a plain timm name without `--teacher-checkpoint`.
    """
    _, named = resolve_teacher_name(cfg.teacher)  # type: ignore[arg-type]
    if named is None and cfg.teacher_checkpoint is None:
        raise TeacherError(f"--teacher {cfg.teacher} needs --teacher-checkpoint FILE (fkd-dali never downloads "
                           "weights), or use a named teacher such as efficientnet_lite0")
    return load_teacher(cfg.teacher, cfg.teacher_checkpoint)  # type: ignore[arg-type]

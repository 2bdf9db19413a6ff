"""Helpers shared by the command modules: defaults from config dataclasses, small parsers."""
from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from fkd_dali.errors import ConfigError


def default(config_cls: type, name: str) -> Any:
    """The default of a config dataclass field: the CLI never states its own defaults."""
    for f in dataclasses.fields(config_cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
            return None
    raise KeyError(name)


def float_pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"expected two comma-separated numbers like 0.08,1.0; got {text!r}") from None
    return lo, hi


def float_triple(text: str) -> tuple[float, float, float]:
    try:
        a, b, c = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"expected three comma-separated numbers like 0.485,0.456,0.406; got {text!r}") from None
    return a, b, c


def print_json_line(obj: Any) -> None:
    """One JSON line in a single write: under torchrun every rank shares stdout, and
    print() may write the text and its newline separately (PYTHONUNBUFFERED), letting
    another rank's line in between."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))

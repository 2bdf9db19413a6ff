"""`--config FILE`: a YAML file's values become a subcommand's defaults, each checked as its flag is.

Why one path: a file value that skipped the flag's type (an int option given 2.5 or a
list, a quoted 'no' for a switch) used to reach the config dataclass as the wrong type
and fail with a traceback, or worse, be taken (`progress: 'no'` turned progress on).
Here every value goes through the same argparse action as its flag (its `type`, its
`choices`, a switch takes only true/false); the config dataclass then runs the same range
checks for both. Keys are the flag names (`batch-size`, `--batch-size`, `no-progress`,
aliases such as timm's `model`), their field spelling (`batch_size`), and for a `--no-X`
switch also `X` with the opposite value (`progress: false`, as a run's config.yaml holds it).
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping

from fkd_dali.cli._common import float_pair, float_triple
from fkd_dali.config import check_choice, close_name_hint
from fkd_dali.errors import ConfigError

_COMMA_TYPES = (float_pair, float_triple)  # flags written "a,b[,c]": a file may give a list instead
_TYPE_WORDS = {int: "a whole number", float: "a number"}
_NOT_FROM_A_FILE = {"help", "config"}


def option_keys(sub: argparse.ArgumentParser) -> dict[str, tuple[argparse.Action, bool]]:
    """key -> (action, inverted) for every option of `sub` a file may set (inverted: `X` for `--no-X`)."""
    keys: dict[str, tuple[argparse.Action, bool]] = {}
    for action in sub._actions:
        if action.dest in _NOT_FROM_A_FILE or not action.option_strings:
            continue
        for opt in (o[2:] for o in action.option_strings if o.startswith("--")):
            for name in (opt, opt.replace("-", "_"), action.dest):
                keys.setdefault(name, (action, False))
    for name, (action, _) in list(keys.items()):
        if _is_switch(action) and name.startswith(("no-", "no_")):
            keys.setdefault(name[3:], (action, True))
    return keys


def file_defaults(sub: argparse.ArgumentParser, values: Mapping[str, Any], path: str) -> dict[str, Any]:
    """dest -> value for `sub.set_defaults`, from a config file's mapping; one ConfigError per bad entry."""
    keys = option_keys(sub)
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = key.lstrip("-")
        if name not in keys:
            raise ConfigError(f"--config {path}: unknown option {key!r}{close_name_hint(name, keys)}")
        action, inverted = keys[name]
        try:
            out[action.dest] = _checked(action, value, inverted)
        except ConfigError as e:
            raise ConfigError(f"--config {path}: {key}: {e}") from None
    return out


def _is_switch(action: argparse.Action) -> bool:
    return action.nargs == 0 and isinstance(action.const, bool)


def _flag(action: argparse.Action) -> str:
    return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])


def _checked(action: argparse.Action, value: Any, inverted: bool) -> Any:
    """`value` as the flag would give it, or ConfigError saying what the flag takes."""
    flag = _flag(action)
    if _is_switch(action):
        if not isinstance(value, bool):
            stands = f" (it stands for {flag})" if inverted else ""
            raise ConfigError(f"must be true or false{stands}, got {value!r}")
        return (not value) if inverted else value
    if value is None and action.default is None:
        return None  # "not set": the option's own default
    if isinstance(value, (list, tuple)) and action.type in _COMMA_TYPES \
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        value = ",".join(str(v) for v in value)
    if isinstance(value, (list, tuple, dict)) or value is None:
        what = "a list" if isinstance(value, (list, tuple)) else "a mapping" if isinstance(value, dict) else "null"
        raise ConfigError(f"{flag} takes one value, not {what} ({value!r})")
    if isinstance(value, bool) and action.type is not None:
        raise ConfigError(f"{flag} takes {_TYPE_WORDS.get(action.type, 'a value')}, got {value!r}")
    return _converted(action, flag, str(value))


def _converted(action: argparse.Action, flag: str, text: str) -> Any:
    """`text` through the flag's type and choices (what argparse does with a command-line value)."""
    try:
        result = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
        what = _TYPE_WORDS.get(action.type)  # type: ignore[arg-type]
        raise ConfigError(f"{flag} takes {what}, got {text}" if what else f"{flag}: {e}") from None
    if action.choices is not None:
        check_choice(action.dest, result, [str(c) for c in action.choices])
    return result

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


def config_from_args(config_cls: type, args: argparse.Namespace) -> Any:
    """`config_cls` built from the parsed flags of the same names, with `progress` = not `--no-progress`."""
    fields = {f: getattr(args, f) for f in config_cls.__dataclass_fields__ if f != "progress" and hasattr(args, f)}
    return config_cls(**fields, progress=not args.no_progress)


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


def json_object(text: str) -> dict[str, Any]:
    """`--storage-options '{"endpoint_url": "https://..."}'` -> a dict (a JSON object, nothing else)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"anon\": true}}', got {text!r}")
    return value


STORAGE_OPTIONS_HELP = ("JSON object of options for the file system of fsspec URLs (s3://..., gs://...), passed to "
                        "zarr/fsspec as storage_options, e.g. '{\"endpoint_url\": \"https://s3.example.org\"}'; "
                        "not written to the run's config.yaml")


def add_storage_options(p: argparse.ArgumentParser) -> None:
    """The `--storage-options JSON` flag of every command that opens or creates a store."""
    p.add_argument("--storage-options", type=json_object, default=None, metavar="JSON", help=STORAGE_OPTIONS_HELP)


def launcher_rank() -> int:
    """This process's rank as torchrun sets it (0 without torchrun): only rank 0 prints summaries."""
    import os

    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def print_json_line(obj: Any) -> None:
    """One JSON line in a single write: under torchrun every rank shares stdout, and
    print() may write the text and its newline separately (PYTHONUNBUFFERED), letting
    another rank's line in between."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


# -- early checks of the paths a command names ------------------------------------------
# Run by the handlers before they import torch, DALI or zarr, so that a mistyped path is
# answered in a fraction of a second with one line naming the flag. Only local paths are
# checked: a URL (`scheme://...`) is opened, and checked, by the library later.
def is_url(path: str) -> bool:
    return "://" in str(path)


def check_folder(flag: str, path: str | None, remedy: str) -> None:
    """`path` (the value of `flag`) is an existing, readable folder; else a one-line `ConfigError`."""
    if path is None or is_url(path):
        return
    import os

    from fkd_dali.errors import ConfigError

    if not os.path.exists(path):
        raise ConfigError(f"{flag} {path}: no such folder (the path does not exist); {remedy}")
    if not os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: is a file, not a folder; {remedy}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: the folder cannot be read (permission denied); {remedy}")


def check_file(flag: str, path: str | None, remedy: str) -> None:
    """`path` (the value of `flag`) is an existing, readable file; else a one-line `ConfigError`."""
    if path is None or is_url(path):
        return
    import os

    from fkd_dali.errors import ConfigError

    if not os.path.exists(path):
        raise ConfigError(f"{flag} {path}: no such file (the path does not exist); {remedy}")
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: is a folder, not a file; {remedy}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{flag} {path}: the file cannot be read (permission denied); {remedy}")


def check_store(flag: str, path: str | None) -> None:
    """A store to read: a local one must exist (whether it is a store is the library's check)."""
    if path is None or is_url(path):
        return
    import os

    from fkd_dali.errors import ConfigError

    if not os.path.exists(path):
        raise ConfigError(f"{flag} {path}: no such store (the path does not exist); give the store's path, or create "
                          "it with `fkd-dali labels generate`")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{flag} {path}: the store cannot be read (permission denied)")


def check_writable(flag: str, path: str | None, what: str = "folder") -> None:
    """`path` can be created or written (a folder, or with what="file" a file's folder), creating nothing."""
    if path is None or is_url(path):
        return
    import os

    from fkd_dali.atomic import writable_dir_problem
    from fkd_dali.errors import ConfigError

    folder = os.path.dirname(os.path.abspath(path)) if what == "file" else path
    problem = writable_dir_problem(folder)
    if problem is not None:
        raise ConfigError(f"{flag} {path}: cannot be written ({problem}); choose a {what} that can be written")


def check_store_out(flag: str, path: str | None) -> None:
    """A store to create or resume at `path`: refuse a file, a foreign folder or an unwritable place.

    A folder that already holds a store is left to the library: a complete store on a
    read-only file system has nothing to do, which is no error.
    """
    if path is None or is_url(path):
        return
    import os

    from fkd_dali.errors import ConfigError, LabelStoreError
    from fkd_dali.store.claim import check_out_location

    if os.path.isfile(os.path.join(path, "zarr.json")):
        return
    try:
        check_out_location(path)
    except LabelStoreError as e:
        raise ConfigError(str(e)) from None
    check_writable(flag, path)

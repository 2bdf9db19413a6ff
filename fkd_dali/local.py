"""What is on this machine: the local folder of a store URL, and whether a process still runs.

One answer each, so that every command treats `path`, `~/path` and `file://path` alike
(stores elsewhere are fsspec URLs such as `s3://bucket/labels.zarr`), and so that a
leftover of a killed process is recognised the same way wherever one is cleaned up.
"""
from __future__ import annotations

import os
from pathlib import Path


def local_path(url: str) -> Path | None:
    """The local path of `url` (`path`, `~/path` or `file://path`); None for a remote URL."""
    if "://" in url and not url.startswith("file://"):
        return None
    return Path(url.removeprefix("file://")).expanduser()


def process_running(pid: int) -> bool:
    """Whether process `pid` exists on this machine (someone else's counts: it may not be signalled)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

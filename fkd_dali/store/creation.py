"""Who is creating a store, and what stands at an `--out` path before a store is created there.

`create_store` writes the group with a `fkd_dali_creating` attribute naming its creator
(host, boot, process, start time) in the same write that creates the group, and
replaces it with the schema attributes in the last write. So a Zarr group with the
marker but without the schema attributes is either being created right now or was
left half-made by a creator that died (killed, full disk, crash); `creator_alive`
tells the two apart on the creator's own machine, where a dead process can be
proven. A group with neither attribute was not made by this fkd-dali at all.
"""
from __future__ import annotations

import datetime as _dt
import os
import socket
import time
from pathlib import Path
from typing import Any

from fkd_dali.errors import LabelStoreError

CREATING_KEY = "fkd_dali_creating"
CREATE_WAIT_S = 120.0  # how long a writer waits for another machine's writer to finish creating a store
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _boot_id() -> str:
    try:
        return Path(_BOOT_ID).read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (Linux), to tell a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in (...) may hold spaces


def creator_marker() -> dict[str, Any]:
    """The `fkd_dali_creating` attribute value for this process."""
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()), "started_unix": round(time.time(), 3),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def creator_alive(marker: dict[str, Any]) -> bool | None:
    """True/False when the creating process is provably running or gone; None on another machine."""
    if marker.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if boot and marker.get("boot_id") and marker["boot_id"] != boot:
        return False  # the machine rebooted since: the creator is gone
    pid = int(marker.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    started = marker.get("pid_start")
    return started is None or _process_start(pid) in (None, started)


def describe_creator(marker: dict[str, Any]) -> str:
    return f"process {marker.get('pid')} on {marker.get('host')}, started {marker.get('started')}"


def creator_age_s(marker: dict[str, Any]) -> float:
    return max(0.0, time.time() - float(marker.get("started_unix", 0.0)))


def clear_command(url: str) -> str:
    """The command that removes a store: `rm -r PATH` for a local one."""
    if "://" in url and not url.startswith("file://"):
        return f"delete {url} with your storage's tools"
    return f"`rm -r {url.removeprefix('file://')}`"


def check_out_location(url: str) -> None:
    """Refuse at once an `--out` that is a file or a non-empty folder holding no Zarr store.

    Zarr would refuse them too, but only with an error that reads like "already
    exists", which the resume logic would take for another writer's store. Remote
    URLs are left to zarr.
    """
    if "://" in url and not url.startswith("file://"):
        return
    path = Path(url.removeprefix("file://")).expanduser()
    if path.is_symlink() and not path.exists():
        raise LabelStoreError(f"--out {url} is a dangling symbolic link; remove it or choose another --out")
    if path.exists() and not path.is_dir():
        raise LabelStoreError(f"--out {url} is a file, not a store folder; choose another --out "
                              "(a new or empty folder) or remove the file")
    if path.is_dir() and not (path / "zarr.json").exists():
        try:
            entries = sorted(os.listdir(path))
        except OSError as e:
            raise LabelStoreError(f"--out {url} cannot be listed ({e.strerror or e}); choose another --out") from e
        if entries:
            raise LabelStoreError(f"--out {url} is a folder with other files in it ({len(entries)} entries, e.g. "
                                  f"{entries[0]!r}) but no store; choose a new or empty folder for the store")

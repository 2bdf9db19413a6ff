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
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from fkd_dali.errors import LabelStoreError
from fkd_dali.local import local_path, process_running

CREATING_KEY = "fkd_dali_creating"
CLAIM_SUFFIX = ".fkd_dali_creating.json"  # `.<store name>` + this, beside a local store while it is created
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
    if pid <= 0 or not process_running(pid):
        return False
    started = marker.get("pid_start")
    return started is None or _process_start(pid) in (None, started)


def describe_creator(marker: dict[str, Any]) -> str:
    return f"process {marker.get('pid')} on {marker.get('host')}, started {marker.get('started')}"


def creator_age_s(marker: dict[str, Any]) -> float:
    return max(0.0, time.time() - float(marker.get("started_unix", 0.0)))


def clear_command(url: str) -> str:
    """The command that removes a store (and the claim file a killed creator left beside it)."""
    if local_path(url) is None:
        return f"delete {url} with your storage's tools"
    claim = claim_path(url)
    extra = f" {claim}" if claim is not None and claim.exists() else ""
    return f"`rm -r {url.removeprefix('file://')}{extra}`"


def claim_path(url: str) -> Path | None:
    """The claim file of a local store: hidden, beside the store folder (zarr wants the folder empty)."""
    path = local_path(url)
    return None if path is None else path.parent / f".{path.name}{CLAIM_SUFFIX}"


def claim_creation(url: str, marker: dict[str, Any]) -> bool:
    """Atomically claim the creation of the local store at `url`; False when another writer holds it.

    Writers started together (torchrun, --shard) all find no store; zarr's "w-" check
    and its write of the group are separate steps, so two writers can both pass it and
    the later group write wipes the first one's attributes. Linking the claim file
    (holding this writer's marker) into place is exclusive: exactly one writer creates
    the store. Remote stores have no such primitive: there the "w-" check is all there is.
    """
    claim = claim_path(url)
    if claim is None:
        return True
    claim.parent.mkdir(parents=True, exist_ok=True)
    # the marker is written first and then linked into place, so no writer ever reads a half-written claim
    tmp = claim.with_name(f"{claim.name}.{os.getpid()}.{threading.get_ident()}.partial")
    tmp.write_text(json.dumps(marker))
    try:
        for _ in range(2):
            try:
                os.link(tmp, claim)  # fails if the claim exists: the exclusive step
                return True
            except FileExistsError:
                stale = claim_marker(url)
                if stale is None or creator_alive(stale) is not False:
                    return False
                claim.unlink(missing_ok=True)  # its creator died: take the claim over (once)
        return False
    finally:
        tmp.unlink(missing_ok=True)


def release_claim(url: str) -> None:
    claim = claim_path(url)
    if claim is not None:
        claim.unlink(missing_ok=True)


def claim_marker(url: str) -> dict[str, Any] | None:
    """The marker in a local store's claim file (its creator may have died before writing the group)."""
    claim = claim_path(url)
    if claim is None:
        return None
    try:
        marker = json.loads(claim.read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def check_out_location(url: str) -> None:
    """Refuse at once an `--out` that is a file or a non-empty folder holding no Zarr store.

    Zarr would refuse them too, but only with an error that reads like "already
    exists", which the resume logic would take for another writer's store. Remote
    URLs are left to zarr.
    """
    path = local_path(url)
    if path is None:
        return
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
        # zarr writes zarr.json through a temporary `*.partial` file: another writer
        # creating the store right now, not a foreign folder
        entries = [e for e in entries if not e.endswith(".partial")]
        if entries:
            raise LabelStoreError(f"--out {url} is a folder with other files in it ({len(entries)} entries, e.g. "
                                  f"{entries[0]!r}) but no store; choose a new or empty folder for the store")

"""Atomic file writes: a temp file in the destination folder, then `os.replace`.

A reader (or a rerun after a crash) sees the old file or the whole new one, never part
of one; a failed write leaves no temp file behind, and the temp files of a writer that
was killed (SIGKILL leaves them) are removed by the next write of the same file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from fkd_dali.local import process_running

_TMP_TAG = ".tmp"
_TMP_SUFFIX = ".partial"


def ensure_writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Create folder `path` (and its parents) if needed and make sure files can be written in it.

    Raises:
        OSError: `path` is a file, cannot be created or is not writable; the message
            names `what` (e.g. "--output runs/r50") and the reason.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OSError(f"{what} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test{_TMP_TAG}{os.getpid()}{_TMP_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(e.errno, f"{what} cannot be written ({e.strerror or e})") from e
    return folder


def writable_dir_problem(path: str | os.PathLike[str]) -> str | None:
    """Why folder `path` could not be created or written, without creating it; None when it could.

    A run that fails before it writes anything must not leave an empty folder behind,
    so the check looks at `path` if it exists and otherwise at its nearest existing
    ancestor (where `mkdir -p` would start).
    """
    folder = Path(path).expanduser().absolute()
    if folder.exists():
        if not folder.is_dir():
            return "it is a file, not a folder"
        return None if os.access(folder, os.W_OK | os.X_OK) else "permission denied"
    parent = folder.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} cannot be written (permission denied)"
    return None


def save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """`torch.save(obj)` to `path` atomically; missing parent folders are created.

    Raises:
        OSError: the file cannot be written (full disk, read-only folder, a file where a
            folder should be); the message names the file. torch reports a failed write
            as a RuntimeError from its zip writer, which is turned into this too. The old
            file at `path`, if any, is untouched.
    """
    import torch  # here, not at the top: the CLI checks folders with this module before torch is loaded

    _write_atomic(path, lambda tmp: torch.save(obj, tmp))


def save_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, as `save_torch` does."""
    _write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write_atomic(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """`write(temp file)` beside `path`, then rename it over `path`; the temp file never outlives a failure."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    tmp = target.with_name(f".{target.name}{_TMP_TAG}{os.getpid()}{_TMP_SUFFIX}")
    try:
        write(tmp)
        os.replace(tmp, target)
    except RuntimeError as e:  # e.g. "[enforce fail at inline_container.cc:...] ... file write failed"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OSError(f"writing {target} failed (disk full or not writable? torch says: {first[:200]})") from e
    finally:
        if tmp.exists():
            tmp.unlink()


def _remove_stale_temps(target: Path) -> None:
    """Delete temp files of `target` left by writers that are no longer running (killed mid-write)."""
    prefix = f".{target.name}{_TMP_TAG}"
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
            continue
        pid = name[len(prefix):-len(_TMP_SUFFIX)]
        if pid.isdigit() and int(pid) != os.getpid() and not process_running(int(pid)):
            try:
                os.unlink(target.parent / name)
            except OSError:
                pass


"""Creating and opening soft-label stores: one writer creates, many open; every command opens checked.

`create_store` writes the group under an exclusive claim (`fkd_dali.store.claim`), the
schema attributes last; `open_or_create_store` is what a resumable or parallel writer
calls; `open_checked_store` is what every reading command calls, with what it needs
of the store (complete, intact, matching a dataset folder, holding certain fields).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.errors import ContainsArrayError, ContainsGroupError

from fkd_dali.data.index import DatasetIndex
from fkd_dali.errors import LabelStoreError, StoreSchemaError
from fkd_dali.local import local_path
from fkd_dali.store.checks import check_chunk_files, check_dataset, check_same_spec, index_for_store
from fkd_dali.store.claim import (
    CREATE_WAIT_S,
    CREATING_KEY,
    check_out_location,
    claim_creation,
    claim_marker,
    clear_command,
    creator_age_s,
    creator_alive,
    creator_marker,
    describe_creator,
    release_claim,
)
from fkd_dali.store.damage import first_line, open_failure
from fkd_dali.store.label_store import LabelStore, not_a_store_message
from fkd_dali.store.schema import (
    ATTR_KEY,
    CHECKSUM_KEY,
    CropField,
    LabelKind,
    StoreSpec,
    array_defs,
    attrs_checksum,
    create_array,
    spec_to_attrs,
)

_log = logging.getLogger(__name__)

def _create_arrays(g: zarr.Group, index: DatasetIndex, spec: StoreSpec) -> None:
    values = {"images/path": np.array(index.paths, dtype=object), "images/class": index.classes,
              "images/size": index.sizes, "images/nbytes": index.nbytes}
    if index.digests is not None:
        values.update({"images/crc32c": index.digests.crc32c, "images/mtime": index.digests.mtime_ns})
    for d in array_defs(spec, len(index), digests=index.digests is not None):
        arr = create_array(g, d)
        if d.name in values:
            arr[:] = values[d.name]



class StoreExistsError(LabelStoreError):
    """`create_store` found a store, or another writer's store being created, at the path."""


def create_store(url: str, index: DatasetIndex, spec: StoreSpec,
                 storage_options: dict[str, Any] | None = None) -> LabelStore:
    """Create a new, empty store. The attributes are written last: they mark creation complete.

    The group is created with a `fkd_dali_creating` attribute naming this process and
    the schema attributes replace it in one final write (`fkd_dali.store.claim`).

    Raises:
        LabelStoreError: `url` is a file, a non-empty folder without a store, or not
            writable; or creation failed midway (a local half-made store is removed).
        StoreExistsError: a store (complete or being created) is already at `url`.
    """
    check_out_location(url)
    marker = creator_marker()
    try:
        claimed = claim_creation(url, marker)
    except OSError as e:
        raise LabelStoreError(f"cannot create the store {url}: {e.strerror or e}; choose a writable --out") from e
    if not claimed:
        raise StoreExistsError(f"{url} is being created by another writer")
    try:
        return _create_claimed(url, index, spec, marker, storage_options)
    finally:
        release_claim(url)


def _create_claimed(url: str, index: DatasetIndex, spec: StoreSpec, marker: dict[str, Any],
                    storage_options: dict[str, Any] | None) -> LabelStore:
    """`create_store` once this writer holds the creation claim."""
    if url.startswith("file://"):  # fsspec's local filesystem does not create folders itself
        storage_options = {"auto_mkdir": True, **(storage_options or {})}
    try:
        g = zarr.open_group(url, mode="w-", storage_options=storage_options, attributes={CREATING_KEY: marker})
    except (ContainsGroupError, ContainsArrayError, FileExistsError) as e:
        raise StoreExistsError(f"{url} already exists; open it or choose another --out") from e
    except OSError as e:
        raise LabelStoreError(f"cannot create the store {url}: {e.strerror or e}; choose a writable --out") from e
    except Exception as e:  # fsspec and network errors of a URL (no credentials, no endpoint): one line
        raise LabelStoreError(f"cannot create the store {url} ({first_line(e)}): check the URL, --storage-options "
                              "and your access rights") from e
    try:
        _create_arrays(g, index, spec)
        meta = spec_to_attrs(spec, index)
        g.attrs.put({ATTR_KEY: meta, CHECKSUM_KEY: attrs_checksum(meta)})
    except (ContainsArrayError, ContainsGroupError) as e:
        # Writers started together (torchrun, --shard) can all pass the "w-" check; the
        # first to find an array made by another stops here and waits for that one's
        # attributes (creation order is fixed, so at least one writer always finishes).
        raise StoreExistsError(f"{url} is being created by another writer or already exists") from e
    except OSError as e:  # ENOSPC, EROFS, EDQUOT...: nothing but this process's own arrays is there yet
        removed = _remove_local(url)
        raise LabelStoreError(
            f"creating the store {url} failed ({e.strerror or e}); "
            + ("the half-made store was removed" if removed else f"remove the half-made store with "
               f"{clear_command(url)}") + ". Fix the cause (free disk space?) and rerun") from e
    return LabelStore(g, url)


def _remove_local(url: str) -> bool:
    """Remove a store this process was creating (local only); True when it is gone.

    Retried briefly: zarr's other writes of the failed step may still land after the error.
    """
    path = local_path(url)
    if path is None:
        return False
    for _ in range(20):
        shutil.rmtree(path, ignore_errors=True)
        time.sleep(0.1)
        if not os.path.exists(path):
            return True
    return False


def open_store(url: str, mode: str = "r", storage_options: dict[str, Any] | None = None,
               check_arrays: bool = True) -> LabelStore:
    """Open an existing store (mode "r" or "r+"), refusing unknown schema versions.

    `check_arrays` False lets array metadata that differs from the attributes through
    (for `labels verify` and `info`, which report it); every other caller refuses it.

    Raises:
        LabelStoreError: nothing at `url`, a file or a folder that is not a Zarr store,
            unreadable metadata (a truncated zarr.json), a URL that cannot be reached;
            the one-line message names `url` and what to pass instead.
        StoreSchemaError: the store has another schema version.
    """
    try:
        g = zarr.open_group(url, mode=mode, storage_options=storage_options)
    except Exception as e:  # zarr, JSON, fsspec and network errors alike: one line naming `url`
        raise LabelStoreError(open_failure(url, e)) from e
    return LabelStore(g, url, check_arrays)


def open_or_create_store(url: str, index: DatasetIndex, spec: StoreSpec, wait_s: float = CREATE_WAIT_S,
                         storage_options: dict[str, Any] | None = None) -> LabelStore:
    """Open the store a resumed or parallel writer shares, or create it.

    A store that exists must have been made for the same dataset and spec (else
    `StoreMismatchError` says what differs). Another process may be creating it at
    this moment: wait, saying for whom, until its attributes appear. A store whose
    creator died before finishing it is named as half-created at once on the
    creator's machine (after `wait_s` seconds of its creation time elsewhere), with
    the command that removes it.
    """
    store = _finished_store(url, storage_options)
    if store is None:
        try:
            store = create_store(url, index, spec, storage_options)
        except StoreExistsError:
            store = _wait_for_store(url, wait_s, storage_options)
    check_dataset(store, index)
    check_same_spec(store, spec)
    return store


def _finished_store(url: str, storage_options: dict[str, Any] | None) -> LabelStore | None:
    """The store already at `url` (its attributes written), else None: opened before any creation step.

    Why first: creating claims the path (a file beside a local store), which fails on a
    read-only file system even when the store there is complete and a rerun has nothing
    to write. Whatever is at `url` that does not open is left to `create_store`, which
    says what it is.
    """
    try:
        return open_store(url, mode="r+", storage_options=storage_options)
    except LabelStoreError:
        return None


def _wait_for_store(url: str, wait_s: float, storage_options: dict[str, Any] | None) -> LabelStore:
    said = False
    while True:
        try:
            return open_store(url, mode="r+", storage_options=storage_options)
        except StoreSchemaError:
            raise
        except LabelStoreError:
            marker = _creating_marker(url, storage_options)
            if marker is None:
                raise  # not being created by anyone: the error says what is there
            alive = creator_alive(marker)
            if alive is False or creator_age_s(marker) > wait_s:
                raise LabelStoreError(not_a_store_message(marker, url)
                                      + ("" if alive is False else f" (after waiting {wait_s:.0f} s for "
                                         "its creator; if it is still running, rerun when it has finished)"))
            if not said:
                _log.info("waiting for %s to finish creating the store %s (gives up %.0f s after it started)",
                          describe_creator(marker), url, wait_s)
                said = True
            time.sleep(0.5)


def _creating_marker(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """The creator marker of a group at `url` without schema attributes; None otherwise."""
    try:
        attrs = zarr.open_group(url, mode="r", storage_options=storage_options).attrs
    except Exception:
        return claim_marker(url)  # killed between claiming the folder and writing the group
    marker = attrs.get(CREATING_KEY)
    if ATTR_KEY in attrs:
        return None
    return marker if isinstance(marker, dict) else claim_marker(url)


@dataclass(frozen=True)
class StoreNeeds:
    """What a command needs of a store before it reads it; `open_checked_store` refuses what does not hold.

    complete: every chunk written (else: "rerun the command that writes it").
    intact: no chunk file of a done chunk missing (one listing per array, no chunk read).
    fields: per-crop fields the command reads (`CropField`); gt_prob refusals name add-gt-prob.
    no_logits: why the command cannot use a "logits" store (None: it can).
    mode: "r", or "r+" for commands that write into the store.
    """

    complete: bool = True
    intact: bool = True
    fields: frozenset[CropField] = frozenset()
    no_logits: str | None = None
    mode: str = "r"


def open_checked_store(labels: str | LabelStore, need: StoreNeeds = StoreNeeds(), data: str | None = None,
                       storage_options: dict[str, Any] | None = None) -> tuple[LabelStore, DatasetIndex | None]:
    """Open `labels` (or take an opened store) and check it as `need` says; with `data`, also the folder.

    The one opening sequence of every command that reads a store (train, create_loader,
    eval, export, merge, add-gt-prob), so each refuses the same damage with the same one line.

    Returns:
        (store, index): the index of `data` with the store's image sizes (None without `data`).

    Raises:
        LabelStoreError, StoreSchemaError: not a store, another schema, damaged attributes
            or array metadata, incomplete, chunk files missing, a field it lacks.
        StoreMismatchError: `data` holds another dataset (the message names the difference).
    """
    store = labels if isinstance(labels, LabelStore) else open_store(labels, need.mode, storage_options)
    if need.no_logits is not None and store.spec.label.kind is LabelKind.LOGITS:
        raise LabelStoreError(f"store {store.url} holds a self-supervised teacher's raw outputs (kind logits); "
                              f"{need.no_logits}")
    store.check_fields(need.fields)
    index = index_for_store(store, data) if data is not None else None
    if need.complete:
        store.check_complete()
    if need.intact:
        check_chunk_files(store)
    return store, index

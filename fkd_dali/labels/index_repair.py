"""`labels repair`'s first step: rebuild a store's damaged index arrays from the dataset folder.

The index arrays (images/path, images/class, images/size, images/nbytes) are not teacher
output, so recomputing chunks cannot mend them; but they are a function of the folder
the labels were made for. They are rebuilt only when the folder's fingerprint (relative
paths, byte sizes, class names: what the store recorded at creation) is the store's,
and the rebuilt arrays must agree with every index array that is still readable and
trustworthy; otherwise the repair is refused in one line naming the array. Image sizes
come from the file headers, as at labelling.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fkd_dali.data.index import dataset_fingerprint, list_folder, read_sizes
from fkd_dali.errors import LabelStoreError
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.tools import VerifyReport

INDEX_KEYS = ("images/path", "images/class", "images/size", "images/nbytes")
DIGEST_KEYS = ("images/crc32c", "images/mtime")  # stores with file digests
#: verify's problem kinds that mean an index array reads back but holds wrong values
_CONTENT_KINDS = ("index_fingerprint", "index_class", "index_order", "index_size")


def repair_index(store: LabelStore, report: VerifyReport, data: str) -> list[str]:
    """Rebuild the index arrays that `report` finds damaged from the folder `data`; the keys rewritten.

    Raises:
        LabelStoreError: the folder is not the store's dataset, or the rebuilt index
            disagrees with an intact index array (the folder changed since labelling).
    """
    digest_keys = DIGEST_KEYS if store.has_digests else ()
    unreadable = [k for k in INDEX_KEYS + digest_keys if not _readable(store, k)]
    if "images/crc32c" in unreadable:
        raise LabelStoreError(
            f"store {store.url}: images/crc32c (each file's digest recorded at labelling) cannot be read, and "
            "cannot be rebuilt from the folder without vouching for files that may have changed since; restore "
            "the store from a copy or regenerate it")
    suspect = set(unreadable) | (set(INDEX_KEYS) if any(report.problem(k) for k in _CONTENT_KINDS) else set())
    if not suspect:
        return []
    values = _index_from_folder(store, data, sorted(suspect))
    changed = [k for k in INDEX_KEYS if k in unreadable or not np.array_equal(store.read(k), values[k])]
    _check_intact_agree(store, values, [k for k in changed if k not in suspect], data)
    changed = [k for k in changed if k in suspect] + [k for k in digest_keys if k in unreadable]
    store.rewrite_index({k: values[k] for k in changed})
    return sorted(changed)


def _readable(store: LabelStore, key: str) -> bool:
    try:
        store.read(key)
    except LabelStoreError:
        return False
    return True


def _index_from_folder(store: LabelStore, data: str, keys: list[str]) -> dict[str, np.ndarray]:
    """The store's index arrays read from `data` (headers for the sizes), after the fingerprint check.

    `images/mtime` is the files' modification time now: only a hint for the cheap check at
    open (a file whose time differs is checked against its crc32c), never trusted alone.
    """
    root = Path(data).expanduser().resolve()
    listing = list_folder(root)
    keep = [i for i, p in enumerate(listing.paths) if p not in set(store.skipped)]
    kept = [listing.paths[i] for i in keep]
    nbytes = np.array(listing.nbytes, np.int64)[keep]
    fingerprint = dataset_fingerprint(kept, nbytes, listing.class_names)
    if fingerprint != store.fingerprint or listing.class_names != store.class_names:
        raise LabelStoreError(
            f"store {store.url}: {', '.join(keys)} cannot be rebuilt from --data {data}: its fingerprint "
            f"{fingerprint[:12]} (paths, byte sizes, class folders) is not the store's {store.fingerprint[:12]}. "
            "Point --data at the folder the labels were made for, or regenerate the store")
    cid = {name: i for i, name in enumerate(listing.class_names)}
    return {"images/path": np.array(kept, dtype=object),
            "images/class": np.array([cid[p.split("/", 1)[0]] for p in kept], np.int32),
            "images/size": read_sizes(root, kept), "images/nbytes": nbytes,
            "images/mtime": np.array(listing.mtime_ns, np.int64)[keep]}


def _check_intact_agree(store: LabelStore, values: dict[str, np.ndarray], differing: list[str], data: str) -> None:
    """Refuse when a readable, unsuspected index array differs from the folder's: the folder changed."""
    if not differing:
        return
    key = differing[0]
    stored = store.read(key)
    row = int(np.flatnonzero((np.asarray(stored) != values[key]).reshape(len(stored), -1).any(1))[0])
    raise LabelStoreError(
        f"store {store.url}: {key} of image {row} ({values['images/path'][row]}) is {stored[row].tolist()} in the "
        f"store but {np.asarray(values[key][row]).tolist()} in --data {data}: the folder changed since labelling, "
        "so the damaged index arrays cannot be rebuilt from it. Restore the original files, or regenerate the store")

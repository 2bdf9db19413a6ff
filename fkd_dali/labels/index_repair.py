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

from fkd_dali.data.index import DatasetIndex, dataset_fingerprint, read_sizes, scan_folder
from fkd_dali.errors import LabelStoreError
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.tools import VerifyReport

INDEX_KEYS = ("images/path", "images/class", "images/size", "images/nbytes")
#: verify's problem kinds that mean an index array reads back but holds wrong values
_CONTENT_KINDS = ("index_fingerprint", "index_class", "index_order", "index_size")


def repair_index(store: LabelStore, report: VerifyReport, data: str) -> list[str]:
    """Rebuild the index arrays that `report` finds damaged from the folder `data`; the keys rewritten.

    Raises:
        LabelStoreError: the folder is not the store's dataset, or the rebuilt index
            disagrees with an intact index array (the folder changed since labelling).
    """
    unreadable = [k for k in INDEX_KEYS if not _readable(store, k)]
    suspect = set(unreadable) | (set(INDEX_KEYS) if any(report.problem(k) for k in _CONTENT_KINDS) else set())
    if not suspect:
        return []
    rebuilt = _index_from_folder(store, data, sorted(suspect))
    values = _index_values(rebuilt)
    changed = [k for k in INDEX_KEYS if k in unreadable or not np.array_equal(store.read(k), values[k])]
    _check_intact_agree(store, values, [k for k in INDEX_KEYS if k not in suspect and k in changed], data)
    changed = [k for k in changed if k in suspect]
    store.rewrite_index({k: values[k] for k in changed})
    return sorted(changed)


def _readable(store: LabelStore, key: str) -> bool:
    try:
        store.read(key)
    except LabelStoreError:
        return False
    return True


def _index_from_folder(store: LabelStore, data: str, keys: list[str]) -> DatasetIndex:
    """The store's dataset index read from `data` (headers for the sizes), after the fingerprint check."""
    root = Path(data).expanduser().resolve()
    class_names, paths, nbytes = scan_folder(root)
    keep = [i for i, p in enumerate(paths) if p not in set(store.skipped)]
    kept = [paths[i] for i in keep]
    fingerprint = dataset_fingerprint(kept, nbytes[keep], class_names)
    if fingerprint != store.fingerprint or class_names != store.class_names:
        raise LabelStoreError(
            f"store {store.url}: {', '.join(keys)} cannot be rebuilt from --data {data}: its fingerprint "
            f"{fingerprint[:12]} (paths, byte sizes, class folders) is not the store's {store.fingerprint[:12]}. "
            "Point --data at the folder the labels were made for, or regenerate the store")
    cid = {name: i for i, name in enumerate(class_names)}
    return DatasetIndex(str(root), kept, np.array([cid[p.split("/", 1)[0]] for p in kept], np.int32),
                        read_sizes(root, kept), nbytes[keep], class_names, skipped=store.skipped)


def _index_values(index: DatasetIndex) -> dict[str, np.ndarray]:
    return {"images/path": np.array(index.paths, dtype=object), "images/class": index.classes,
            "images/size": index.sizes, "images/nbytes": index.nbytes}


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

"""Checks of a store against what its attributes promise and against a dataset folder.

Fill values in chunks flagged done (a chunk file deleted after it was written, which
zarr reads back silently as fill values) are found in the data read (`check_written`)
or by listing the chunk files (`missing_chunk_files`); `check_dataset` and
`index_for_store` say which part of a dataset's fingerprint differs; `check_same_spec`
which setting a resumed writer changed.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from fkd_dali.data.index import DatasetIndex, list_folder
from fkd_dali.errors import LabelStoreError, StoreDamageError, StoreMismatchError
from fkd_dali.store.damage import (
    FILL_WORDS,
    INVALID_WORDS,
    all_false_implausible,
    chunk_files,
    fill_masks,
    first_line,
    inclusive,
    listed_files,
    repair_hint,
)
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.schema import CropField, CropLabels, StoreSpec, json_ready


def describe_crops(store: LabelStore, images: np.ndarray, slots: np.ndarray, limit: int = 3) -> str:
    """"images 8-15 slots 0-3, ..." for the distinct (image chunk, slot chunk) pairs of the crops given."""
    ipc, spc = store.spec.layout.images_per_chunk, store.spec.layout.slots_per_chunk
    pairs = sorted(set(zip((images // ipc).tolist(), (slots // spc).tolist())))
    parts = []
    for c, j in pairs[:limit]:
        a, b = store.chunk_range(c)
        parts.append(f"images {a}-{b - 1} slots {j * spc}-{min((j + 1) * spc, store.crops_per_image) - 1}")
    more = f" and {len(pairs) - limit} more chunks" if len(pairs) > limit else ""
    return ", ".join(parts) + more


def check_dataset(store: LabelStore, index: DatasetIndex) -> None:
    """Raise `StoreMismatchError` saying which part of the dataset fingerprint differs.

    An `index` that read every file (label generation resuming) also has its crc32c
    digests compared with the store's: a file replaced by another of the same size since
    the store was created is named.
    """
    if index.fingerprint == store.fingerprint:
        _check_same_digests(store, index)
        return
    stored = store.load_index()
    raise StoreMismatchError(
        f"store {store.url} was made for another dataset: fingerprint {store.fingerprint[:12]} "
        f"(store) != {index.fingerprint[:12]} ({index.root}); {describe_difference(stored, index)}. "
        "Point --data at the folder the labels were generated for, or regenerate the labels.")


def _check_same_digests(store: LabelStore, index: DatasetIndex) -> None:
    if index.digests is None or not store.has_digests:
        return
    stored = store.read("images/crc32c").astype(np.uint32)
    changed = np.flatnonzero(stored != index.digests.crc32c)
    if len(changed):
        raise StoreMismatchError(
            f"store {store.url} was made for other file contents: {index.paths[changed[0]]} (and {len(changed) - 1} "
            "more) has the same path and byte size but another crc32c than when the store was created (replaced or "
            "edited since). Restore the original files, or write to a new --out")


def check_written(store: LabelStore, labels: CropLabels | Mapping[str, np.ndarray | None], first_image: int,
                  slots: Sequence[int]) -> None:
    """Raise `StoreDamageError` if the data read holds fill values: rows `first_image`.., columns `slots`.

    `labels` is a `CropLabels` or a mapping of array key ("crops/box", "labels/prob",
    ...) to the (n, s, ...) data read from it, for callers that read only some arrays.

    Chunks flagged done never hold them (index -1, NaN probability, an empty box:
    the box fill is 0 and a real box is at least one pixel), so they mean a chunk file
    was deleted or lost after it was written (a partial copy, a lost object), which
    zarr reads back silently as fill values. Vectorised on the arrays in memory: a
    min/max per field when clean (about 1% of a pass-table read).

    Such values in a chunk whose files are all present (one listing, only on this failure
    path) were written so, e.g. a teacher output beyond float16's range: the message says
    that instead of blaming lost files.

    Raises:
        StoreDamageError: fill values (or inf) in chunks flagged done.
        LabelStoreError: fill values in chunks not written yet (the store is incomplete).
    """
    fields = labels.by_array() if isinstance(labels, CropLabels) else labels
    for key, bad in fill_masks(fields).items():
        rows, cols = np.nonzero(bad)
        images = rows + first_image
        picked = np.asarray(slots, dtype=np.int64)[cols]
        chunks = np.unique(images // store.spec.layout.images_per_chunk)
        if not store.done()[chunks].all():
            store.check_complete()  # not damage: those chunks were never written ("rerun generate")
        where = describe_crops(store, images, picked)
        images_of = store.chunk_range(int(chunks[0]))
        if missing_chunk_files(store, [key], done=chunks.tolist()):
            raise StoreDamageError(
                f"store {store.url}: array {key!r} holds fill values ({FILL_WORDS[key]}) at {where} although those "
                f"chunks are flagged done: their chunk files were deleted or lost (a partial copy?); "
                f"{repair_hint(store.url, key)}", key, None, images_of)
        raise StoreDamageError(
            f"store {store.url}: array {key!r} holds {INVALID_WORDS[key]} at {where}, in chunk files that are "
            f"present and pass their checksums: the values were written so (a teacher output beyond float16's "
            f"range, a writer bug) or edited; {repair_hint(store.url, key)}", key, None, images_of)


def read_written(store: LabelStore, start: int, stop: int, fields: Iterable[CropField] | None = None) -> CropLabels:
    """`store.read_images(start, stop, fields)`, refused by `check_written` when it holds fill values:
    for data that must be complete (export, merge, show)."""
    labels = store.read_images(start, stop, fields)
    check_written(store, labels, start, range(store.crops_per_image))
    return labels


def missing_chunk_files(store: LabelStore, keys: Sequence[str] | None = None,
                        done: Sequence[int] | None = None) -> list[tuple[str, int]]:
    """(chunk file, image chunk) of every chunk file of a done image chunk absent from the store.

    `done`: the image chunks to look at (default: those flagged done).

    One listing per array (no chunk is read). A done chunk has a file for every slot
    chunk of boxes, class ids and probabilities: their fill values never occur in real
    data, so zarr writes them all. An all-False flip chunk is legitimately absent, so
    flips count only where that is implausible (below 1e-9 at the store's flip
    probability). This is what finds deleted flip chunks, which read back as
    plausible values.
    """
    if done is None:
        done = np.flatnonzero(store.done()).tolist()
    missing = []
    for key in store.crop_keys() if keys is None else [k for k in keys if k in store.crop_keys()]:
        arr = store.array(key)
        try:
            present = listed_files(store.group, arr)
        except Exception as e:
            raise LabelStoreError(f"store {store.url}: cannot list the chunk files of {key!r} "
                                  f"({first_line(e)})") from e
        spc = arr.chunks[1]
        for c in done:
            a, b = store.chunk_range(c)
            for j, name in enumerate(chunk_files(key, arr, c)):
                crops = (b - a) * min(spc, store.crops_per_image - j * spc)
                may_be_absent = key == "crops/flip" and not all_false_implausible(store.spec.crop.flip_prob, crops)
                if name not in present and not may_be_absent:
                    missing.append((name, c))
    return missing


def check_chunk_files(store: LabelStore, keys: Sequence[str] | None = None) -> None:
    """Raise `StoreDamageError` naming the chunk files of done chunks that are missing (see
    `missing_chunk_files`): a store that lost files is refused before a pass reads it."""
    missing = missing_chunk_files(store, keys)
    if not missing:
        return
    named = ", ".join(f"{name} (images {'-'.join(map(str, inclusive(store.chunk_range(c))))})"
                      for name, c in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    name, chunk = missing[0]
    raise StoreDamageError(
        f"store {store.url}: {len(missing)} chunk file(s) of chunks flagged done are missing: {named}{more} "
        f"(deleted or lost after they were written: a partial copy?); {repair_hint(store.url, name)}",
        name.rsplit("/c/", 1)[0], name, store.chunk_range(chunk))


def describe_difference(a: DatasetIndex, b: DatasetIndex) -> str:
    """A one-line account of the first way two indexes differ."""
    if a.class_names != b.class_names:
        na, nb = len(a.class_names), len(b.class_names)
        counts = f"{na} in store vs {nb} on disk" if na != nb else f"{na} in store and on disk"
        return f"class folders differ ({counts}): " + _class_difference(a.class_names, b.class_names)
    if len(a) != len(b):
        return f"image count differs ({len(a)} in store vs {len(b)} on disk)"
    for i, (pa, pb) in enumerate(zip(a.paths, b.paths)):
        if pa != pb:
            return f"image {i} is {pa!r} in the store but {pb!r} on disk"
    for i, (na, nb) in enumerate(zip(a.nbytes, b.nbytes)):
        if na != nb:
            return f"file {a.paths[i]!r} has {na} bytes in the store but {nb} on disk"
    return "paths and byte sizes agree, so the fingerprint recipe differs"


def _class_difference(stored: list[str], on_disk: list[str], limit: int = 3) -> str:
    """Which class folder names the store has that the disk lacks and the reverse (else: the order differs)."""
    def names(values: list[str]) -> str:
        more = f" and {len(values) - limit} more" if len(values) > limit else ""
        return ", ".join(repr(v) for v in values[:limit]) + more

    gone = [c for c in stored if c not in set(on_disk)]
    new = [c for c in on_disk if c not in set(stored)]
    parts = ([f"{names(gone)} in the store but not on disk"] if gone else []) + \
            ([f"{names(new)} on disk but not in the store"] if new else [])
    return "; ".join(parts) if parts else "the same names in another order"


def check_same_spec(store: LabelStore, spec: StoreSpec) -> None:
    """Raise if a resumed run asks for different crops, labels or teacher than the store holds."""
    have, want = json_ready(asdict(store.spec)), json_ready(asdict(spec))
    diffs = [f"{sec}.{key}: store has {have[sec][key]!r}, run asks {want[sec][key]!r}"
             for sec in ("crop", "label", "teacher", "layout") for key in want[sec]
             if have[sec][key] != want[sec][key]]
    if have["crops_per_image"] != want["crops_per_image"]:
        diffs.insert(0, f"crops_per_image: store has {have['crops_per_image']}, run asks {want['crops_per_image']}")
    if store.spec.gt is None and spec.gt is not None:
        raise StoreMismatchError(f"store {store.url} was written without --gt-prob; add the ground-truth probabilities "
                                 f"to it with `fkd-dali labels add-gt-prob {store.url} --data DIR`, or write to a "
                                 "new --out")
    if store.spec.gt is not None and spec.gt is None:
        diffs.append("gt_prob: the store has it, the run does not ask for it (pass --gt-prob)")
    elif store.spec.gt is not None and spec.gt is not None and store.spec.gt != spec.gt:
        diffs.append(f"gt_prob: the store maps the folder classes by {store.spec.gt.mapping}, "
                     f"the run by {spec.gt.mapping}")
    if diffs:
        raise StoreMismatchError(
            f"store {store.url} was written with other settings: " + "; ".join(diffs)
            + ". Use the same options to resume, or write to a new --out.")


def index_for_store(store: LabelStore, root: str | os.PathLike[str]) -> DatasetIndex:
    """The index of `store` with paths under `root`, after checking that `root` holds its dataset.

    Scans `root` (`scan_folder`: no image header is read), leaves out the files the
    store recorded as skipped at labelling time, and compares the fingerprint with the
    store's. The sizes come from the store (read from the headers when it was made). For
    a store with file digests, `digests.stale` marks the files whose modification time
    differs from the one recorded (the stat the scan makes anyway: no extra call).

    Raises:
        DatasetIndexError: `root` is not a dataset folder (as `build_index`).
        StoreMismatchError: `root` holds another dataset; the message names the first
            difference (as `LabelStore.check_dataset`).
    """
    root_path = Path(root).expanduser().resolve()
    listing = list_folder(root_path)
    skipped = set(store.skipped)
    keep = [i for i, p in enumerate(listing.paths) if p not in skipped]
    cid = {name: i for i, name in enumerate(listing.class_names)}
    kept = [listing.paths[i] for i in keep]
    scanned = DatasetIndex(str(root_path), kept, np.array([cid[p.split("/", 1)[0]] for p in kept], np.int32),
                           np.zeros((len(kept), 2), np.int32), np.array(listing.nbytes, np.int64)[keep],
                           listing.class_names)
    check_dataset(store, scanned)  # header-less: the fingerprint covers paths, byte sizes and class names
    index = store.load_index(root=str(root_path))
    if index.digests is None:
        return index
    on_disk = np.array(listing.mtime_ns, np.int64)[keep]
    return dataclasses.replace(index, digests=dataclasses.replace(index.digests,
                                                                  stale=on_disk != index.digests.mtime_ns))

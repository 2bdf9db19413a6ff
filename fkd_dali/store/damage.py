"""What a damaged soft-label store looks like, and how to say so in one line.

Helpers of `fkd_dali.store.label_store`'s read side: fill-value masks of data in
memory (deleted chunk files read back silently as fill values), the chunk files an
image chunk owns, the chunk at fault in a failed read, and messages that name the
store, the array, the chunk and the remedy. No store is opened here.
"""
from __future__ import annotations

import itertools
import json
import os
from typing import Any, Mapping

import numpy as np
import zarr

from fkd_dali.local import local_path

RECOPY = ("copy the store again from its source, or regenerate it into a new --out "
          "(`fkd-dali labels verify STORE` lists what is damaged)")
FILL_WORDS = {"crops/box": "empty boxes", "labels/index": "class id -1", "labels/prob": "NaN probabilities",
              "labels/full": "NaN probabilities", "labels/logits": "NaN logits",
              "labels/gt_prob": "NaN ground-truth probabilities"}
#: what fill-like values are when their chunk file is present (written so, not read back from a lost file)
INVALID_WORDS = {"crops/box": "empty boxes", "labels/index": "negative class ids",
                 "labels/prob": "NaN or infinite probabilities", "labels/full": "NaN or infinite probabilities",
                 "labels/logits": "NaN or infinite logits",
                 "labels/gt_prob": "NaN or infinite ground-truth probabilities"}
#: every per-crop array a store may have (a store has those its attributes imply: `LabelStore.crop_keys`)
CROP_KEYS = ("crops/box", "crops/flip", "labels/index", "labels/prob", "labels/full", "labels/logits",
             "labels/gt_prob")
_FLOAT_KEYS = ("labels/prob", "labels/full", "labels/logits", "labels/gt_prob")  # NaN fill, float16


def inclusive(rng: tuple[int, int]) -> tuple[int, int]:
    return rng[0], rng[1] - 1


def repair_hint(url: str, key: str) -> str:
    """The remedy for damaged data of array `key` (crop data can be recomputed, the image list cannot)."""
    if key.split("/c/")[0] in CROP_KEYS + ("progress/done",):
        return (f"run `fkd-dali labels verify {url}` to list the damage and `fkd-dali labels repair {url} --data DIR` "
                "(the options of the original `labels generate`) to recompute those chunks, or regenerate the store")
    return RECOPY


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def fill_masks(fields: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """(n, s) masks of crops holding a field's fill value, only for fields that hold any.

    The clean case costs one min/max per field; masks are built only when one fails.
    Flips have no detectable fill (False is a real flip); uint16 boxes cannot be NaN, and
    their fill, 0, is an empty box.
    """
    out: dict[str, np.ndarray] = {}
    boxes, index = fields.get("crops/box"), fields.get("labels/index")
    if boxes is not None and boxes.size and boxes[..., 2:].min() == 0:
        out["crops/box"] = (boxes[..., 2:] == 0).any(-1)
    if index is not None and index.size and index.min() < 0:
        out["labels/index"] = (index < 0).any(-1)
    for key in _FLOAT_KEYS:
        values = fields.get(key)
        if values is None or not values.size:
            continue
        magnitude = values.view(np.uint16) & 0x7FFF  # float16 bits: exponent all ones = inf or NaN
        if magnitude.max() >= 0x7C00:
            bad = magnitude >= 0x7C00
            out[key] = bad.any(-1) if bad.ndim > 2 else bad  # gt_prob is (n, s): one value per crop
    return out


def sel_bounds(arr: zarr.Array, sel: Any) -> list[tuple[int, int]]:
    """[start, stop) per dimension of a selection made of slices and integers."""
    sel = sel if isinstance(sel, tuple) else (sel,)
    sel = sel + (slice(None),) * (arr.ndim - len(sel))
    bounds = []
    for s, n in zip(sel, arr.shape):
        if isinstance(s, slice):
            start, stop, _ = s.indices(n)
        else:
            start = int(s) % n if n else 0
            stop = start + 1
        bounds.append((start, max(start, stop)))
    return bounds


def chunk_files(key: str, arr: zarr.Array, chunk: int) -> list[str]:
    """Names (relative to the group) of array `key`'s files for image chunk `chunk`, one per slot chunk."""
    rest = itertools.product(*(range(-(-n // k)) for n, k in zip(arr.shape[1:], arr.chunks[1:])))
    return [f"{key}/{arr.metadata.encode_chunk_key((chunk, *r))}" for r in rest]


def store_key(group: zarr.Group, name: str) -> str:
    return f"{group.path}/{name}" if group.path else name


def failing_chunk(arr: zarr.Array, sel: Any) -> tuple[tuple[int, ...], Exception] | None:
    """The first chunk of `sel` that cannot be read alone, with its error (None if all read)."""
    ranges = [range(a // c, (b - 1) // c + 1) if b > a else range(0)
              for (a, b), c in zip(sel_bounds(arr, sel), arr.chunks)]
    for coords in itertools.product(*ranges):
        region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, arr.chunks, arr.shape))
        try:
            arr[region]
        except Exception as e:
            return coords, e
    return None


def describe_chunk(key: str, arr: zarr.Array, coords: tuple[int, ...], images: tuple[int, int]) -> str:
    if key == "progress/done":
        return f"the done flag of images {images[0]}-{images[1] - 1}"
    what = f"images {images[0]}-{images[1] - 1}"
    if key in CROP_KEYS:
        spc = arr.chunks[1]
        what += f", slots {coords[1] * spc}-{min((coords[1] + 1) * spc, arr.shape[1]) - 1}"
    return what


def open_failure(url: str, error: Exception) -> str:
    """Why `url` cannot be opened as a store, and what to pass instead."""
    local = local_path(url)
    made_by = "a store is the folder `fkd-dali labels generate --out` writes"
    if local is not None and not local.exists():
        return f"no soft-label store at {url}: the path does not exist"
    if local is not None and not local.is_dir():
        return f"{url} is a file, not a soft-label store ({made_by})"
    if local is not None and not (local / "zarr.json").exists():
        return f"{url} is a folder but not a soft-label store: it holds no zarr.json ({made_by})"
    if isinstance(error, json.JSONDecodeError):
        return (f"the metadata of store {url} (zarr.json) cannot be read ({first_line(error)}): the file is "
                "truncated or damaged; copy the store again from its source, or regenerate it")
    if isinstance(error, zarr.errors.GroupNotFoundError):
        return f"no soft-label store at {url} (no zarr.json there)"
    if isinstance(error, ImportError):
        return f"cannot open {url}: {first_line(error)} (the fsspec backend for this URL is not installed)"
    return (f"cannot open soft-label store {url} ({first_line(error)}): check the path or URL, --storage-options, "
            "the network and your access rights")


def all_false_implausible(flip_prob: float, crops: int) -> bool:
    """Whether `crops` flips drawn at `flip_prob` being all False (a chunk zarr does not write) is < 1e-9."""
    return bool((1.0 - flip_prob) ** crops < 1e-9)


def listed_files(group: zarr.Group, arr: zarr.Array) -> set[str]:
    """Names (relative to `group`) of the files under array `arr` (one listing, nothing read).

    Local folders are walked with `os.walk` (about 10x faster than zarr's per-file
    pathlib listing: ImageNet's ~20k chunk files per array in a fraction of a second);
    other stores list through zarr.
    """
    from zarr.core.sync import sync
    from zarr.storage import LocalStore

    store, prefix = arr.store_path.store, arr.store_path.path
    if isinstance(store, LocalStore):
        root_dir = str(store.root)
        found = {os.path.relpath(os.path.join(d, n), root_dir).replace(os.sep, "/")
                 for d, _, names in os.walk(os.path.join(root_dir, prefix)) for n in names}
    else:
        async def listing() -> set[str]:
            return {k async for k in store.list_prefix(prefix + "/")}

        found = sync(listing())
    root = f"{group.path}/" if group.path else ""
    return {k[len(root):] if k.startswith(root) else k for k in found}

"""FKD's published per-image soft-label files: one torch-saved list per image.

A file `<root>/<class>/<stem>.tar` holds `[coords, flip, labels]` for the M crops of
one image: coords (M, 4) float32 (i/H, j/W, h/H, w/W) — top, left, height, width as
fractions of the stored image, the convention of the store's `crops/box`; flip (M,)
bool; labels (M, 2, K) float32 with [:, 0, :] the top-K class ids (as floats, most
probable first) and [:, 1, :] their probabilities. Despite the suffix the file is a
plain `torch.save` archive, not a tar. This module reads and writes that format and
nothing else; moving labels between it and a store is the importer's job.

FKD's own generator saves numpy arrays (labels in float16 when its teacher ran in
fp16), which `torch.load(weights_only=True)` refuses by default. `read_fkd_file`
allows exactly what unpickling a plain numeric numpy array needs (`_NUMPY_ARRAY_GLOBALS`),
only for the duration of the load; any other pickled object is refused, never built.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Sequence

import numpy as np
import torch

from fkd_dali.atomic import save_torch
from fkd_dali.errors import ConfigError, LabelStoreError

FKD_SUFFIX = ".tar"
_BOX_TOLERANCE = 1e-3  # float32 fractions of sides up to ~10k pixels stay well inside this
_PROB_TOLERANCE = 1e-2  # float16-quantized probabilities may exceed 1 slightly

_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # the function a pickled ndarray is rebuilt with
#: The globals a pickled numeric numpy array refers to, and nothing else: the array
#: class, its reconstruct function (under numpy 2's module name and numpy 1's, which
#: FKD's published files use), `numpy.dtype` and the classes of the dtypes FKD files
#: hold (object, structured and other dtypes stay refused).
_NUMPY_ARRAY_GLOBALS: list = [
    np.ndarray, np.dtype,
    (_RECONSTRUCT, "numpy._core.multiarray._reconstruct"), (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
    *{type(np.dtype(t)) for t in (np.bool_, np.float16, np.float32, np.float64)},
]


class FkdLabels(NamedTuple):
    """The content of one FKD label file, as numpy arrays."""

    coords: np.ndarray  # (M, 4) float32 (y, x, h, w) fractions of H, W
    flip: np.ndarray  # (M,) bool
    index: np.ndarray  # (M, K) int64 class ids, most probable first
    prob: np.ndarray  # (M, K) float32


def fkd_file_path(root: str | os.PathLike[str], rel_image_path: str) -> Path:
    """Where FKD keeps the labels of `rel_image_path` (`<class>/<file>`): `<root>/<class>/<stem>.tar`.

    The stem is everything before the last dot (`a.b.JPEG` -> `a.b.tar`). Images that
    share a stem share this path: export and import use `fkd_file_paths`, which keeps
    them apart.

    Raises:
        ConfigError: the image path is absolute or climbs out of the root with `..`,
            which would put a label file outside `root`.
    """
    rel = _relative(rel_image_path)
    return Path(root).joinpath(*rel.parent.parts, rel.stem + FKD_SUFFIX)


def fkd_file_paths(root: str | os.PathLike[str], rel_image_paths: Sequence[str]) -> list[Path]:
    """The label file of each image of an index: FKD's `<stem>.tar` unless another image needs that name.

    FKD names a label file after the image's stem, so images of one folder that differ
    only in their extension (`a.JPEG`, `a.jpg`, `a.png`) would overwrite each other's
    labels. Such images get their whole file name instead (`a.JPEG.tar`, `a.jpg.tar`,
    `a.png.tar`), as does an image whose `<stem>.tar` would equal one of those names
    (`a.JPEG.png` -> `a.JPEG.png.tar`). Whole names are unique within a folder, so no
    two images share a file. The rule depends only on the list of paths, so export
    and import, which see the same index, agree; datasets without shared stems get
    exactly FKD's names.

    Raises:
        ConfigError: as `fkd_file_path`.
    """
    rels = [_relative(p) for p in rel_image_paths]
    by_folder: dict[PurePosixPath, list[int]] = {}
    for i, rel in enumerate(rels):
        by_folder.setdefault(rel.parent, []).append(i)
    whole: set[int] = set()
    for members in by_folder.values():
        stems = Counter(rels[i].stem for i in members)
        whole |= {i for i in members if stems[rels[i].stem] > 1}
        while True:  # each round moves at least one image to its (unique) whole name, so it ends
            taken = {rels[i].name for i in members if i in whole}
            clash = {i for i in members if i not in whole and rels[i].stem in taken}
            if not clash:
                break
            whole |= clash
    return [Path(root).joinpath(*rel.parent.parts, (rel.name if i in whole else rel.stem) + FKD_SUFFIX)
            for i, rel in enumerate(rels)]


def _relative(rel_image_path: str) -> PurePosixPath:
    rel = PurePosixPath(str(rel_image_path).replace(os.sep, "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.name:
        raise ConfigError(f"image path {rel_image_path!r} must be relative to the dataset root "
                          "(like 'n01440764/img.JPEG')")
    return rel


def write_fkd_file(path: str | os.PathLike[str], coords: np.ndarray | torch.Tensor,
                   flip: np.ndarray | torch.Tensor, index: np.ndarray | torch.Tensor,
                   prob: np.ndarray | torch.Tensor) -> None:
    """Write one image's M crops in FKD's format, atomically (temp file + rename).

    Args:
        path: the label file, usually from `fkd_file_path`; parent folders are created.
        coords: (M, 4) crop boxes (y, x, h, w) as fractions of the image height/width.
        flip: (M,) horizontal flips.
        index: (M, K) top-K class ids, most probable first.
        prob: (M, K) probabilities of those classes.

    Raises:
        LabelStoreError: the arrays disagree in shape or hold values the format cannot
            represent (negative or non-integral ids, boxes outside the image); nothing
            is written then.
    """
    labels = _validated(str(path), _as_numpy(coords), _as_numpy(flip), _as_numpy(index), _as_numpy(prob))
    stacked = np.stack([labels.index.astype(np.float32), labels.prob], axis=1)  # (M, 2, K)
    payload = [torch.from_numpy(labels.coords.copy()), torch.from_numpy(labels.flip.copy()),
               torch.from_numpy(stacked)]
    save_torch(payload, path)


def read_fkd_file(path: str | os.PathLike[str]) -> FkdLabels:
    """Read one FKD label file (ours or one published with FKD's code).

    Accepts coords/flip/labels as numpy arrays (float16, float32 or float64; flips
    bool), tensors or nested lists, flips as bools or 0/1, and labels of shape (M, 2)
    as K = 1. Loads with `weights_only=True` plus exactly numpy's array reconstruction
    (`_NUMPY_ARRAY_GLOBALS`, scoped to this load): a label file is data and must not
    run code.

    Raises:
        LabelStoreError: the file is missing, not a torch archive, holds a pickled
            object other than arrays (refused before it is built), or its content does
            not have FKD's structure; the message names the file and the defect.
    """
    name = str(path)
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            obj = torch.load(name, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LabelStoreError(f"FKD label file {name} does not exist") from None
    except Exception as e:
        raise LabelStoreError(f"FKD label file {name} {_load_failure(e)}") from e
    if not isinstance(obj, (list, tuple)) or len(obj) != 3:
        kind = type(obj).__name__ + (f" of length {len(obj)}" if isinstance(obj, (list, tuple)) else "")
        raise LabelStoreError(f"FKD label file {name} holds a {kind}, expected [coords, flip, labels]")
    try:
        coords, flip, labels = (_as_numpy(x) for x in obj)
    except (TypeError, ValueError) as e:
        raise LabelStoreError(f"FKD label file {name}: an entry is not a numeric array ({e})") from e
    for what, arr in (("coords", coords), ("flip", flip), ("labels", labels)):
        if arr.dtype.kind not in "biuf":
            raise LabelStoreError(f"FKD label file {name}: {what} is not a numeric array (dtype {arr.dtype})")
    if labels.ndim == 2 and labels.shape[1:] == (2,):
        labels = labels[:, :, None]
    if labels.ndim != 3 or labels.shape[1] != 2:
        raise LabelStoreError(f"FKD label file {name}: labels have shape {labels.shape}, expected (M, 2, K)")
    raw_index = labels[:, 0, :].astype(np.float64)
    if not np.all(np.isfinite(raw_index)) or np.any(raw_index != np.round(raw_index)):
        raise LabelStoreError(f"FKD label file {name}: class ids in labels[:, 0] are not whole numbers")
    return _validated(name, coords, flip, raw_index.astype(np.int64), labels[:, 1, :])


def _load_failure(error: Exception) -> str:
    """Why `torch.load` refused a label file, in one line (torch's own message spans many)."""
    text = str(error)
    refused = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"but got <class '([\w.]+)'>", text)
    if refused:
        return (f"holds a pickled {refused.group(1)}, which is not a numeric array: refused without unpickling it "
                "(FKD label files hold only numpy arrays or tensors of float16/32/64 and bool); regenerate the file")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"is not a readable torch archive ({type(error).__name__}: {first})"


def _as_numpy(x: object) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, (list, tuple)) and x and all(isinstance(v, torch.Tensor) for v in x):
        return torch.stack([v.detach().cpu() for v in x]).numpy()  # type: ignore[arg-type]
    return np.asarray(x)


def _validated(name: str, coords: np.ndarray, flip: np.ndarray, index: np.ndarray,
               prob: np.ndarray) -> FkdLabels:
    """Check shapes and value ranges and convert to the canonical dtypes."""
    def bad(what: str) -> LabelStoreError:
        return LabelStoreError(f"FKD label file {name}: {what}")

    if coords.ndim != 2 or coords.shape[1] != 4:
        raise bad(f"coords have shape {coords.shape}, expected (M, 4)")
    m = coords.shape[0]
    if m == 0:
        raise bad("holds no crops (M = 0)")
    if flip.shape != (m,):
        raise bad(f"flip has shape {flip.shape}, expected ({m},) to match {m} crops")
    if index.ndim != 2 or index.shape[0] != m or prob.shape != index.shape:
        raise bad(f"class ids {index.shape} and probabilities {prob.shape} must both be (M={m}, K)")
    if not np.issubdtype(index.dtype, np.integer) and np.any(index != np.round(index)):
        raise bad("class ids are not whole numbers")
    if flip.dtype != np.bool_ and not np.all(np.isin(flip, (0, 1))):
        raise bad("flip holds values other than 0/1")
    coords = coords.astype(np.float32)
    prob = prob.astype(np.float32)
    if not np.all(np.isfinite(coords)):
        raise bad("coords hold NaN or infinity")
    y, x, h, w = coords.T
    tol = _BOX_TOLERANCE
    if np.any(h <= 0) or np.any(w <= 0) or np.any(y < -tol) or np.any(x < -tol) \
            or np.any(y + h > 1 + tol) or np.any(x + w > 1 + tol):
        raise bad("a box lies outside the image; coords must be (i/H, j/W, h/H, w/W) fractions in [0, 1]")
    if np.any(index < 0):
        raise bad("negative class ids")
    if not np.all(np.isfinite(prob)) or np.any(prob < 0) or np.any(prob > 1 + _PROB_TOLERANCE):
        raise bad("probabilities outside [0, 1]")
    return FkdLabels(coords, flip.astype(bool), index.astype(np.int64), prob)

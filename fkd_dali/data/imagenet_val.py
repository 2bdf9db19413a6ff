"""ImageNet's validation folder as users have it: flat, with its ground truth in a separate file.

ILSVRC2012's validation archive unpacks to one folder of `ILSVRC2012_val_00000001.JPEG`
... `ILSVRC2012_val_00050000.JPEG`; the class of each image is in one of two files:

- the devkit's `ILSVRC2012_validation_ground_truth.txt` (one ILSVRC2012 id per line,
  line i for image i), whose ids the devkit's `meta.mat` maps to WordNet ids (the ids
  are not in sorted-WordNet-id order, so the map cannot be guessed);
- Kaggle's `LOC_val_solution.csv` (`ImageId,PredictionString`, the WordNet id first in
  every box of the prediction string).

`validation_index` turns such a folder into the same `DatasetIndex` as a folder with
class subfolders: its class names are the WordNet ids present, so the evaluation maps
them to the student's classes exactly as it maps class folders (by WordNet id to
ImageNet's 1000 classes, or by name to the training folder's classes). Imports stay
light (no numpy until an index is built): the CLI uses `flat_folder_problem` in its
early checks.
"""
from __future__ import annotations

import csv
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from fkd_dali.errors import ConfigError, DatasetIndexError

if TYPE_CHECKING:
    from fkd_dali.data.index import DatasetIndex

GROUND_TRUTH_TXT = "ILSVRC2012_validation_ground_truth.txt"
META_MAT = "meta.mat"
LOC_CSV = "LOC_val_solution.csv"
_IMAGE_EXT = (".jpg", ".jpeg", ".png")
_WNID = re.compile(r"^n\d{8}$")
_REMEDY = (f"give the devkit's {GROUND_TRUTH_TXT} (with {META_MAT} beside it), the devkit folder, or {LOC_CSV}")


def _images_in(folder: Path) -> list[str]:
    """File names of the images directly in `folder`, sorted (ILSVRC2012's names sort by image number)."""
    return sorted(e.name for e in os.scandir(folder)
                  if e.is_file() and os.path.splitext(e.name)[1].lower() in _IMAGE_EXT)


def flat_folder_problem(folder: str, flag: str, labels_flag: str, val_labels: str | None) -> str | None:
    """Why `folder` and `val_labels` do not go together (None when they do); only lists the folder.

    A folder of images without class subfolders needs the ground-truth file; a folder
    with class subfolders must not get one (its classes are the folders).
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None  # missing or unreadable: the caller's folder check says so
    has_classes = any(e.is_dir() and not e.name.startswith(".") for e in entries)
    has_images = any(e.is_file() and os.path.splitext(e.name)[1].lower() in _IMAGE_EXT for e in entries)
    if val_labels is None and has_images and not has_classes:
        return (f"{flag} {folder} holds images but no class folders (ImageNet's flat validation folder?): add "
                f"{labels_flag} FILE with its ground truth ({GROUND_TRUTH_TXT} or {LOC_CSV})")
    if val_labels is not None and has_classes and not has_images:
        return (f"{labels_flag} is for a flat folder of images, but {flag} {folder} has class folders (their names "
                f"are the classes): drop {labels_flag}")
    return None


def find_ground_truth(path: str) -> Path:
    """The ground-truth file named by `path`: the file itself, or inside a devkit folder (or its data/)."""
    p = Path(path)
    if not p.is_dir():
        return p
    for candidate in (p / GROUND_TRUTH_TXT, p / "data" / GROUND_TRUTH_TXT, p / LOC_CSV):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"--val-labels {path}: the folder holds no {GROUND_TRUTH_TXT} (nor data/{GROUND_TRUTH_TXT}, "
                      f"nor {LOC_CSV}); {_REMEDY}")


def read_val_labels(path: str) -> dict[str, str]:
    """{image name without extension: WordNet id} from a devkit ground-truth file or LOC_val_solution.csv.

    Raises:
        ConfigError: the file cannot be read or parsed, or (devkit) its meta.mat is missing
            or lacks an id the file uses; the message names the file and the remedy.
    """
    file = find_ground_truth(path)
    try:
        if file.suffix.lower() == ".csv":
            return _read_loc_csv(file)
        return _read_devkit(file)
    except OSError as e:
        raise ConfigError(f"--val-labels {file}: cannot read the file ({e.strerror or e})") from None


def _read_loc_csv(file: Path) -> dict[str, str]:
    """Kaggle's LOC_val_solution.csv: `ImageId,PredictionString`, the class first in every box."""
    with open(file, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:2]] != ["ImageId", "PredictionString"]:
        raise ConfigError(f"--val-labels {file}: expected Kaggle's {LOC_CSV} with the header "
                          "ImageId,PredictionString; " + _REMEDY)
    truth = {}
    for n, row in enumerate(rows[1:], start=2):
        words = row[1].split() if len(row) >= 2 else []
        if not words or not _WNID.match(words[0]):
            raise ConfigError(f"--val-labels {file}: line {n} has no WordNet id (like n01440764) first in its "
                              f"PredictionString: {','.join(row)[:80]!r}")
        truth[row[0].strip()] = words[0]
    return truth


def _read_devkit(file: Path) -> dict[str, str]:
    """The devkit's ground truth: line i is the ILSVRC2012 id of ILSVRC2012_val_{i:08d}; meta.mat maps ids to WordNet ids."""
    ids = file.read_text().split()
    if not all(i.isdigit() for i in ids) or not ids:
        raise ConfigError(f"--val-labels {file}: expected one ILSVRC2012 class id per line (the devkit's "
                          f"{GROUND_TRUTH_TXT}); {_REMEDY}")
    wnid = _devkit_wnids(file.parent / META_MAT, file)
    unknown = sorted({int(i) for i in ids} - set(wnid))
    if unknown:
        raise ConfigError(f"--val-labels {file}: ids {unknown[:5]} are not in {file.parent / META_MAT}; use the "
                          "meta.mat of the same devkit")
    return {f"ILSVRC2012_val_{n:08d}": wnid[int(i)] for n, i in enumerate(ids, start=1)}


def _devkit_wnids(meta: Path, file: Path) -> dict[int, str]:
    """{ILSVRC2012 id: WordNet id} from the devkit's meta.mat (scipy reads MATLAB files)."""
    import scipy.io

    if not meta.is_file():
        raise ConfigError(f"--val-labels {file}: the ILSVRC2012 ids need the devkit's {META_MAT} beside the file "
                          f"(ILSVRC2012_devkit_t12/data/{META_MAT}); give the file where the devkit unpacked it")
    try:
        synsets = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
        return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets.ravel()}
    except Exception as e:  # scipy raises several types for a damaged or foreign .mat file
        raise ConfigError(f"--val-labels {file}: cannot read {meta} as the devkit's synset table "
                          f"({type(e).__name__}: {e})") from None


def build_flat_index(root: str | os.PathLike[str], val_labels: str, workers: int = 16) -> DatasetIndex:
    """The `DatasetIndex` of a flat folder of images whose classes `val_labels` gives (module docstring).

    Class names are the WordNet ids of the images present (sorted), class ids their
    positions, as for class folders. Ground-truth entries without an image are allowed
    (a subset of the validation set); an image without an entry is an error.

    Raises:
        DatasetIndexError: the folder holds no images, or images the ground truth does not name.
        ConfigError: the ground-truth file cannot be read (see `read_val_labels`).
    """
    import numpy as np

    from fkd_dali.data.index import DatasetIndex, read_image_header

    folder = Path(root).expanduser().resolve()
    names = _images_in(folder)
    if not names:
        raise DatasetIndexError(f"validation folder {folder} holds no images ({', '.join(_IMAGE_EXT)})")
    truth = read_val_labels(val_labels)
    missing = [n for n in names if os.path.splitext(n)[0] not in truth]
    if missing:
        raise DatasetIndexError(f"{len(missing)} of the {len(names)} images in {folder} have no entry in "
                                f"--val-labels {val_labels} (first: {missing[0]}); give the ground truth of this "
                                "folder's images")
    wnids = [truth[os.path.splitext(n)[0]] for n in names]
    class_names = sorted(set(wnids))
    position = {c: i for i, c in enumerate(class_names)}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        meta = np.array(list(pool.map(lambda n: read_image_header(str(folder / n)), names, chunksize=256)),
                        dtype=np.int64).reshape(-1, 3)
    return DatasetIndex(root=str(folder), paths=names, classes=np.array([position[w] for w in wnids], np.int32),
                        sizes=meta[:, :2].astype(np.int32), nbytes=meta[:, 2].copy(), class_names=class_names)


def validation_index(folder: str | os.PathLike[str], val_labels: str | None = None,
                     flag: str = "--val", labels_flag: str = "--val-labels") -> DatasetIndex:
    """The index of a validation folder: class subfolders, or flat with `val_labels` (its ground truth)."""
    from fkd_dali.data.index import build_index

    problem = flat_folder_problem(str(folder), flag, labels_flag, val_labels)
    if problem is not None:
        raise ConfigError(problem)
    if val_labels is not None:
        return build_flat_index(folder, val_labels)
    return build_index(folder)

"""The dataset index: an ordered, fingerprinted list of the images of an ImageNet-style folder.

Layout `root/<class>/<file>`; class ids are the positions of the sorted class folder
names (as torchvision's ImageFolder numbers them); files are sorted within a class.
Image sizes come from file headers (no decode), in stored orientation: EXIF rotation
is ignored everywhere in fkd-dali so that a box means the same pixels in every
pipeline. The fingerprint covers paths, byte sizes and class names, so a store can
tell whether it was made for the folder it is used with (`scan_folder` lists what that
check needs without opening an image; `fkd_dali.store.label_store.index_for_store` does it).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from fkd_dali.errors import CorruptImageError, DatasetIndexError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class DatasetIndex:
    """Paths (relative, '/'-separated), class ids, (height, width) and byte sizes."""

    root: str
    paths: list[str]
    classes: np.ndarray  # (N,) int32
    sizes: np.ndarray  # (N, 2) int32: height, width
    nbytes: np.ndarray  # (N,) int64
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.paths)
        if not (len(self.classes) == len(self.sizes) == len(self.nbytes) == n):
            raise DatasetIndexError("index arrays disagree in length")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.paths, self.nbytes, self.class_names)

    def abspath(self, i: int) -> str:
        return os.path.join(self.root, self.paths[i])


def dataset_fingerprint(paths: Sequence[str], nbytes: Sequence[int], class_names: Sequence[str]) -> str:
    """sha256 over class names, then one `path<TAB>bytes` line per image, in index order."""
    h = hashlib.sha256()
    h.update(("\n".join(class_names) + "\n\n").encode())
    for p, b in zip(paths, nbytes):
        h.update(f"{p}\t{int(b)}\n".encode())
    return h.hexdigest()


def _list_classes(root: Path) -> list[str]:
    if not root.is_dir():
        raise DatasetIndexError(
            f"data folder {root} does not exist or is not a folder; expected root/<class>/<image>.JPEG")
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DatasetIndexError(f"data folder {root} has no class folders; expected root/<class>/<image>.JPEG")
    return names


def _list_images(root: Path, class_name: str) -> list[os.DirEntry[str]]:
    folder = root / class_name
    files = sorted((e for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)),
                   key=lambda e: e.name)
    if not files:
        raise DatasetIndexError(
            f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "remove it or add its images")
    return files


def _walk(root_path: Path) -> tuple[list[str], list[str], list[int], list[os.DirEntry[str]]]:
    """(class names, relative paths, class ids, directory entries) in index order; no file is opened."""
    class_names = _list_classes(root_path)
    rel_paths: list[str] = []
    labels: list[int] = []
    entries: list[os.DirEntry[str]] = []
    for cid, name in enumerate(class_names):
        files = _list_images(root_path, name)
        rel_paths += [f"{name}/{e.name}" for e in files]
        labels += [cid] * len(files)
        entries += files
    return class_names, rel_paths, labels, entries


def _entry_size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat().st_size
    except FileNotFoundError as e:
        raise DatasetIndexError(f"image {entry.path} disappeared while indexing") from e


def scan_folder(root: str | os.PathLike[str]) -> tuple[list[str], list[str], np.ndarray]:
    """(class names, relative paths, byte sizes) of a folder, in `build_index` order.

    Lists directories and stats files only (no image is opened): enough for the
    fingerprint, and fast on ImageNet-sized folders. Raises as `build_index` does for a
    missing folder, a folder without class folders or a class folder without images.
    """
    class_names, rel_paths, _, entries = _walk(Path(root).expanduser().resolve())
    return class_names, rel_paths, np.array([_entry_size(e) for e in entries], dtype=np.int64)


def read_image_header(path: str, full_decode: bool = False) -> tuple[int, int, int]:
    """(height, width, byte size) of an image from its header; `full_decode` also decodes it.

    Raises:
        CorruptImageError: the header (or, with `full_decode`, the data) is unreadable.
    """
    try:
        nbytes = os.path.getsize(path)
        with Image.open(path) as im:
            width, height = im.size
            if full_decode:
                im.load()
    except FileNotFoundError as e:
        raise DatasetIndexError(f"image {path} disappeared while indexing") from e
    except Exception as e:  # PIL raises many types for bad files
        raise CorruptImageError(path, f"{type(e).__name__}: {e}") from e
    return height, width, nbytes


def build_index(root: str | os.PathLike[str], workers: int = 16, skip_corrupt: bool = False,
                progress: bool = False) -> DatasetIndex:
    """Index an ImageNet-style folder, reading headers in parallel threads.

    Args:
        root: folder with one sub-folder per class.
        workers: header-reading threads (I/O bound; more than cores is fine).
        skip_corrupt: fully decode every image and leave out (and record in
            `skipped`) those that fail, instead of raising on the first bad header.
        progress: show a progress bar (files/s, ETA) for folders of 10,000+ files.
    """
    root_path = Path(root).expanduser().resolve()
    class_names, rel_paths, labels, _ = _walk(root_path)

    def header(rel: str) -> tuple[int, int, int] | str:
        try:
            return read_image_header(str(root_path / rel), full_decode=skip_corrupt)
        except CorruptImageError as e:
            if skip_corrupt:
                return str(e)
            raise

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(rel_paths), unit="file", unit_scale=True, desc="index", dynamic_ncols=True,
                 disable=not progress or len(rel_paths) < 10_000) as bar:
        results = []
        for r in pool.map(header, rel_paths, chunksize=256):
            results.append(r)
            bar.update(1)
    keep = [i for i, r in enumerate(results) if not isinstance(r, str)]
    skipped = [rel_paths[i] for i, r in enumerate(results) if isinstance(r, str)]
    if not keep:
        raise DatasetIndexError(f"no readable images under {root_path}")
    meta = np.array([results[i] for i in keep], dtype=np.int64).reshape(-1, 3)
    return DatasetIndex(
        root=str(root_path),
        paths=[rel_paths[i] for i in keep],
        classes=np.array([labels[i] for i in keep], dtype=np.int32),
        sizes=meta[:, :2].astype(np.int32),
        nbytes=meta[:, 2].copy(),
        class_names=class_names,
        skipped=skipped,
    )

"""Moving labels between a soft-label store and FKD's per-image label files, both ways.

FKD keeps one file per image at `<root>/<class>/<stem>.tar` (format in
`fkd_dali.interop.fkd_files`). Export writes one such file per store image; import builds a
store from a folder of them plus the dataset they label. Boxes travel as float32
fractions (i/H, j/W, h/H, w/W), which carry the store's uint16 encoding exactly, and
probabilities as float32, which carry float16 exactly: export followed by import
gives back the same boxes, flips, class ids and probabilities. Both sides work one
store chunk at a time.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from fkd_dali.crops.boxes import CropDistribution, boxes_to_fractions, fractions_to_boxes
from fkd_dali.data.index import build_index
from fkd_dali.defaults import FKD_NUM_CLASSES, IMPORTED_TEACHER_NAME, INTERPOLATION
from fkd_dali.errors import LabelStoreError
from fkd_dali.interop.fkd_files import FKD_SUFFIX, FkdLabels, fkd_file_paths, read_fkd_file, write_fkd_file
from fkd_dali.store.checks import read_written
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.opening import StoreNeeds, open_checked_store, open_or_create_store
from fkd_dali.store.schema import (
    IMPORT_ATTR_KEY,
    TOPK_ONLY,
    CropLabels,
    LabelKind,
    LabelSpec,
    StoreLayout,
    StoreSpec,
    TeacherSpec,
)


def export_fkd(url: str, out_dir: str | os.PathLike[str], storage_options: dict | None = None) -> int:
    """Write every image's crops of a complete store as FKD label files under `out_dir`.

    File names follow `fkd_file_paths` (FKD's `<class>/<stem>.tar`, whole file names
    for images that share a stem). Each file is written atomically, so an interrupted
    export leaves only whole files (rerunning it overwrites them). A `full`-kind store
    exports its top-K part.

    Returns:
        The number of files written (one per image, all distinct).

    Raises:
        LabelStoreError: the store is missing, incomplete or damaged (`StoreDamageError`), or
            holds logits (kind "logits": no class probabilities to export).
    """
    store, _ = open_checked_store(url, StoreNeeds(no_logits="export-fkd: FKD's label files hold class "
                                                  "probabilities, so there is nothing to export them as"),
                                  storage_options=storage_options)
    index = store.load_index()
    _prepare_out_dir(Path(out_dir))
    targets = fkd_file_paths(out_dir, index.paths)
    written = 0
    for chunk in range(store.n_chunks):
        start, stop = store.chunk_range(chunk)
        labels = read_written(store, start, stop, TOPK_ONLY)
        coords = boxes_to_fractions(labels.boxes, index.sizes[start:stop])
        for row in range(stop - start):
            target = targets[start + row]
            try:
                write_fkd_file(target, coords[row], labels.flips[row], labels.index[row],
                               labels.prob[row].astype(np.float32))
            except OSError as e:
                raise LabelStoreError(f"writing FKD label file {target} failed ({e.strerror or e}); the files "
                                      "written so far are whole: fix the cause and rerun export-fkd") from e
            written += 1
    return written


def _prepare_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise LabelStoreError(f"--out {out} is a file; export-fkd writes a folder of label files: choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LabelStoreError(f"cannot create --out {out} ({e.strerror or e}); choose a writable folder") from e


def import_fkd(fkd_dir: str | os.PathLike[str], data: str | os.PathLike[str], out: str,
               teacher_name: str = IMPORTED_TEACHER_NAME, num_classes: int = FKD_NUM_CLASSES,
               timm_name: str = "unknown", checkpoint_sha256: str = "",
               input_size: tuple[int, int, int] = (3, 224, 224), interpolation: str = INTERPOLATION,
               mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
               std: tuple[float, float, float] = IMAGENET_DEFAULT_STD, temperature: float = 1.0,
               layout: StoreLayout | None = None, storage_options: dict | None = None) -> LabelStore:
    """Build a store at `out` from FKD label files, one per image of the dataset at `data`.

    M and K come from the first image's file; every other file must agree. FKD files
    do not say which crop distribution or teacher made them, so the store records the
    given teacher fields and the default crop distribution with seed 0 as
    placeholders, and notes in its `fkd_dali_import` attribute that both are
    unknown. Crops whose probabilities are not sorted most probable first are
    reordered (class ids with them), as the store requires. Label files are found
    with `fkd_file_paths` (the names `export_fkd` writes).

    Resumable like label generation: chunks are written whole and flagged done, so an
    interrupted import is finished by rerunning it with the same arguments (a store
    made with other ones is refused with what differs).

    Args:
        fkd_dir: root of the label files (`<fkd_dir>/<class>/<stem>.tar`).
        data: the ImageNet-style dataset folder the files label.
        out: the store (created, or resumed if an import left it incomplete).
        teacher_name .. temperature: recorded in the store's teacher and label specs.
        num_classes: size of the teacher's class space (class ids must lie below it).
        layout: chunk shape of the new store (default `StoreLayout()`).

    Raises:
        LabelStoreError: a label file is missing, malformed, disagrees with the first
            file in M or K, or holds a class id >= num_classes (the message names the
            file; chunks imported before it stay, and a rerun resumes); `out` holds
            another store.
    """
    index = build_index(data, digest=True)  # the store vouches for the files as they are at import
    sources = fkd_file_paths(fkd_dir, index.paths)
    first = _read(sources[0], None, num_classes, index.paths[0])
    m, k = first.coords.shape[0], first.index.shape[1]
    spec = StoreSpec(
        crops_per_image=m, crop=CropDistribution(seed=0),
        label=LabelSpec(kind=LabelKind.TOPK, k=k, num_classes=num_classes, temperature=temperature),
        teacher=TeacherSpec(name=teacher_name, timm_name=timm_name, checkpoint_sha256=checkpoint_sha256,
                            input_size=tuple(input_size), interpolation=interpolation,  # type: ignore[arg-type]
                            mean=tuple(mean), std=tuple(std)),  # type: ignore[arg-type]
        layout=layout or StoreLayout())
    store = open_or_create_store(out, index, spec, storage_options=storage_options)
    if IMPORT_ATTR_KEY not in store.group.attrs:
        store.group.attrs[IMPORT_ATTR_KEY] = {"source": str(fkd_dir), "format": "FKD per-image files",
                                              "crop_distribution": "unknown (placeholder recorded)",
                                              "teacher": "as given to import-fkd"}
    for chunk in store.missing_chunks():
        start, stop = store.chunk_range(chunk)
        files = [_read(sources[i], (m, k), num_classes, index.paths[i]) for i in range(start, stop)]
        store.write_chunk(chunk, _stack(files, index.sizes[start:stop]))
    return store


def _read(path: Path, mk: tuple[int, int] | None, num_classes: int, image: str) -> FkdLabels:
    """One image's FKD file, checked against the store's M, K and class count, sorted by probability."""
    if path.name != PurePosixPath(image).stem + FKD_SUFFIX and not path.exists():
        raise LabelStoreError(
            f"FKD label file {path} does not exist: image {image} shares its stem with another image of its "
            f"folder, so its labels are in a file named after the whole file name, as `fkd-dali labels export-fkd` "
            "writes it (FKD's own naming gives such images one file between them, which cannot be imported)")
    labels = read_fkd_file(path)
    shape = (labels.coords.shape[0], labels.index.shape[1])
    if mk is not None and shape != mk:
        raise LabelStoreError(f"FKD label file {path} holds M={shape[0]} crops with K={shape[1]} classes, but "
                              f"the first file holds M={mk[0]}, K={mk[1]}: all files of one import must agree")
    if labels.index.max() >= num_classes:
        raise LabelStoreError(f"FKD label file {path} has class id {int(labels.index.max())}, not below "
                              f"num_classes={num_classes}; pass the teacher's class count (--num-classes)")
    order = np.argsort(-labels.prob, axis=1, kind="stable")
    return FkdLabels(labels.coords, labels.flip, np.take_along_axis(labels.index, order, 1),
                     np.take_along_axis(labels.prob, order, 1))


def _stack(files: list[FkdLabels], sizes: np.ndarray) -> CropLabels:
    return CropLabels(boxes=fractions_to_boxes(np.stack([f.coords for f in files]), sizes),
                      flips=np.stack([f.flip for f in files]),
                      index=np.stack([f.index for f in files]).astype(np.int16),
                      prob=np.clip(np.stack([f.prob for f in files]), 0.0, 1.0).astype(np.float16))

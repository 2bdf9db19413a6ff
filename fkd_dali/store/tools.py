"""Tools over an existing soft-label store: summary (`info`), integrity check (`verify`), crop preview (`show`).

All of them only read the store. `verify_store` reads whole image chunks at a time
(the store's write unit), never one image at a time, so it runs at pass-read speed
on ImageNet-size stores; `render_crops` reads the crops of a single image, which is
fine for a preview of one image.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fkd_dali.crops.boxes import decode_boxes
from fkd_dali.data.digest import crc32c
from fkd_dali.data.index import DatasetIndex, check_image_data, index_order_key
from fkd_dali.defaults import SHOW_MAX_CROPS
from fkd_dali.errors import CorruptImageError, DatasetIndexError, StoreDamageError, StoreMismatchError
from fkd_dali.store.checks import index_for_store, missing_chunk_files, read_written
from fkd_dali.store.ground_truth import consistent_gt_prob
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.opening import open_store
from fkd_dali.store.schema import (
    ENSEMBLE_TIMM_NAME,
    IMPORT_ATTR_KEY,
    MERGE_ATTR_KEY,
    NO_CHECKSUM_IN_OLD_STORES,
    PROB_QUANTUM,
    CropLabels,
    LabelKind,
    array_mismatches,
)

MAX_EXAMPLES = 5  # offending (image, slot) pairs kept per problem kind
PROB_SUM_TOLERANCE = 1e-2  # K float16 roundings of probabilities summing to <= 1
_PREVIEW_SIDE = 160  # pixels of each crop panel in `render_crops`


# -- info ---------------------------------------------------------------------
def store_info(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready summary of a store: what it holds, how it was made, how complete it is.

    Keys: url, schema_version, dataset, crops_per_image, label (with `width` D for kind
    "logits"), teacher, crop, layout, gt_prob (the ground-truth mapping, None without
    labels/gt_prob), completeness (done/total chunks, missing image ranges), storage
    (bytes stored, bytes per image), created, writer_version, and `imported` where the
    store came from FKD files (`fkd_dali.interop.fkd_store.import_fkd`).
    """
    # info shows what it can; verify lists array metadata problems
    store = open_store(url, check_arrays=False, storage_options=storage_options)
    meta, spec = store.meta, store.spec
    missing = store.missing_chunks()
    stored = store.nbytes_stored()
    t = spec.teacher
    info: dict[str, Any] = {
        "url": str(url),
        "schema_version": meta["schema_version"],
        "dataset": {"n_images": store.n_images, "fingerprint": store.fingerprint,
                    "n_classes": len(store.class_names), "skipped": len(store.skipped),
                    "file_digest": meta["dataset"].get("file_digest")},
        "crops_per_image": spec.crops_per_image,
        "label": {"kind": spec.label.kind, "k": spec.label.k, "num_classes": spec.label.num_classes,
                  "temperature": spec.label.temperature,
                  **({"width": spec.label.num_classes} if spec.label.kind is LabelKind.LOGITS else {})},
        "teacher": {"name": t.name, "timm_name": t.timm_name, "checkpoint_sha256": _short_hashes(t.checkpoint_sha256),
                    "input_size": list(t.input_size), "interpolation": t.interpolation,
                    "mean": list(t.mean), "std": list(t.std)},
        "crop": {"scale": list(spec.crop.scale), "ratio": list(spec.crop.ratio),
                 "flip_prob": spec.crop.flip_prob, "seed": spec.crop.seed},
        "layout": dict(meta["layout"]),
        "gt_prob": ({"mapping": spec.gt.mapping, "teacher_class_of_folder": list(spec.gt.teacher_class)}
                    if spec.gt is not None else None),
        "completeness": {"chunks_done": store.n_chunks - len(missing), "chunks_total": store.n_chunks,
                         "complete": not missing,
                         "missing_images": [list(_inclusive(store.chunk_range(c))) for c in missing]},
        "storage": {"bytes_stored": stored, "bytes_per_image": round(stored / max(1, store.n_images), 1)},
        "created": meta.get("created"),
        "writer_version": meta.get("writer_version"),
    }
    imported = store.group.attrs.get(IMPORT_ATTR_KEY)
    if imported is not None:
        info["imported"] = imported
    if t.timm_name == ENSEMBLE_TIMM_NAME:
        info["merged"] = store.group.attrs.get(MERGE_ATTR_KEY)  # None: merged by an older fkd-dali
    return info


def _short_hashes(joined: str) -> str:
    """A checkpoint hash cut to 16 characters; a merged store's comma-joined hashes each kept whole
    (they are 12-character prefixes already, and cutting the joined text would drop teachers)."""
    return joined if "," in joined else joined[:16]


def _inclusive(rng: tuple[int, int]) -> tuple[int, int]:
    return rng[0], rng[1] - 1


def _describe_labels(lab: dict[str, Any]) -> str:
    if lab["kind"] == "logits":
        return (f"logits: width D={lab['num_classes']}, all D raw teacher outputs per crop (float16, no temperature "
                f"applied: chosen at training); top-{lab['k']} preview (softmax at 1)")
    return f"{lab['kind']} K={lab['k']} of {lab['num_classes']} classes, temperature {lab['temperature']}"


def _describe_gt(gt: dict[str, Any] | None) -> str:
    if gt is None:
        return "no (`fkd-dali labels add-gt-prob STORE --data DIR` adds it)"
    how = {"imagenet_wnid": "by ImageNet WordNet id", "folder_order": "in sorted-folder order"}[gt["mapping"]]
    return f"yes: labels/gt_prob, folder classes mapped to teacher classes {how}"


def format_store_info(info: dict[str, Any]) -> str:
    """The human-readable form of `store_info` that `fkd-dali labels info` prints."""
    d, lab, t, c, comp, st = (info[k] for k in ("dataset", "label", "teacher", "crop", "completeness", "storage"))
    missing = ", ".join(f"{a}-{b}" for a, b in comp["missing_images"][:8])
    if len(comp["missing_images"]) > 8:
        missing += f" and {len(comp['missing_images']) - 8} more ranges"
    lines = [
        f"store           {info['url']}",
        f"schema          v{info['schema_version']} (written by fkd-dali {info['writer_version']}, "
        f"{info['created']})",
        f"dataset         {d['n_images']} images, {d['n_classes']} classes, fingerprint {d['fingerprint'][:16]}"
        + (f", {d['skipped']} skipped" if d["skipped"] else "")
        + (f", file digests {d['file_digest']}" if d.get("file_digest") else
           ", no file digests (older store: image contents are not checked)"),
        f"crops           M={info['crops_per_image']} per image, scale {c['scale']}, ratio "
        f"{[round(r, 4) for r in c['ratio']]}, flip p={c['flip_prob']}, seed {c['seed']}",
        f"labels          {_describe_labels(lab)}",
        *(_merged_teacher_lines(t, info["merged"]) if "merged" in info else _teacher_lines(t)),
        f"layout          {info['layout']}",
        f"gt_prob         {_describe_gt(info['gt_prob'])}",
        f"completeness    {comp['chunks_done']}/{comp['chunks_total']} chunks done"
        + (f"; missing images {missing}" if missing else ""),
        f"storage         {st['bytes_stored']:,} bytes, {st['bytes_per_image']:,.1f} bytes/image",
    ]
    if "imported" in info:
        lines.append(f"imported        {info['imported']}")
    return "\n".join(lines)


def _teacher_lines(t: dict[str, Any]) -> list[str]:
    return [f"teacher         {t['name']} (timm {t['timm_name']}, sha256 {t['checkpoint_sha256'] or '-'}), "
            f"input {'x'.join(map(str, t['input_size']))} {t['interpolation']}",
            f"normalization   mean {t['mean']}, std {t['std']}"]


def _merged_teacher_lines(t: dict[str, Any], merged: dict[str, Any] | None) -> list[str]:
    """The teacher and normalization lines of a merged store: one line per teacher, with its own pixels."""
    if merged is None:
        return [f"teacher         {t['name']} (sha256 {t['checkpoint_sha256']}; merged by an older fkd-dali, which "
                "recorded only the first teacher's input)",
                f"normalization   first teacher's: mean {t['mean']}, std {t['std']}"]
    lines = [f"teacher         {t['name']}: {len(merged['teachers'])} teachers, weighted mean of their top-K"]
    for i, m in enumerate(merged["teachers"]):
        lines.append(f"  teacher {i + 1}     {m['name']} (timm {m['timm_name']}, sha256 "
                     f"{m['checkpoint_sha256'][:16] or '-'}), weight {m['weight']:g}, K={m['k']}, input "
                     f"{'x'.join(map(str, m['input_size']))} {m['interpolation']}, mean {m['mean']}, std {m['std']}, "
                     f"from {m['store']}")
    return lines


# -- verify -------------------------------------------------------------------
@dataclass
class Problem:
    """One kind of defect: how many crops (or chunks) have it and the first few where."""

    kind: str
    description: str
    count: int = 0
    examples: list[tuple[str, int]] = field(default_factory=list)  # (image path, slot); slot -1: whole image

    def line(self) -> str:
        where = ", ".join(f"{p}[slot {s}]" if s >= 0 else p for p, s in self.examples)
        return f"{self.kind}: {self.description} ({self.count} found" + (f"; first: {where})" if where else ")")


@dataclass
class VerifyReport:
    """The outcome of `verify_store`: counters plus the problems found (empty when clean)."""

    url: str
    n_images: int
    chunks_total: int
    chunks_checked: int = 0
    crops_checked: int = 0
    dataset_checked: bool = False
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts that are not problems (e.g. an older store's format)
    damaged_chunks: list[int] = field(default_factory=list)  # done image chunks with any problem

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, kind: str) -> Problem | None:
        return next((p for p in self.problems if p.kind == kind), None)

    def summary(self) -> str:
        head = (f"{self.url}: checked {self.chunks_checked}/{self.chunks_total} chunks, "
                f"{self.crops_checked} crops" + (", dataset fingerprint" if self.dataset_checked else ""))
        notes = [f"  note: {n}" for n in self.notes]
        if self.ok:
            return "\n".join([head + ": no problems found"] + notes)
        lines = [head + f": {len(self.problems)} kind(s) of problem"] + [f"  - {p.line()}" for p in self.problems]
        if self.damaged_chunks:
            lines.append(f"  {len(self.damaged_chunks)} damaged chunk(s) {self.damaged_chunks}: "
                         f"`fkd-dali labels repair {self.url} --data DIR` recomputes them")
        return "\n".join(lines + notes)


class _Problems:
    """Collects problems in first-seen order, keeping a few examples of each."""

    def __init__(self) -> None:
        self.by_kind: dict[str, Problem] = {}

    def total(self) -> int:
        return sum(p.count for p in self.by_kind.values())

    def add(self, kind: str, description: str, examples: list[tuple[str, int]], count: int) -> None:
        if count == 0:
            return
        p = self.by_kind.setdefault(kind, Problem(kind, description))
        p.count += count
        p.examples.extend(examples[:MAX_EXAMPLES - len(p.examples)])


def prob_sum_floor(k: int, num_classes: int) -> float:
    """The least plausible sum of a crop's stored top-K probabilities.

    The K largest of num_classes softmax probabilities (which sum to 1) sum to at least
    K / num_classes; each stored value may be rounded down by half a `PROB_QUANTUM`.
    A crop below this floor is not a softmax's top-K: e.g. all zeros, which an
    ensemble with a NaN weight would write. Where the floor is not above zero, only
    an all-zero crop is refused.
    """
    return k / num_classes - k * PROB_QUANTUM / 2


def verify_store(url: str, data: str | None = None, workers: int = 16,
                 storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """Check a store's metadata, index, completeness, every stored value and (with `data`) the images.

    - metadata: every array exists with the shape, dtype, chunks, fill value and crc32c
      codec that the attributes imply (`array_defs`); the attributes' own checksum is
      checked when the store is opened;
    - index: the stored paths, byte sizes and class names reproduce the dataset
      fingerprint recorded at creation, each path lies in its class's folder, paths
      are unique and in index order, sizes positive (this catches a damaged
      `images/path` even in stores written before it had a checksum);
    - values, over every chunk flagged done, one whole chunk at a time: probabilities
      finite, in [0, 1], non-increasing along K, summing to at most 1 +
      `PROB_SUM_TOLERANCE` and at least `prob_sum_floor`; class ids in
      [0, num_classes) and distinct within a crop; boxes non-empty and inside the
      image. A chunk that cannot be read (e.g. a crc32c mismatch) is `unreadable`, a
      chunk file of a done chunk that is not in the store `chunk_file_missing`
      (`LabelStore.missing_chunk_files`); the image chunks with any of these problems
      are `report.damaged_chunks`, what `labels repair` recomputes;
    - with `data`: the folder's fingerprint, then every image decoded strictly
      (`check_image_data`, in `workers` threads), its decoded size compared with
      `images/size` and, in stores that record them, its crc32c with `images/crc32c`
      (`image_changed`: replaced or edited since labelling).

    Raises:
        LabelStoreError: the store cannot be opened at all (damaged attributes included).
        DatasetIndexError: `data` is not a readable dataset folder.
    """
    # array metadata is reported below, not refused
    store = open_store(url, check_arrays=False, storage_options=storage_options)
    report = VerifyReport(url=str(url), n_images=store.n_images, chunks_total=store.n_chunks)
    found = _Problems()
    _check_metadata(store, found, report.notes)
    index = _checked_index(store, found)
    try:
        missing = store.missing_chunks()
    except Exception as e:  # codec / checksum errors of progress/done
        found.add("unreadable", f"array progress/done cannot be read ({type(e).__name__}: {e})", [], 1)
        missing = list(range(store.n_chunks))
    if missing:
        ranges = [store.chunk_range(c) for c in missing]
        found.add("incomplete", f"{len(missing)} of {store.n_chunks} chunks not written ({store.resume_hint()})",
                  [(f"images {a}-{b - 1}", -1) for a, b in ranges], len(missing))
    if data is not None:
        report.dataset_checked = True
        try:
            on_disk = index_for_store(store, data)  # names the first differing file, reads no image header
        except StoreMismatchError as e:
            found.add("dataset", str(e), [], 1)
        else:
            if index is not None:
                _check_images(on_disk, found, workers)
    if index is None:
        report.problems = list(found.by_kind.values())
        return report
    damaged = set()
    skip = set(missing)
    gt_classes = store.gt_classes() if store.has_gt_prob else None
    for name, chunk in missing_chunk_files(store, done=[c for c in range(store.n_chunks) if c not in skip]):
        found.add("chunk_file_missing", "a chunk file of a chunk flagged done is not in the store (deleted or "
                                        "lost: it reads back as fill values)", [(name, -1)], 1)
        damaged.add(chunk)
    for chunk in (c for c in range(store.n_chunks) if c not in skip):
        start, stop = store.chunk_range(chunk)
        try:
            labels = store.read_images(start, stop)
        except StoreDamageError as e:  # checksum / codec errors; `e.chunk` names the file
            found.add("unreadable", "chunk data cannot be read (checksum mismatch or undecodable: the file is "
                                    "damaged)", [(str(e.chunk or f"images {start}-{stop - 1}"), -1)], 1)
            damaged.add(chunk)
            continue
        before = found.total()
        _check_values(labels, index.paths[start:stop], index.sizes[start:stop],
                      store.spec.label.num_classes, found)
        if labels.dense is not None:
            _check_dense(labels.dense, store.spec.label.kind, index.paths[start:stop], found)
        if gt_classes is not None:
            _check_gt_prob(labels, gt_classes[start:stop], index.paths[start:stop], found)
        if found.total() > before:
            damaged.add(chunk)
        report.chunks_checked += 1
        report.crops_checked += labels.flips.size
    report.problems = list(found.by_kind.values())
    report.damaged_chunks = sorted(damaged)
    return report


def _check_metadata(store: LabelStore, found: _Problems, notes: list[str]) -> None:
    """Every array as the attributes imply; a missing crc32c of an old store is a note, not a problem."""
    unchecked = []
    for d in store.array_defs():
        for kind, text in array_mismatches(store.group, d):
            if kind == "checksum" and d.name in NO_CHECKSUM_IN_OLD_STORES:
                unchecked.append(d.name)
            else:
                found.add("metadata", "array metadata differs from what the attributes imply", [(text, -1)], 1)
    if unchecked:
        notes.append(f"{', '.join(unchecked)} have no crc32c checksum (a store written by an older fkd-dali): their content "
                     "is checked against the dataset fingerprint and the index rules instead")


def _checked_index(store: LabelStore, found: _Problems) -> DatasetIndex | None:
    """The stored index after the index rules; None (with a problem) when an index array cannot be read."""
    try:
        index = store.load_index()
    except Exception as e:  # crc32c mismatch or a missing chunk of an images/ array
        found.add("unreadable", f"the image index (images/*) cannot be read ({type(e).__name__}: {e}); "
                                "chunk values were not checked", [], 1)
        return None
    n = len(index)
    if index.fingerprint != store.fingerprint:
        found.add("index_fingerprint", "images/path, images/nbytes or the class names do not reproduce the dataset "
                           f"fingerprint recorded at creation ({store.fingerprint[:12]}): the index was changed "
                           "or damaged; regenerate the store", [], 1)
    class_of = [p.split("/", 1)[0] for p in index.paths]
    cid = np.asarray(index.classes, np.int64)
    in_range = (cid >= 0) & (cid < len(index.class_names))
    wrong = [i for i in range(n) if not in_range[i] or class_of[i] != index.class_names[cid[i]]]
    found.add("index_class", "image path is not in the folder of its class id (images/class or images/path damaged)",
              [(index.paths[i], -1) for i in wrong[:MAX_EXAMPLES]], len(wrong))
    position = {name: i for i, name in enumerate(index.class_names)}
    keys = [index_order_key(p, position) for p in index.paths]
    unordered = [i for i in range(1, n) if not keys[i - 1] < keys[i]]  # also catches repeated paths
    found.add("index_order", "image paths repeat or are out of index order (images/path damaged)",
              [(index.paths[i], -1) for i in unordered[:MAX_EXAMPLES]], len(unordered))
    bad_size = np.flatnonzero((index.sizes <= 0).any(axis=1))
    found.add("index_size", "image size is not positive (images/size damaged)",
              [(index.paths[i], -1) for i in bad_size[:MAX_EXAMPLES]], len(bad_size))
    return index


def _check_images(index: DatasetIndex, found: _Problems, workers: int) -> None:
    """Decode every image of the folder strictly, compare its size with the stored one and, where the store
    records them, its crc32c with the one recorded at labelling."""
    expected = None if index.digests is None else index.digests.crc32c
    changed: list[int] = []

    def decoded(i: int) -> tuple[int, int] | str:
        try:
            data = np.fromfile(index.abspath(i), dtype=np.uint8)
            if expected is not None and crc32c(data) != int(expected[i]):
                changed.append(i)
            return check_image_data(data, index.abspath(i))
        except (CorruptImageError, OSError) as e:
            return getattr(e, "reason", str(e))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(decoded, range(len(index)), chunksize=64))
    changed.sort()
    found.add("image_changed", "file content differs from the crc32c recorded at labelling (replaced or edited "
                               "since: restore the original file or regenerate the labels)",
              [(index.paths[i], -1) for i in changed[:MAX_EXAMPLES]], len(changed))
    corrupt = [(index.paths[i], r) for i, r in enumerate(results) if isinstance(r, str)]
    found.add("image_corrupt", "image cannot be decoded cleanly (replace the file)",
              [(f"{p} ({why})", -1) for p, why in corrupt[:MAX_EXAMPLES]], len(corrupt))
    other = [i for i, r in enumerate(results) if not isinstance(r, str) and tuple(r) != tuple(index.sizes[i])]
    found.add("image_size", "decoded image size differs from images/size (another file under the same name?)",
              [(f"{index.paths[i]} ({results[i][1]}x{results[i][0]} on disk, {index.sizes[i][1]}x"
                f"{index.sizes[i][0]} stored)", -1) for i in other[:MAX_EXAMPLES]], len(other))


def _check_values(labels: CropLabels, paths: list[str], sizes: np.ndarray, num_classes: int,
                  found: _Problems) -> None:
    """Per-crop value checks of one chunk; each mask is (images, slots)."""
    prob = labels.prob.astype(np.float32)
    idx = labels.index.astype(np.int64)
    finite = np.isfinite(prob)
    k = prob.shape[-1]
    floor = prob_sum_floor(k, num_classes)
    with np.errstate(invalid="ignore"):
        total = prob.sum(-1)
        checks = [
            ("prob_nonfinite", "probability is NaN or infinite (unwritten or corrupt)", ~finite.all(-1)),
            ("prob_range", "probability outside [0, 1]", ((prob < 0) | (prob > 1)).any(-1)),
            ("prob_order", "probabilities not sorted most probable first", (np.diff(prob, axis=-1) > 0).any(-1)),
            ("prob_sum", f"top-K probabilities sum above 1 + {PROB_SUM_TOLERANCE}", total > 1 + PROB_SUM_TOLERANCE),
            ("prob_sum_low", f"top-K probabilities sum below {max(floor, 0):.3g}, which no softmax over "
                             f"{num_classes} classes gives (e.g. all zero)",
             (total < floor) | (total <= 0)),
            ("index_range", f"class id outside [0, {num_classes})", ((idx < 0) | (idx >= num_classes)).any(-1)),
            ("index_duplicate", "a class id repeats within one crop",
             (np.diff(np.sort(idx, axis=-1), axis=-1) == 0).any(-1)),
        ]
    y, x, h, w = np.moveaxis(decode_boxes(labels.boxes, sizes).astype(np.int64), -1, 0)
    height, width = sizes[:, 0:1].astype(np.int64), sizes[:, 1:2].astype(np.int64)
    checks += [
        ("box_empty", "box has zero height or width", (h <= 0) | (w <= 0)),
        ("box_outside", "box extends past the image border", (y + h > height) | (x + w > width)),
    ]
    for kind, description, bad in checks:
        rows, slots = np.nonzero(bad)
        found.add(kind, description, [(paths[r], int(s)) for r, s in zip(rows[:MAX_EXAMPLES], slots)],
                  int(bad.sum()))


def _add_crops(found: _Problems, kind: str, description: str, bad: np.ndarray, paths: list[str]) -> None:
    rows, slots = np.nonzero(bad)
    found.add(kind, description, [(paths[r], int(s)) for r, s in zip(rows[:MAX_EXAMPLES], slots)], int(bad.sum()))


def _check_dense(dense: np.ndarray, kind: str, paths: list[str], found: _Problems) -> None:
    """The dense values (labels/full probabilities, labels/logits raw outputs) must be finite."""
    bad = ~np.isfinite(dense.astype(np.float32)).all(-1)
    _add_crops(found, f"{kind}_nonfinite", f"labels/{kind} holds NaN or infinite values (unwritten or corrupt)",
               bad, paths)


def _check_gt_prob(labels: CropLabels, gt: np.ndarray, paths: list[str], found: _Problems) -> None:
    """gt_prob finite, in [0, 1], and consistent with the top-K: the stored probability itself where the
    ground-truth class is among the top-K (both are the same softmax value, rounded alike), at most the
    K-th probability elsewhere."""
    gt_prob = labels.gt_prob.astype(np.float32)  # type: ignore[union-attr]
    consistent = consistent_gt_prob(gt_prob, labels.index, labels.prob, gt).astype(np.float32)
    with np.errstate(invalid="ignore"):
        checks = [
            ("gt_prob_nonfinite", "ground-truth probability is NaN or infinite (unwritten or corrupt)",
             ~np.isfinite(gt_prob)),
            ("gt_prob_range", "ground-truth probability outside [0, 1]", (gt_prob < 0) | (gt_prob > 1)),
            ("gt_prob_topk", "ground-truth probability disagrees with the stored top-K (differs from the top-K "
                             "probability of that class, or exceeds the K-th where the class is not among them)",
             np.isfinite(gt_prob) & (gt_prob != consistent)),
        ]
    for kind, description, bad in checks:
        _add_crops(found, kind, description, bad, paths)


# -- show ---------------------------------------------------------------------
def resolve_image(store: LabelStore, image: int | str) -> int:
    """An image index from an index or a dataset-relative path (a string of digits is an index)."""
    paths = [str(p) for p in store.read("images/path")]
    if isinstance(image, str):
        rel = image.replace(os.sep, "/")
        if rel in paths:
            return paths.index(rel)
        if not rel.isdigit():
            raise DatasetIndexError(f"image {image!r} is not in store {store.url}; give an index in "
                                    f"[0, {len(paths)}) or a path like {paths[0]!r}")
        image = int(rel)
    if not 0 <= image < len(paths):
        raise DatasetIndexError(f"image index {image} is out of range: store {store.url} has {len(paths)} images")
    return int(image)


def class_namer(num_classes: int, dataset_classes: list[str]) -> Callable[[int], str]:
    """index -> readable class name: ImageNet descriptions, else the dataset's folders, else 'class i'."""
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return lambda i: info.index_to_description(int(i))
    if num_classes == len(dataset_classes):
        return lambda i: dataset_classes[int(i)]
    return lambda i: f"class {int(i)}"


def render_crops(url: str, image: int | str, out_png: str | os.PathLike[str], data_root: str | None,
                 max_crops: int = SHOW_MAX_CROPS, storage_options: dict[str, Any] | None = None) -> Path:
    """Draw one image's stored crops as a PNG grid, each captioned with its top-3 classes
    (a "logits" store: its 3 largest raw outputs, "dim i value").

    The first panel is the image as stored on disk (no EXIF rotation, as everywhere in
    fkd-dali) with the boxes outlined and numbered by slot; then each crop cut from
    it, flipped where stored, resized to 160x160 as a teacher sees it.

    Args:
        url: the store.
        image: image index, or its path relative to the dataset root.
        out_png: the file to write (parent folders are created).
        data_root: the dataset folder the store was made for.
        max_crops: show at most this many slots (the first ones).

    Raises:
        DatasetIndexError: no `data_root`, or the image file is missing there or has
            another size than the store recorded.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    if data_root is None:
        raise DatasetIndexError("showing crops needs the image files: pass --data DIR, the dataset folder "
                                "the labels were generated for")
    store = open_store(url, storage_options=storage_options)
    i = resolve_image(store, image)
    index = store.load_index(str(data_root))
    path = index.abspath(i)
    if not os.path.isfile(path):
        raise DatasetIndexError(f"image {index.paths[i]} of store {url} is not at {path}; pass the dataset "
                                "folder the labels were generated for as --data")
    with Image.open(path) as im:
        pil = im.convert("RGB")
    height, width = (int(v) for v in index.sizes[i])
    if pil.size != (width, height):
        raise DatasetIndexError(f"{path} is {pil.size[0]}x{pil.size[1]} but the store recorded {width}x{height}: "
                                "it is not the file the labels were made for")
    logits = store.spec.label.kind is LabelKind.LOGITS
    labels = read_written(store, i, i + 1)
    n = min(max_crops, store.crops_per_image)
    boxes = decode_boxes(labels.boxes[:, :n], index.sizes[i:i + 1])[0]
    name = (lambda c: f"dim {int(c)}") if logits else class_namer(store.spec.label.num_classes, store.class_names)

    ncols = min(5, n + 1)
    nrows = -(-(n + 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.9 * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    first = axes.flat[0]
    first.imshow(pil)
    first.set_title(f"#{i} {index.paths[i]}\n{width}x{height}, class {index.class_names[index.classes[i]]}",
                    fontsize=6.5)
    for s, (y, x, h, w) in enumerate(boxes):
        colour = plt.cm.tab10(s % 10)
        first.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=1))
        first.text(x + 2, y + 2, str(s), color=colour, fontsize=6, va="top")
    for s, (y, x, h, w) in enumerate(boxes):
        crop = pil.crop((int(x), int(y), int(x + w), int(y + h)))
        if labels.flips[0, s]:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        ax = axes.flat[s + 1]
        ax.imshow(crop.resize((_PREVIEW_SIDE, _PREVIEW_SIDE), Image.Resampling.BICUBIC))
        top = [f"{_short(name(c))} {v:.2f}" for c, v in top_values(labels, 0, s)]
        ax.set_title(f"slot {s}{' (flipped)' if labels.flips[0, s] else ''}\n" + "\n".join(top), fontsize=6.5)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def top_values(labels: CropLabels, row: int, slot: int, n: int = 3) -> list[tuple[int, float]]:
    """(class, value) of a crop's n largest stored values: probabilities, or raw outputs of a "logits" store."""
    if labels.logits is not None:
        values = labels.logits[row, slot].astype(np.float32)
        top = np.argsort(-values, kind="stable")[:n]
        return [(int(c), float(values[c])) for c in top]
    return [(int(c), float(p)) for c, p in zip(labels.index[row, slot, :n], labels.prob[row, slot, :n])]


def _short(text: str, limit: int = 24) -> str:
    text = text.split(",")[0]
    return text if len(text) <= limit else text[:limit - 1] + "…"

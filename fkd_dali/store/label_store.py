"""The Zarr soft-label store (schema versions 1 and 2): create, open, validate, write chunks, read passes.

One Zarr v3 group per dataset + teacher (layout in docs/design.md). Invariants kept here:
- chunks are laid out crop-slot-major, (images_per_chunk, slots_per_chunk, ...), so a
  training pass (a few slots for every image) is one sequential read per array;
- every field's chunks cover the same image ranges, so a writer owns whole chunks of
  every array and writers on different image chunks never touch the same file;
- a chunk's `progress/done` flag (one file per flag) is written only after all of its
  data, so a killed writer leaves no chunk that claims to be complete but is not;
- unwritten rows read back as index -1 / NaN probability, never as plausible labels.

Schema: version 1 is the layout of docs/design.md, optionally with `labels/gt_prob` (the
teacher's probability of each crop's ground-truth class) and its `gt_prob` attribute
section: releases that do not know them ignore both safely. Version 2 is written only
for label kind `logits` (raw teacher outputs in `labels/logits`), which a release that
reads version 1 alone must refuse rather than misread. Both are read here.

Reading never trusts the files blindly: a missing array, unreadable metadata or a chunk
that fails its checksum raises a `LabelStoreError` naming the store, the array and the
chunk (`LabelStore.read`), and fill values in chunks flagged done (a chunk file deleted
after it was written) are found by `LabelStore.check_written` on the data in memory.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, TransposeCodec
from zarr.errors import ContainsArrayError, ContainsGroupError

from fkd_dali import __version__
from fkd_dali.crops.boxes import CropDistribution
from fkd_dali.data.index import DatasetIndex, scan_folder
from fkd_dali.defaults import IMAGES_PER_CHUNK, SLOTS_PER_CHUNK
from fkd_dali.errors import ConfigError, LabelStoreError, StoreDamageError, StoreMismatchError, StoreSchemaError
from fkd_dali.store.creation import (
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
from fkd_dali.store.damage import (
    CROP_KEYS,
    FILL_WORDS,
    RECOPY,
    all_false_implausible,
    chunk_files,
    describe_chunk,
    failing_chunk,
    fill_masks,
    first_line,
    inclusive,
    listed_files,
    open_failure,
    repair_hint,
    sel_bounds,
    store_key,
)

SCHEMA_VERSION = 2  # the newest version this release writes
READABLE_SCHEMA_VERSIONS = (1, 2)
ATTR_KEY = "fkd_dali"
CHECKSUM_KEY = "fkd_dali_sha256"  # sha256 of the `fkd_dali` attributes, beside them (not part of them)
IMPORT_ATTR_KEY = "fkd_dali_import"  # provenance of a store built by `labels import-fkd`
ENSEMBLE_TIMM_NAME = "ensemble"  # teacher.timm_name of a store written by `labels merge`
_log = logging.getLogger(__name__)
BOX_ENCODING = "uint16-normalized"
LABEL_KINDS = ("topk", "full", "logits")
GT_MAPPINGS = ("imagenet_wnid", "folder_order")  # how folder classes become teacher classes (`GroundTruthSpec`)


@dataclass(frozen=True)
class LabelSpec:
    """What a stored label is: top-K (or full) softmax of the teacher at `temperature`.

    Kind `logits` (self-supervised teachers) stores the teacher's `num_classes` = D raw
    outputs in `labels/logits`; no temperature is applied (`temperature` None: training
    chooses it), and the top-K arrays hold a preview (softmax at 1 of the top-K outputs)
    for `labels show` and `verify`, never a training target.
    """

    kind: str = "topk"
    k: int = 5
    num_classes: int = 1000
    temperature: float | None = 1.0

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise ConfigError(f"label kind must be one of {LABEL_KINDS}, got {self.kind!r}")
        if not 1 <= self.k <= self.num_classes:
            raise ConfigError(f"top-k must be in [1, num_classes={self.num_classes}], got {self.k}")
        if self.kind == "logits":
            if self.temperature is not None:
                raise ConfigError(f"a logits store applies no temperature (got {self.temperature}); it is chosen "
                                  "at training time")
        elif self.temperature is None or not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class GroundTruthSpec:
    """How the ground truth of `labels/gt_prob` is defined: the teacher class of each folder class.

    `teacher_class[c]` is the teacher's class index of the dataset's class folder c (in
    sorted-folder order); `mapping` says how it was found: "imagenet_wnid" (WordNet-id
    folders and a 1000-class ImageNet teacher) or "folder_order" (a teacher trained on
    this folder dataset, whose class i is the i-th folder).
    """

    mapping: str
    teacher_class: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.mapping not in GT_MAPPINGS:
            raise ConfigError(f"ground-truth mapping must be one of {GT_MAPPINGS}, got {self.mapping!r}")

    def of_images(self, folder_class: np.ndarray) -> np.ndarray:
        """(n,) int64 teacher class of images whose folder classes are `folder_class`."""
        return np.asarray(self.teacher_class, np.int64)[np.asarray(folder_class, np.int64)]


@dataclass(frozen=True)
class TeacherSpec:
    """Which teacher made the labels and the pixels it was given."""

    name: str
    timm_name: str
    checkpoint_sha256: str
    input_size: tuple[int, int, int]
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class StoreLayout:
    """Chunk shape in (images, crop slots). Chosen for sequential pass reads (see docs/design.md)."""

    images_per_chunk: int = IMAGES_PER_CHUNK
    slots_per_chunk: int = SLOTS_PER_CHUNK

    def __post_init__(self) -> None:
        if self.images_per_chunk < 1 or self.slots_per_chunk < 1:
            raise ConfigError(f"chunk sizes must be >= 1, got {self}")


@dataclass(frozen=True)
class StoreSpec:
    """Everything that defines a store's content apart from the dataset itself."""

    crops_per_image: int
    crop: CropDistribution
    label: LabelSpec
    teacher: TeacherSpec
    layout: StoreLayout = field(default_factory=StoreLayout)
    gt: GroundTruthSpec | None = None  # `labels/gt_prob` is stored (`labels generate --gt-prob`)

    def __post_init__(self) -> None:
        if self.crops_per_image < 1:
            raise ConfigError(f"crops per image must be >= 1, got {self.crops_per_image}")
        if self.gt is not None and not all(0 <= c < self.label.num_classes for c in self.gt.teacher_class):
            raise ConfigError(f"ground-truth classes must lie in [0, {self.label.num_classes})")

    @property
    def schema_version(self) -> int:
        """The oldest schema that describes this store (2 only for kind `logits`, see the module docstring)."""
        return 2 if self.label.kind == "logits" else 1


@dataclass
class CropLabels:
    """Stored fields for a block of images x slots (numpy, as the store keeps them)."""

    boxes: np.ndarray  # (n, s, 4) uint16 fractions of (H, W, H, W)
    flips: np.ndarray  # (n, s) bool
    index: np.ndarray  # (n, s, K) int16, most probable first
    prob: np.ndarray  # (n, s, K) float16
    full: np.ndarray | None = None  # (n, s, C) float16, kind "full" only
    logits: np.ndarray | None = None  # (n, s, D) float16 raw teacher outputs, kind "logits" only
    gt_prob: np.ndarray | None = None  # (n, s) float16 probability of the ground-truth class (`StoreSpec.gt`)

    def by_array(self) -> dict[str, np.ndarray | None]:
        """The fields keyed by the store array they come from ("crops/box", ...)."""
        return {"crops/box": self.boxes, "crops/flip": self.flips, "labels/index": self.index,
                "labels/prob": self.prob, "labels/full": self.full, "labels/logits": self.logits,
                "labels/gt_prob": self.gt_prob}

    @property
    def dense(self) -> np.ndarray | None:
        """The dense per-crop values: probabilities of a "full" store, logits of a "logits" one."""
        return self.full if self.full is not None else self.logits


def _json_ready(obj: Any) -> Any:
    """Tuples -> lists recursively: zarr attributes must be plain JSON."""
    return json.loads(json.dumps(obj))


def spec_to_attrs(spec: StoreSpec, index: DatasetIndex) -> dict[str, Any]:
    meta = {
        "schema_version": spec.schema_version,
        "dataset": {"n_images": len(index), "fingerprint": index.fingerprint,
                    "class_names": index.class_names, "skipped": index.skipped},
        "crops_per_image": spec.crops_per_image,
        "crop": asdict(spec.crop),
        "label": asdict(spec.label),
        "teacher": asdict(spec.teacher),
        "layout": {**asdict(spec.layout), "box_encoding": BOX_ENCODING, "prob_quantum": PROB_QUANTUM},
        "writer_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if spec.gt is not None:
        meta[GT_ATTR] = gt_to_attrs(spec.gt)
    return _json_ready(meta)


GT_ATTR = "gt_prob"  # section of the `fkd_dali` attributes present when `labels/gt_prob` is stored


def gt_to_attrs(gt: GroundTruthSpec) -> dict[str, Any]:
    return {"mapping": gt.mapping, "teacher_class": [int(c) for c in gt.teacher_class]}


def spec_from_attrs(meta: dict[str, Any]) -> StoreSpec:
    t = meta["teacher"]
    gt = meta.get(GT_ATTR)
    layout = {k: v for k, v in meta["layout"].items() if k not in ("box_encoding", "prob_quantum")}
    return StoreSpec(
        crops_per_image=int(meta["crops_per_image"]),
        crop=CropDistribution(scale=tuple(meta["crop"]["scale"]), ratio=tuple(meta["crop"]["ratio"]),
                              flip_prob=float(meta["crop"]["flip_prob"]), seed=int(meta["crop"]["seed"])),
        label=LabelSpec(**meta["label"]),
        teacher=TeacherSpec(name=t["name"], timm_name=t["timm_name"], checkpoint_sha256=t["checkpoint_sha256"],
                            input_size=tuple(t["input_size"]), interpolation=t["interpolation"],
                            mean=tuple(t["mean"]), std=tuple(t["std"])),
        layout=StoreLayout(**layout),
        gt=None if gt is None else GroundTruthSpec(mapping=gt["mapping"],
                                                   teacher_class=tuple(int(c) for c in gt["teacher_class"])),
    )


def attrs_checksum(meta: dict[str, Any]) -> str:
    """sha256 of the schema attributes as canonical JSON: shows a hand edit or a damaged zarr.json."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _parse_attrs(meta: dict[str, Any], url: str) -> StoreSpec:
    """`spec_from_attrs` plus the dataset section, with one-line errors for edited or damaged attributes."""
    try:
        spec = spec_from_attrs(meta)
        dataset = meta["dataset"]
        n = dataset["n_images"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"dataset.n_images is {n!r}, not a whole number >= 1")
        if not isinstance(dataset["fingerprint"], str) or not isinstance(dataset["class_names"], list):
            raise ValueError("dataset.fingerprint or dataset.class_names has the wrong type")
        if spec.gt is not None and len(spec.gt.teacher_class) != len(dataset["class_names"]):
            raise ValueError(f"{GT_ATTR}.teacher_class has {len(spec.gt.teacher_class)} entries for "
                             f"{len(dataset['class_names'])} class folders")
    except KeyError as e:
        reason = f"the key {e.args[0]!r} is missing"
    except (TypeError, ValueError, AttributeError, ConfigError) as e:
        reason = str(e)
    else:
        return spec
    raise LabelStoreError(f"store {url}: its '{ATTR_KEY}' attributes are damaged or were edited by hand ({reason}). "
                          "Restore zarr.json from a copy or regenerate the store.")


def _not_a_store_message(marker: Any, url: str) -> str:
    """Why a Zarr group without schema attributes (`marker`: its creator marker) is not usable, and what to do."""
    if not isinstance(marker, dict):
        return (f"{url} is a Zarr group but not an fkd-dali soft-label store (no '{ATTR_KEY}' attributes); "
                "choose another path, or remove it with " + clear_command(url) + " if it is a leftover")
    return (f"{url} is a half-created store ({describe_creator(marker)} did not finish creating it: killed, "
            f"disk full or crashed); it holds no labels. Remove it with {clear_command(url)} and rerun")


def _compressors(shuffle: str = "bitshuffle") -> list[Any]:
    # zstd packs the fields tightly; crc32c turns a flipped byte into a read error
    # instead of silently wrong labels.
    return [BloscCodec(cname="zstd", clevel=5, shuffle=shuffle), Crc32cCodec()]


# Measured on real teacher labels (bytes per crop, zstd-5): boxes 8.0 plain vs 7.7 with
# the coordinate axis first + bit-shuffle; class ids 2.8 unshuffled vs 5.1 bit-shuffled;
# probabilities 8.6 as they come vs 6.9 quantised to 2**-12 and transposed.
_K_FIRST = TransposeCodec(order=(2, 0, 1))
PROB_QUANTUM = 2.0 ** -12  # absolute rounding of stored probabilities (<= 1.2e-4 error)


def quantize_prob(prob: np.ndarray) -> np.ndarray:
    """Round probabilities to multiples of `PROB_QUANTUM` (idempotent), as float16.

    Clears the low mantissa bits of small probabilities, which are noise for a soft
    label but cost ~2 bytes per crop after compression.
    """
    p = np.asarray(prob, dtype=np.float32)
    return (np.round(p / PROB_QUANTUM) * PROB_QUANTUM).astype(np.float16)


class LabelStore:
    """An opened store. Use `create_store`, `open_store` or `open_or_create_store`."""

    def __init__(self, group: zarr.Group, url: str) -> None:
        self.group = group
        self.url = url
        meta = group.attrs.get(ATTR_KEY)
        if meta is None:
            raise LabelStoreError(_not_a_store_message(group.attrs.get(CREATING_KEY), url))
        if not isinstance(meta, dict):
            raise LabelStoreError(f"store {url}: its '{ATTR_KEY}' attribute is a {type(meta).__name__}, not a "
                                  "mapping: damaged or edited by hand. Restore zarr.json from a copy or regenerate it.")
        version = meta.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS or isinstance(version, bool):
            readable = " and ".join(repr(v) for v in READABLE_SCHEMA_VERSIONS)
            raise StoreSchemaError(
                f"store {url} has schema version {version!r}; this fkd-dali ({__version__}) reads only "
                f"versions {readable}. Use the fkd-dali release that wrote it, or regenerate the labels.")
        self.meta: dict[str, Any] = meta
        self.spec = _parse_attrs(meta, url)
        stored = group.attrs.get(CHECKSUM_KEY)
        if stored is not None and stored != attrs_checksum(meta):
            raise LabelStoreError(
                f"store {url}: its '{ATTR_KEY}' attributes do not match their checksum ({CHECKSUM_KEY}): they were "
                "edited or damaged after creation. Restore zarr.json from a copy or regenerate the store.")
        for d in array_defs(self.spec, self.n_images):
            self.array(d.name)  # a missing array or unreadable metadata: one line naming it
            bad = next((text for kind, text in array_mismatches(group, d) if kind == "shape"), None)
            if bad:
                raise LabelStoreError(f"store {url} is damaged: {bad}. Regenerate it (or restore it from a copy).")

    # -- shape and progress -------------------------------------------------
    @property
    def n_images(self) -> int:
        return int(self.meta["dataset"]["n_images"])

    @property
    def crops_per_image(self) -> int:
        return self.spec.crops_per_image

    @property
    def fingerprint(self) -> str:
        return str(self.meta["dataset"]["fingerprint"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["dataset"]["class_names"])

    @property
    def skipped(self) -> list[str]:
        """Files of the folder left out at labelling time (`--skip-corrupt`)."""
        return list(self.meta["dataset"].get("skipped", []))

    @property
    def has_gt_prob(self) -> bool:
        """Whether `labels/gt_prob` is stored (complete whenever the store is: see `StoreSpec.gt`)."""
        return self.spec.gt is not None

    def gt_classes(self) -> np.ndarray:
        """(N,) int64 ground-truth class of every image in the teacher's classes (stores with gt_prob)."""
        if self.spec.gt is None:
            raise LabelStoreError(self.no_gt_prob_message())
        return self.spec.gt.of_images(self.read("images/class"))

    def no_gt_prob_message(self) -> str:
        return (f"store {self.url} has no ground-truth probabilities (labels/gt_prob): add them with "
                f"`fkd-dali labels add-gt-prob {self.url} --data DIR` (the teacher runs over the stored crops again)")

    def crop_keys(self) -> tuple[str, ...]:
        """The per-crop arrays this store has (`CROP_KEYS` less those its label kind and gt_prob leave out)."""
        kind = self.spec.label.kind
        skip = {"labels/full"} if kind != "full" else set()
        skip |= {"labels/logits"} if kind != "logits" else set()
        skip |= {"labels/gt_prob"} if self.spec.gt is None else set()
        return tuple(k for k in CROP_KEYS if k not in skip)

    @property
    def n_chunks(self) -> int:
        ipc = self.spec.layout.images_per_chunk
        return (self.n_images + ipc - 1) // ipc

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        ipc = self.spec.layout.images_per_chunk
        return chunk * ipc, min((chunk + 1) * ipc, self.n_images)

    def describe_crops(self, images: np.ndarray, slots: np.ndarray, limit: int = 3) -> str:
        """"images 8-15 slots 0-3, ..." for the distinct (image chunk, slot chunk) pairs of the crops given."""
        ipc, spc = self.spec.layout.images_per_chunk, self.spec.layout.slots_per_chunk
        pairs = sorted(set(zip((images // ipc).tolist(), (slots // spc).tolist())))
        parts = []
        for c, j in pairs[:limit]:
            a, b = self.chunk_range(c)
            parts.append(f"images {a}-{b - 1} slots {j * spc}-{min((j + 1) * spc, self.crops_per_image) - 1}")
        more = f" and {len(pairs) - limit} more chunks" if len(pairs) > limit else ""
        return ", ".join(parts) + more

    def done(self) -> np.ndarray:
        return self.read("progress/done").astype(bool)

    def missing_chunks(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(~self.done())]

    def check_complete(self) -> None:
        """Raise naming the unfinished image ranges and how to finish them."""
        missing = self.missing_chunks()
        if missing:
            ranges = ", ".join(f"{a}-{b - 1}" for a, b in (self.chunk_range(c) for c in missing[:5]))
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise LabelStoreError(
                f"store {self.url} is incomplete: {len(missing)} of {self.n_chunks} chunks unfinished "
                f"(images {ranges}{more}). Rerun the same `fkd-dali labels {self.made_by}` command to resume.")

    @property
    def made_by(self) -> str:
        """The `fkd-dali labels` action that writes this store's chunks (and resumes it)."""
        if IMPORT_ATTR_KEY in self.group.attrs:
            return "import-fkd"
        return "merge" if self.spec.teacher.timm_name == ENSEMBLE_TIMM_NAME else "generate"

    # -- dataset ------------------------------------------------------------
    def load_index(self, root: str = "") -> DatasetIndex:
        """The dataset index saved at creation (paths relative to `root`)."""
        return DatasetIndex(root=root, paths=[str(p) for p in self.read("images/path")],
                            classes=self.read("images/class").astype(np.int32),
                            sizes=self.read("images/size").astype(np.int32),
                            nbytes=self.read("images/nbytes").astype(np.int64),
                            class_names=self.class_names, skipped=self.skipped,
                            left_out=[(p, "left out when the store was made (could not be decoded)")
                                      for p in self.skipped])

    def check_dataset(self, index: DatasetIndex) -> None:
        """Raise `StoreMismatchError` saying which part of the dataset fingerprint differs."""
        if index.fingerprint == self.fingerprint:
            return
        stored = self.load_index()
        raise StoreMismatchError(
            f"store {self.url} was made for another dataset: fingerprint {self.fingerprint[:12]} "
            f"(store) != {index.fingerprint[:12]} ({index.root}); {describe_difference(stored, index)}. "
            "Point --data at the folder the labels were generated for, or regenerate the labels.")

    # -- writing ------------------------------------------------------------
    def write_chunk(self, chunk: int, labels: CropLabels) -> None:
        """Write all fields of one image chunk (all slots), then its done flag."""
        start, stop = self.chunk_range(chunk)
        n, m = stop - start, self.crops_per_image
        k = self.spec.label.k
        _check_shape("crops/box", labels.boxes, (n, m, 4))
        _check_shape("crops/flip", labels.flips, (n, m))
        _check_shape("labels/index", labels.index, (n, m, k))
        _check_shape("labels/prob", labels.prob, (n, m, k))
        kind, width = self.spec.label.kind, self.spec.label.num_classes
        dense = {"full": labels.full, "logits": labels.logits}.get(kind)
        if kind in ("full", "logits"):
            if dense is None:
                raise LabelStoreError(f"a store of label kind {kind!r} needs its dense values (labels/{kind})")
            _check_shape(f"labels/{kind}", dense, (n, m, width))
        if self.spec.gt is not None:
            if labels.gt_prob is None:
                raise LabelStoreError("a store with gt_prob needs the ground-truth probabilities of every crop")
            _check_shape("labels/gt_prob", labels.gt_prob, (n, m))
        g = self.group
        try:
            g["crops/box"][start:stop] = labels.boxes.astype(np.uint16)
            g["crops/flip"][start:stop] = labels.flips.astype(bool)
            g["labels/index"][start:stop] = labels.index.astype(np.int16)
            g["labels/prob"][start:stop] = quantize_prob(labels.prob)
            if dense is not None:
                g[f"labels/{kind}"][start:stop] = dense.astype(np.float16)
            if self.spec.gt is not None:
                g["labels/gt_prob"][start:stop] = quantize_prob(labels.gt_prob)
            g["progress/done"][chunk] = True
        except OSError as e:  # e.g. ENOSPC: the chunk stays unflagged, so a rerun redoes it
            raise LabelStoreError(
                f"writing images {start}-{stop - 1} to {self.url} failed ({e}); the store is still valid: "
                "fix the cause (free disk space?) and rerun the same command to resume") from e

    def clear_chunk(self, chunk: int) -> None:
        """Make image chunk `chunk` unwritten again (for `labels repair`): done flag first, then its files.

        Clearing the flag first means a crash in between leaves a chunk that a rerun of
        generation simply redoes; deleting the files of every crop array (all slot chunks)
        means the rewrite never reads a damaged file back.
        """
        from zarr.core.sync import sync

        self.array("progress/done")[chunk] = False
        for key in self.crop_keys():
            arr = self.array(key)
            for name in chunk_files(key, arr, chunk):
                sync(arr.store_path.store.delete(store_key(self.group, name)))

    # -- adding gt_prob to a store made without it (`labels add-gt-prob`) ----
    def prepare_gt_arrays(self) -> None:
        """Create `labels/gt_prob` and its done flags `progress/gt_done` (kept if there: a resumed run).

        The attributes do not mention gt_prob until `attach_gt` has run after every chunk,
        so readers never see a partly written array as stored ground-truth probabilities.
        """
        for d in (gt_prob_def(self.spec, self.n_images), gt_done_def(self.spec, self.n_images)):
            if d.name in self.group:
                bad = [text for _, text in array_mismatches(self.group, d)]
                if bad:
                    raise LabelStoreError(f"store {self.url}: {bad[0]} (left by another fkd-dali release?); "
                                          f"remove the folders {d.name} and labels/gt_prob and rerun")
                continue
            try:
                create_array(self.group, d)
            except OSError as e:
                raise LabelStoreError(f"cannot add {d.name} to the store {self.url} ({e.strerror or e}); "
                                      "fix the cause and rerun") from e

    def gt_missing_chunks(self) -> list[int]:
        """Image chunks whose gt_prob `labels add-gt-prob` has not written yet."""
        return [int(c) for c in np.flatnonzero(~self.read("progress/gt_done").astype(bool))]

    def write_gt_chunk(self, chunk: int, gt_prob: np.ndarray) -> None:
        """Write only `labels/gt_prob` of image chunk `chunk` (quantised as `labels/prob`), then its gt done flag."""
        start, stop = self.chunk_range(chunk)
        _check_shape("labels/gt_prob", gt_prob, (stop - start, self.crops_per_image))
        try:
            self.group["labels/gt_prob"][start:stop] = quantize_prob(gt_prob)
            self.group["progress/gt_done"][chunk] = True
        except OSError as e:
            raise LabelStoreError(
                f"writing the gt_prob of images {start}-{stop - 1} to {self.url} failed ({e}); the store is still "
                "valid: fix the cause (free disk space?) and rerun the same command to resume") from e

    def attach_gt(self, gt: GroundTruthSpec) -> None:
        """Record `gt` in the attributes (with their checksum, in one write): gt_prob is stored from now on."""
        meta = {**self.meta, GT_ATTR: gt_to_attrs(gt)}
        self.group.attrs.update({ATTR_KEY: meta, CHECKSUM_KEY: attrs_checksum(meta)})
        self.meta, self.spec = meta, _parse_attrs(meta, self.url)

    # -- reading ------------------------------------------------------------
    def read_images(self, start: int, stop: int, with_full: bool = False, check: bool = False,
                    with_gt_prob: bool = False) -> CropLabels:
        """All slots of images [start, stop) (for tools and interop, not the training hot path).

        `with_full` also reads the dense values (labels/full or labels/logits, as the
        label kind has them), `with_gt_prob` labels/gt_prob where the store has it. With
        `check`, data that must be complete is refused when it holds fill values
        (`check_written`); without it, unwritten rows read back as fill values.
        """
        labels = self._read((slice(start, stop), slice(None)), with_full, with_gt_prob)
        if check:
            self.check_written(labels, start, range(self.crops_per_image))
        return labels

    def read_slots(self, slots: Sequence[int], with_full: bool = False, with_gt_prob: bool = False) -> CropLabels:
        """The given slots of every image: the pass table read, one sequential read per run of slots."""
        slots = [int(s) for s in slots]
        runs = _contiguous_runs(slots)
        parts = [self._read((slice(None), slice(a, b)), with_full, with_gt_prob) for a, b in runs]
        if len(parts) == 1:
            return parts[0]

        def cat(name: str) -> np.ndarray | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else np.concatenate(values, axis=1)

        return CropLabels(*(cat(f.name) for f in dataclass_fields(CropLabels)))  # type: ignore[arg-type]

    def _read(self, sel: tuple[slice, slice], with_full: bool, with_gt_prob: bool = False) -> CropLabels:
        kind = self.spec.label.kind
        dense = self.read(f"labels/{kind}", sel) if with_full and kind in ("full", "logits") else None
        gt_prob = self.read("labels/gt_prob", sel) if with_gt_prob and self.spec.gt is not None else None
        return CropLabels(boxes=self.read("crops/box", sel), flips=self.read("crops/flip", sel),
                          index=self.read("labels/index", sel), prob=self.read("labels/prob", sel),
                          full=dense if kind == "full" else None, logits=dense if kind == "logits" else None,
                          gt_prob=gt_prob)

    def array(self, key: str) -> zarr.Array:
        """The zarr array `key`; a missing array or unreadable metadata is a `LabelStoreError` naming it."""
        try:
            arr = self.group[key]
        except KeyError:
            raise LabelStoreError(
                f"store {self.url} has no array {key!r} (the folder {key} or its zarr.json is missing: a partial "
                f"copy?); {RECOPY}") from None
        except Exception as e:  # JSONDecodeError of a truncated zarr.json, I/O errors of remote stores
            raise LabelStoreError(f"store {self.url}: the metadata of array {key!r} ({key}/zarr.json) cannot be "
                                  f"read ({first_line(e)}); {RECOPY}") from e
        if not isinstance(arr, zarr.Array):
            raise LabelStoreError(f"store {self.url}: {key!r} is a group, not an array; {RECOPY}")
        return arr

    def read(self, key: str, sel: Any = slice(None)) -> np.ndarray:
        """`array(key)[sel]` as numpy; a chunk that cannot be read raises `StoreDamageError` naming it.

        On failure each chunk of the selection is read alone to find the one at fault (only
        then: the read itself costs nothing extra).
        """
        arr = self.array(key)
        try:
            return np.asarray(arr[sel])
        except Exception as e:  # checksum mismatch, truncated or undecodable chunk, remote I/O
            raise self._read_failure(key, arr, sel, e) from e

    def _read_failure(self, key: str, arr: zarr.Array, sel: Any, error: Exception) -> StoreDamageError:
        chunk, cause = failing_chunk(arr, sel), error
        if chunk is None:  # every chunk reads alone: a transient failure (network?); name the selection
            lo = sel_bounds(arr, sel)[0][0]
            return StoreDamageError(f"store {self.url}: reading array {key!r} failed ({first_line(error)}); "
                                    "retry, and if it persists run `fkd-dali labels verify`", key, None, (lo, lo))
        coords, cause = chunk
        rows = arr.chunks[0]
        images = (self.chunk_range(coords[0]) if key == "progress/done"  # one flag per image chunk
                  else (coords[0] * rows, min((coords[0] + 1) * rows, arr.shape[0])))
        name = f"{key}/{arr.metadata.encode_chunk_key(coords)}"
        what = describe_chunk(key, arr, coords, images)
        reason = ("checksum mismatch: the file is damaged" if "checksum" in str(cause).lower()
                  else first_line(cause))
        return StoreDamageError(f"store {self.url}: chunk {name} ({what}) cannot be read ({reason}); "
                                f"{repair_hint(self.url, key)}", key, name, images)

    def check_written(self, labels: CropLabels | Mapping[str, np.ndarray | None], first_image: int,
                      slots: Sequence[int]) -> None:
        """Raise `StoreDamageError` if the data read holds fill values: rows `first_image`.., columns `slots`.

        `labels` is a `CropLabels` or a mapping of array key ("crops/box", "labels/prob",
        ...) to the (n, s, ...) data read from it, for callers that read only some arrays.

        Chunks flagged done never hold them (index -1, NaN probability, an empty box:
        the box fill is 0 and a real box is at least one pixel), so they mean a chunk file
        was deleted or lost after it was written (a partial copy, a lost object), which
        zarr reads back silently as fill values. Vectorised on the arrays in memory: a
        min/max per field when clean (about 1% of a pass-table read).

        Raises:
            StoreDamageError: fill values in chunks flagged done.
            LabelStoreError: fill values in chunks not written yet (the store is incomplete).
        """
        fields = labels.by_array() if isinstance(labels, CropLabels) else labels
        for key, bad in fill_masks(fields).items():
            rows, cols = np.nonzero(bad)
            images = rows + first_image
            picked = np.asarray(slots, dtype=np.int64)[cols]
            if not self.done()[np.unique(images // self.spec.layout.images_per_chunk)].all():
                self.check_complete()  # not damage: those chunks were never written ("rerun generate")
            raise StoreDamageError(
                f"store {self.url}: array {key!r} holds fill values ({FILL_WORDS[key]}) at "
                f"{self.describe_crops(images, picked)} although those chunks are flagged done: their chunk files were "
                f"deleted or lost (a partial copy?); {repair_hint(self.url, key)}",
                key, None, self.chunk_range(int(images[0]) // self.spec.layout.images_per_chunk))

    def missing_chunk_files(self, keys: Sequence[str] | None = None,
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
            done = np.flatnonzero(self.done()).tolist()
        missing = []
        for key in self.crop_keys() if keys is None else [k for k in keys if k in self.crop_keys()]:
            arr = self.array(key)
            try:
                present = listed_files(self.group, arr)
            except Exception as e:
                raise LabelStoreError(f"store {self.url}: cannot list the chunk files of {key!r} "
                                      f"({first_line(e)})") from e
            spc = arr.chunks[1]
            for c in done:
                a, b = self.chunk_range(c)
                for j, name in enumerate(chunk_files(key, arr, c)):
                    crops = (b - a) * min(spc, self.crops_per_image - j * spc)
                    may_be_absent = key == "crops/flip" and not all_false_implausible(self.spec.crop.flip_prob, crops)
                    if name not in present and not may_be_absent:
                        missing.append((name, c))
        return missing

    def check_chunk_files(self, keys: Sequence[str] | None = None) -> None:
        """Raise `StoreDamageError` naming the chunk files of done chunks that are missing (see
        `missing_chunk_files`): a store that lost files is refused before a pass reads it."""
        missing = self.missing_chunk_files(keys)
        if not missing:
            return
        named = ", ".join(f"{name} (images {'-'.join(map(str, inclusive(self.chunk_range(c))))})"
                          for name, c in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        name, chunk = missing[0]
        raise StoreDamageError(
            f"store {self.url}: {len(missing)} chunk file(s) of chunks flagged done are missing: {named}{more} "
            f"(deleted or lost after they were written: a partial copy?); {repair_hint(self.url, name)}",
            name.rsplit("/c/", 1)[0], name, self.chunk_range(chunk))

    def nbytes_stored(self) -> int:
        """Bytes of all chunk files, as the store reports them (0 where it cannot)."""
        try:
            return int(sum(self.group[k].nbytes_stored() for k in ARRAY_KEYS if k in self.group))
        except Exception:  # remote stores may not list sizes
            return 0


ARRAY_KEYS = ("images/path", "images/class", "images/size", "images/nbytes", "crops/box", "crops/flip",
              "labels/index", "labels/prob", "labels/full", "labels/logits", "labels/gt_prob", "progress/done",
              "progress/gt_done")


def _check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if tuple(arr.shape) != shape:
        raise LabelStoreError(f"{name}: expected shape {shape}, got {tuple(arr.shape)}")


def _contiguous_runs(slots: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for s in slots:
        if runs and runs[-1][1] == s:
            runs[-1] = (runs[-1][0], s + 1)
        else:
            runs.append((s, s + 1))
    return runs


def describe_difference(a: DatasetIndex, b: DatasetIndex) -> str:
    """A one-line account of the first way two indexes differ."""
    if a.class_names != b.class_names:
        return f"class folders differ ({len(a.class_names)} in store vs {len(b.class_names)} on disk)"
    if len(a) != len(b):
        return f"image count differs ({len(a)} in store vs {len(b)} on disk)"
    for i, (pa, pb) in enumerate(zip(a.paths, b.paths)):
        if pa != pb:
            return f"image {i} is {pa!r} in the store but {pb!r} on disk"
    for i, (na, nb) in enumerate(zip(a.nbytes, b.nbytes)):
        if na != nb:
            return f"file {a.paths[i]!r} has {na} bytes in the store but {nb} on disk"
    return "paths and byte sizes agree, so the fingerprint recipe differs"


@dataclass(frozen=True)
class ArrayDef:
    """One array of the schema: how `create_store` makes it and what opening and `verify` expect of it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name; "str" for variable-length UTF-8 strings
    chunks: tuple[int, ...]
    fill_value: Any = None  # None: zarr's default (0, False, "")
    filters: tuple[Any, ...] = ()
    shuffle: str = "bitshuffle"


def array_defs(spec: StoreSpec, n: int) -> list[ArrayDef]:
    """Every array of a store of `n` images made with `spec`, in creation order."""
    m = spec.crops_per_image
    ipc = min(spec.layout.images_per_chunk, n)
    spc = min(spec.layout.slots_per_chunk, m)
    k, c = spec.label.k, spec.label.num_classes
    n_chunks = (n + spec.layout.images_per_chunk - 1) // spec.layout.images_per_chunk
    nan = float("nan")
    defs = [ArrayDef("images/path", (n,), "str", (n,)), ArrayDef("images/class", (n,), "int32", (n,)),
            ArrayDef("images/size", (n, 2), "int32", (n, 2)), ArrayDef("images/nbytes", (n,), "int64", (n,)),
            ArrayDef("crops/box", (n, m, 4), "uint16", (ipc, spc, 4), filters=(_K_FIRST,)),
            ArrayDef("crops/flip", (n, m), "bool", (ipc, spc)),
            ArrayDef("labels/index", (n, m, k), "int16", (ipc, spc, k), fill_value=-1, shuffle="noshuffle"),
            ArrayDef("labels/prob", (n, m, k), "float16", (ipc, spc, k), fill_value=nan, filters=(_K_FIRST,))]
    if spec.label.kind in ("full", "logits"):  # probabilities, or raw outputs (NaN is no real logit either)
        defs.append(ArrayDef(f"labels/{spec.label.kind}", (n, m, c), "float16", (ipc, spc, c), fill_value=nan))
    if spec.gt is not None:
        defs.append(gt_prob_def(spec, n))
    # one file per flag: concurrent writers never share a progress chunk
    defs.append(ArrayDef("progress/done", (n_chunks,), "bool", (1,), fill_value=False))
    return defs


def gt_prob_def(spec: StoreSpec, n: int) -> ArrayDef:
    """`labels/gt_prob`: one float16 per crop, chunked on the image ranges and slot runs of the other fields."""
    ipc, spc = min(spec.layout.images_per_chunk, n), min(spec.layout.slots_per_chunk, spec.crops_per_image)
    return ArrayDef("labels/gt_prob", (n, spec.crops_per_image), "float16", (ipc, spc), fill_value=float("nan"))


def gt_done_def(spec: StoreSpec, n: int) -> ArrayDef:
    """`progress/gt_done`: the done flags of `labels add-gt-prob` (one file per image chunk, as progress/done)."""
    n_chunks = (n + spec.layout.images_per_chunk - 1) // spec.layout.images_per_chunk
    return ArrayDef("progress/gt_done", (n_chunks,), "bool", (1,), fill_value=False)


def array_mismatches(group: zarr.Group, d: ArrayDef) -> list[tuple[str, str]]:
    """(kind, description) of each way the stored array `d.name` differs from `d`; [] when it fits.

    Kinds: missing, shape, dtype, chunks, fill_value, checksum (no crc32c codec: stores
    written by older fkd-dali releases lack it on `images/path` and `progress/done`).
    """
    try:
        arr = group[d.name]
    except KeyError:
        return [("missing", f"array {d.name} is missing")]
    except Exception as e:  # unreadable array metadata (zarr.json damaged)
        return [("missing", f"array {d.name} has unreadable metadata ({type(e).__name__}: {e})")]
    out = []
    if tuple(arr.shape) != d.shape:
        out.append(("shape", f"array {d.name} has shape {tuple(arr.shape)}, expected {d.shape}"))
    dtype = "str" if arr.dtype.kind in ("T", "U", "O") else str(arr.dtype)
    if dtype != d.dtype:
        out.append(("dtype", f"array {d.name} has dtype {dtype}, expected {d.dtype}"))
    if tuple(arr.chunks) != d.chunks:
        out.append(("chunks", f"array {d.name} has chunks {tuple(arr.chunks)}, expected {d.chunks}"))
    if d.fill_value is not None and not _same_fill(arr.fill_value, d.fill_value):
        out.append(("fill_value", f"array {d.name} has fill value {arr.fill_value!r}, expected {d.fill_value!r}"))
    if not any(isinstance(codec, Crc32cCodec) for codec in arr.metadata.codecs):
        out.append(("checksum", f"array {d.name} has no crc32c checksum"))
    return out


def _same_fill(have: Any, want: Any) -> bool:
    if isinstance(want, float) and np.isnan(want):
        return bool(np.isnan(have))
    return bool(have == want)


def _create_arrays(g: zarr.Group, index: DatasetIndex, spec: StoreSpec) -> None:
    values = {"images/path": np.array(index.paths, dtype=object), "images/class": index.classes,
              "images/size": index.sizes, "images/nbytes": index.nbytes}
    for d in array_defs(spec, len(index)):
        arr = create_array(g, d)
        if d.name in values:
            arr[:] = values[d.name]


def create_array(g: zarr.Group, d: ArrayDef) -> zarr.Array:
    """Create the array `d` in `g` with the store's codecs (zstd + crc32c); fails if it exists."""
    return g.create_array(d.name, shape=d.shape, dtype=str if d.dtype == "str" else d.dtype, chunks=d.chunks,
                          fill_value=d.fill_value, filters=list(d.filters) if d.filters else "auto",
                          compressors=_compressors(d.shuffle))


class StoreExistsError(LabelStoreError):
    """`create_store` found a store, or another writer's store being created, at the path."""


def create_store(url: str, index: DatasetIndex, spec: StoreSpec,
                 storage_options: dict[str, Any] | None = None) -> LabelStore:
    """Create a new, empty store. The attributes are written last: they mark creation complete.

    The group is created with a `fkd_dali_creating` attribute naming this process and
    the schema attributes replace it in one final write (`fkd_dali.store.creation`).

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
    if url.startswith("file://") and storage_options is None:
        storage_options = {"auto_mkdir": True}  # fsspec's local filesystem does not create folders itself
    try:
        g = zarr.open_group(url, mode="w-", storage_options=storage_options, attributes={CREATING_KEY: marker})
    except (ContainsGroupError, ContainsArrayError, FileExistsError) as e:
        raise StoreExistsError(f"{url} already exists; open it or choose another --out") from e
    except OSError as e:
        raise LabelStoreError(f"cannot create the store {url}: {e.strerror or e}; choose a writable --out") from e
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
    if "://" in url and not url.startswith("file://"):
        return False
    path = url.removeprefix("file://")
    for _ in range(20):
        shutil.rmtree(path, ignore_errors=True)
        time.sleep(0.1)
        if not os.path.exists(path):
            return True
    return False


def open_store(url: str, mode: str = "r", storage_options: dict[str, Any] | None = None) -> LabelStore:
    """Open an existing store (mode "r" or "r+"), refusing unknown schema versions.

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
    return LabelStore(g, url)


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
    try:
        store = create_store(url, index, spec, storage_options)
    except StoreExistsError:
        store = _wait_for_store(url, wait_s, storage_options)
    store.check_dataset(index)
    check_same_spec(store, spec)
    return store


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
                raise LabelStoreError(_not_a_store_message(marker, url)
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


def check_same_spec(store: LabelStore, spec: StoreSpec) -> None:
    """Raise if a resumed run asks for different crops, labels or teacher than the store holds."""
    have, want = _json_ready(asdict(store.spec)), _json_ready(asdict(spec))
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
    store's. The sizes come from the store (read from the headers when it was made).

    Raises:
        DatasetIndexError: `root` is not a dataset folder (as `build_index`).
        StoreMismatchError: `root` holds another dataset; the message names the first
            difference (as `LabelStore.check_dataset`).
    """
    root_path = Path(root).expanduser().resolve()
    class_names, paths, nbytes = scan_folder(root_path)
    skipped = set(store.skipped)
    keep = [i for i, p in enumerate(paths) if p not in skipped]
    cid = {name: i for i, name in enumerate(class_names)}
    kept = [paths[i] for i in keep]
    scanned = DatasetIndex(str(root_path), kept, np.array([cid[p.split("/", 1)[0]] for p in kept], np.int32),
                           np.zeros((len(kept), 2), np.int32), nbytes[keep], class_names)
    store.check_dataset(scanned)  # header-less: the fingerprint covers paths, byte sizes and class names
    return store.load_index(root=str(root_path))

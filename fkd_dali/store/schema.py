"""The soft-label store's schema (versions 1 and 2): what a store declares and the arrays it holds.

Specs (`StoreSpec` and its parts) are what the `fkd_dali` group attributes say; `ArrayDef`s
are the arrays a store of a given spec has (shape, dtype, chunks, fill value, codecs),
used alike to create a store, to check one when it is opened and by `labels verify`.
Invariants the layout keeps:
- chunks are laid out crop-slot-major, (images_per_chunk, slots_per_chunk, ...), so a
  training pass (a few slots for every image) is one sequential read per array;
- every field's chunks cover the same image ranges, so a writer owns whole chunks of
  every array and writers on different image chunks never touch the same file;
- fill values no real row has (index -1, NaN probability, an empty box), so unwritten
  rows are never read back as plausible labels; crc32c on every chunk.

Version 1 is the base layout, optionally with `labels/gt_prob` and its `gt_prob`
attribute section (releases that do not know them ignore both safely). Version 2 is
written only for label kind `logits` (raw teacher outputs in `labels/logits`), which a
release that reads version 1 alone must refuse rather than misread.
"""
from __future__ import annotations

import datetime as _dt
import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, TransposeCodec

from fkd_dali.crops.boxes import CropDistribution
from fkd_dali.data.digest import DIGEST_NAME
from fkd_dali.data.index import DatasetIndex
from fkd_dali.defaults import IMAGES_PER_CHUNK, SLOTS_PER_CHUNK
from fkd_dali.errors import ConfigError, LabelStoreError
from fkd_dali.version import __version__

SCHEMA_VERSION = 2  # the newest version this release writes
READABLE_SCHEMA_VERSIONS = (1, 2)
ATTR_KEY = "fkd_dali"
CHECKSUM_KEY = "fkd_dali_sha256"  # sha256 of the `fkd_dali` attributes, beside them (not part of them)
IMPORT_ATTR_KEY = "fkd_dali_import"  # provenance of a store built by `labels import-fkd`
MERGE_ATTR_KEY = "fkd_dali_merge"  # the teachers of a store written by `labels merge` (each one's pixels and weight)
ENSEMBLE_TIMM_NAME = "ensemble"  # teacher.timm_name of a store written by `labels merge`
BOX_ENCODING = "uint16-normalized"
GT_MAPPINGS = ("imagenet_wnid", "folder_order")  # how folder classes become teacher classes (`GroundTruthSpec`)


class LabelKind(str, enum.Enum):
    """What `labels/*` holds per crop; the one place label kinds are named.

    TOPK: the teacher's top-K probabilities (every store has them, `labels/index`, `labels/prob`).
    FULL: also all C probabilities (`labels/full`, small datasets).
    LOGITS: also all D raw outputs of a self-supervised teacher (`labels/logits`, schema 2);
        its top-K arrays are a preview, never a training target.
    A `str` enum, so it is written to and read from the attributes as its plain value.
    """

    TOPK = "topk"
    FULL = "full"
    LOGITS = "logits"

    def __str__(self) -> str:  # the plain value in messages and f-strings, as attributes hold it
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def dense_array(self) -> str | None:
        """The store array of the dense per-crop values ("labels/full", "labels/logits"), None for TOPK."""
        return None if self is LabelKind.TOPK else f"labels/{self.value}"

    @classmethod
    def parse(cls, value: str | LabelKind) -> LabelKind:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"label kind must be one of {[k.value for k in cls]}, got {value!r}") from None



@dataclass(frozen=True)
class LabelSpec:
    """What a stored label is: top-K (or full) softmax of the teacher at `temperature`.

    Kind `logits` (self-supervised teachers) stores the teacher's `num_classes` = D raw
    outputs in `labels/logits`; no temperature is applied (`temperature` None: training
    chooses it), and the top-K arrays hold a preview (softmax at 1 of the top-K outputs)
    for `labels show` and `verify`, never a training target.
    """

    kind: LabelKind = LabelKind.TOPK
    k: int = 5
    num_classes: int = 1000
    temperature: float | None = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", LabelKind.parse(self.kind))
        if not 1 <= self.k <= self.num_classes:
            raise ConfigError(f"top-k must be in [1, num_classes={self.num_classes}], got {self.k}")
        if self.kind is LabelKind.LOGITS:
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
    """Chunk shape in (images, crop slots). Chosen for sequential pass reads (see DESIGN.md)."""

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


class CropField(str, enum.Enum):
    """A per-crop value a reader can ask of a store besides the boxes and flips every read has.

    A run declares the set it needs once (e.g. ``{TOPK, GT_PROB}`` for FerKD) and that one
    value travels through the store read, the pass table, the device gather and the batch.
    TOPK: `labels/index` + `labels/prob` (every store). DENSE: `labels/full` or
    `labels/logits` (stores of those kinds). GT_PROB: `labels/gt_prob` and each image's
    ground-truth class in the teacher's classes (stores made `--gt-prob`). BOX: the crops'
    stored boxes and flips on the training device, for targets that depend on where a
    crop lies (ReLabel's label maps).
    """

    TOPK = "topk"
    DENSE = "dense"
    GT_PROB = "gt_prob"
    BOX = "box"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


#: what a reader asks for when it names nothing: the labels every store has
TOPK_ONLY: frozenset[CropField] = frozenset({CropField.TOPK})


@dataclass
class CropLabels:
    """Stored fields for a block of images x slots (numpy, as the store keeps them); None where not read."""

    boxes: np.ndarray  # (n, s, 4) uint16 fractions of (H, W, H, W)
    flips: np.ndarray  # (n, s) bool
    index: np.ndarray | None = None  # (n, s, K) int16, most probable first
    prob: np.ndarray | None = None  # (n, s, K) float16
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


def json_ready(obj: Any) -> Any:
    """Tuples -> lists recursively: zarr attributes must be plain JSON."""
    return json.loads(json.dumps(obj))


def spec_to_attrs(spec: StoreSpec, index: DatasetIndex) -> dict[str, Any]:
    dataset = {"n_images": len(index), "fingerprint": index.fingerprint, "class_names": index.class_names,
               "skipped": index.skipped}
    if index.digests is not None:
        dataset[DIGEST_ATTR] = DIGEST_NAME  # images/crc32c and images/mtime hold what the store vouches for
    meta = {
        "schema_version": spec.schema_version,
        "dataset": dataset,
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
    return json_ready(meta)


GT_ATTR = "gt_prob"  # section of the `fkd_dali` attributes present when `labels/gt_prob` is stored
#: key of the `dataset` section naming the file digests a store holds (`images/crc32c`, `images/mtime`);
#: absent in stores of older releases, which keep working without the content check
DIGEST_ATTR = "file_digest"


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


def parse_attrs(meta: dict[str, Any], url: str) -> StoreSpec:
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


ARRAY_KEYS = ("images/path", "images/class", "images/size", "images/nbytes", "images/crc32c", "images/mtime",
              "crops/box", "crops/flip",
              "labels/index", "labels/prob", "labels/full", "labels/logits", "labels/gt_prob", "progress/done",
              "progress/gt_done")


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


def array_defs(spec: StoreSpec, n: int, digests: bool = False) -> list[ArrayDef]:
    """Every array of a store of `n` images made with `spec`, in creation order.

    `digests`: the store records each file's crc32c and modification time (`images/crc32c`,
    `images/mtime`; `dataset.file_digest` in its attributes says so).
    """
    m = spec.crops_per_image
    ipc = min(spec.layout.images_per_chunk, n)
    spc = min(spec.layout.slots_per_chunk, m)
    k, c = spec.label.k, spec.label.num_classes
    n_chunks = (n + spec.layout.images_per_chunk - 1) // spec.layout.images_per_chunk
    nan = float("nan")
    defs = [ArrayDef("images/path", (n,), "str", (n,)), ArrayDef("images/class", (n,), "int32", (n,)),
            ArrayDef("images/size", (n, 2), "int32", (n, 2)), ArrayDef("images/nbytes", (n,), "int64", (n,))]
    if digests:
        defs += [ArrayDef("images/crc32c", (n,), "uint32", (n,), shuffle="noshuffle"),
                 ArrayDef("images/mtime", (n,), "int64", (n,))]
    defs += [ArrayDef("crops/box", (n, m, 4), "uint16", (ipc, spc, 4), filters=(_K_FIRST,)),
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


#: arrays that stores written by older fkd-dali releases hold without a crc32c codec (their
#: content is checked against the dataset fingerprint and the index rules instead)
NO_CHECKSUM_IN_OLD_STORES = ("images/path", "progress/done")


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


def untrusted_metadata(group: zarr.Group, d: ArrayDef) -> str | None:
    """The first way array `d.name` differs from `d` that no fkd-dali release writes; None when it fits.

    What opening a store refuses: an edited or foreign zarr.json (dtype, chunks, fill value,
    a missing crc32c) makes zarr read plausible-looking wrong values (an int16 box read as
    uint16 bytes, say), so it must never reach training. The one legitimate difference, a
    missing crc32c on `NO_CHECKSUM_IN_OLD_STORES` in stores of older releases, passes.
    """
    for kind, text in array_mismatches(group, d):
        if not (kind == "checksum" and d.name in NO_CHECKSUM_IN_OLD_STORES):
            return text
    return None


def _same_fill(have: Any, want: Any) -> bool:
    if isinstance(want, float) and np.isnan(want):
        return bool(np.isnan(have))
    return bool(have == want)


def create_array(g: zarr.Group, d: ArrayDef) -> zarr.Array:
    """Create the array `d` in `g` with the store's codecs (zstd + crc32c); fails if it exists."""
    return g.create_array(d.name, shape=d.shape, dtype=str if d.dtype == "str" else d.dtype, chunks=d.chunks,
                          fill_value=d.fill_value, filters=list(d.filters) if d.filters else "auto",
                          compressors=_compressors(d.shuffle))

"""An opened soft-label store: `LabelStore` reads and writes chunks; opening checks the layout.

Reading never trusts the files blindly: a missing array, unreadable metadata or a chunk
that fails its checksum raises a `LabelStoreError` naming the store, the array and the
chunk (`LabelStore.read`). A chunk's `progress/done` flag (one file per flag) is written
only after all of its data, so a killed writer leaves no chunk that claims to be
complete but is not. Checks of the data itself live in `fkd_dali.store.checks`; creating
and opening a store in `fkd_dali.store.opening`.
"""
from __future__ import annotations

from dataclasses import fields as dataclass_fields
from typing import Any, Iterable, Sequence

import numpy as np
import zarr

from fkd_dali.data.digest import DIGEST_NAME, FileDigests
from fkd_dali.data.index import DatasetIndex
from fkd_dali.errors import LabelStoreError, StoreDamageError, StoreSchemaError
from fkd_dali.store.claim import CREATING_KEY, REPAIRING_KEY, clear_command, describe_creator, repair_state
from fkd_dali.store.damage import (
    CROP_KEYS,
    RECOPY,
    chunk_files,
    describe_chunk,
    failing_chunk,
    first_line,
    repair_hint,
    sel_bounds,
    store_key,
)
from fkd_dali.store.schema import (
    ARRAY_KEYS,
    ATTR_KEY,
    CHECKSUM_KEY,
    DIGEST_ATTR,
    ENSEMBLE_TIMM_NAME,
    GT_ATTR,
    IMPORT_ATTR_KEY,
    READABLE_SCHEMA_VERSIONS,
    TOPK_ONLY,
    ArrayDef,
    CropField,
    CropLabels,
    GroundTruthSpec,
    LabelKind,
    array_defs,
    array_mismatches,
    attrs_checksum,
    create_array,
    gt_done_def,
    gt_prob_def,
    gt_to_attrs,
    parse_attrs,
    quantize_prob,
    untrusted_metadata,
)
from fkd_dali.version import __version__


def not_a_store_message(marker: Any, url: str) -> str:
    """Why a Zarr group without schema attributes (`marker`: its creator marker) is not usable, and what to do."""
    if not isinstance(marker, dict):
        return (f"{url} is a Zarr group but not an fkd-dali soft-label store (no '{ATTR_KEY}' attributes); "
                "choose another path, or remove it with " + clear_command(url) + " if it is a leftover")
    return (f"{url} is a half-created store ({describe_creator(marker)} did not finish creating it: killed, "
            f"disk full or crashed); it holds no labels. Remove it with {clear_command(url)} and rerun")


class LabelStore:
    """An opened store. Use `create_store`, `open_store` or `open_or_create_store`."""

    def __init__(self, group: zarr.Group, url: str, check_arrays: bool = True) -> None:
        """Open `group` as a store, refusing what cannot be read as one.

        `check_arrays`: also refuse array metadata that differs from what the attributes
        imply in anything but shape (`untrusted_metadata`): every reader does; `labels
        verify` and `labels info` do not, so that they can report it. A wrong shape is
        always refused: nothing could be read at the right place.
        """
        self.group = group
        self.url = url
        meta = group.attrs.get(ATTR_KEY)
        if meta is None:
            raise LabelStoreError(not_a_store_message(group.attrs.get(CREATING_KEY), url))
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
        self.spec = parse_attrs(meta, url)
        stored = group.attrs.get(CHECKSUM_KEY)
        if stored is not None and stored != attrs_checksum(meta):
            raise LabelStoreError(
                f"store {url}: its '{ATTR_KEY}' attributes do not match their checksum ({CHECKSUM_KEY}): they were "
                "edited or damaged after creation. Restore zarr.json from a copy or regenerate the store.")
        digest = meta["dataset"].get(DIGEST_ATTR)
        if digest not in (None, DIGEST_NAME):
            raise StoreSchemaError(f"store {url} records file digests of kind {digest!r}; this fkd-dali ({__version__}) "
                                   f"knows only {DIGEST_NAME!r}. Use the fkd-dali release that wrote it")
        for d in self.array_defs():
            self.array(d.name)  # a missing array or unreadable metadata: one line naming it
            bad = next((text for kind, text in array_mismatches(group, d) if kind == "shape"), None)
            if bad:
                raise LabelStoreError(f"store {url} is damaged: {bad}. Regenerate it (or restore it from a copy).")
            bad = untrusted_metadata(group, d) if check_arrays else None
            if bad:
                raise LabelStoreError(
                    f"store {url}: {bad} ({d.name}/zarr.json was edited or damaged, so its values cannot be "
                    f"trusted); restore it from a copy or regenerate the store (`fkd-dali labels verify {url}` "
                    "lists every difference)")

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
    def has_digests(self) -> bool:
        """Whether the store records each file's crc32c and modification time (stores of older releases do not)."""
        return self.meta["dataset"].get(DIGEST_ATTR) == DIGEST_NAME

    def array_defs(self) -> list[ArrayDef]:
        """Every array this store holds, as its attributes imply (`fkd_dali.store.schema.array_defs`)."""
        return array_defs(self.spec, self.n_images, self.has_digests)

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
        skip = {"labels/full", "labels/logits"} - {kind.dense_array}
        skip |= {"labels/gt_prob"} if self.spec.gt is None else set()
        return tuple(k for k in CROP_KEYS if k not in skip)

    @property
    def n_chunks(self) -> int:
        ipc = self.spec.layout.images_per_chunk
        return (self.n_images + ipc - 1) // ipc

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        ipc = self.spec.layout.images_per_chunk
        return chunk * ipc, min((chunk + 1) * ipc, self.n_images)


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
                f"(images {ranges}{more}): {self.resume_hint()}")

    def resume_hint(self) -> str:
        """How the unfinished chunks get written: the command that writes them, or the repair at work on them.

        A `labels repair` clears the done flags of the chunks it recomputes, so while it runs
        (or after it was killed) the store looks unfinished; rerunning `labels generate`
        would be the wrong advice then (`REPAIRING_KEY` says a repair is at work).
        """
        marker = self.group.attrs.get(REPAIRING_KEY)
        state = repair_state(marker)
        if state is None:
            return f"rerun the same `fkd-dali labels {self.made_by}` command to resume"
        rerun = f"`fkd-dali labels repair {self.url} --data DIR` (with the options the store was made with) finishes it"
        if state == "in progress":
            return f"a `labels repair` ({describe_creator(marker)}) is in progress; wait for it to finish"
        return f"a `labels repair` ({describe_creator(marker)}) {state}; {rerun}"

    def mark_repairing(self, marker: dict[str, Any] | None) -> None:
        """Record (a marker) or clear (None) that `labels repair` is recomputing chunks of this store."""
        if marker is None:
            if REPAIRING_KEY in self.group.attrs:
                del self.group.attrs[REPAIRING_KEY]
        else:
            self.group.attrs[REPAIRING_KEY] = marker

    @property
    def made_by(self) -> str:
        """The `fkd-dali labels` action that writes this store's chunks (and resumes it)."""
        if IMPORT_ATTR_KEY in self.group.attrs:
            return "import-fkd"
        return "merge" if self.spec.teacher.timm_name == ENSEMBLE_TIMM_NAME else "generate"

    # -- dataset ------------------------------------------------------------
    def load_index(self, root: str = "") -> DatasetIndex:
        """The dataset index saved at creation (paths relative to `root`)."""
        digests = FileDigests(self.read("images/crc32c").astype(np.uint32),
                              self.read("images/mtime").astype(np.int64)) if self.has_digests else None
        return DatasetIndex(root=root, paths=[str(p) for p in self.read("images/path")],
                            classes=self.read("images/class").astype(np.int32),
                            sizes=self.read("images/size").astype(np.int32),
                            nbytes=self.read("images/nbytes").astype(np.int64),
                            class_names=self.class_names, skipped=self.skipped,
                            left_out=[(p, "left out when the store was made (could not be decoded)")
                                      for p in self.skipped], digests=digests)

    def rewrite_index(self, values: dict[str, np.ndarray]) -> None:
        """Overwrite whole index arrays (`labels repair`, from the folder after a fingerprint check).

        Each array is one chunk, written whole, so a damaged chunk file is replaced without
        being read.
        """
        try:
            for key, value in values.items():
                self.array(key)[:] = np.asarray(value, dtype=object) if key == "images/path" else value
        except OSError as e:
            raise LabelStoreError(f"rewriting {', '.join(values)} of {self.url} failed ({e.strerror or e}); fix the "
                                  "cause and rerun `labels repair`") from e

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
        dense = {LabelKind.FULL: labels.full, LabelKind.LOGITS: labels.logits}.get(kind)
        if kind is not LabelKind.TOPK:
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
        self.meta, self.spec = meta, parse_attrs(meta, self.url)

    # -- reading ------------------------------------------------------------
    def fields(self) -> frozenset[CropField]:
        """Every per-crop field this store can deliver (`CropField`)."""
        have = {CropField.TOPK, CropField.BOX}
        if self.spec.label.kind is not LabelKind.TOPK:
            have.add(CropField.DENSE)
        if self.spec.gt is not None:
            have.add(CropField.GT_PROB)
        return frozenset(have)

    def check_fields(self, fields: Iterable[CropField]) -> None:
        """Refuse, in one line saying how to get it, a field this store does not hold."""
        missing = set(fields) - self.fields()
        if CropField.GT_PROB in missing:
            raise LabelStoreError(self.no_gt_prob_message())
        if CropField.DENSE in missing:
            raise LabelStoreError(f"store {self.url} holds top-{self.spec.label.k} labels only, no dense ones "
                                  "(labels/full): pick another --recovery, or regenerate it with --full")

    def read_images(self, start: int, stop: int, fields: Iterable[CropField] | None = None) -> CropLabels:
        """All slots of images [start, stop) (for tools and interop, not the training hot path).

        `fields`: what to read besides boxes and flips (default: every field the store
        has). Unwritten rows read back as fill values; `fkd_dali.store.checks.read_written`
        refuses them where the data must be complete.
        """
        return self._read((slice(start, stop), slice(None)), self.fields() if fields is None else fields)

    def read_slots(self, slots: Sequence[int], fields: Iterable[CropField] = TOPK_ONLY) -> CropLabels:
        """The given slots of every image: the pass table read, one sequential read per run of slots."""
        slots = [int(s) for s in slots]
        fields = frozenset(fields)
        parts = [self._read((slice(None), slice(a, b)), fields) for a, b in _contiguous_runs(slots)]
        if len(parts) == 1:
            return parts[0]

        def cat(name: str) -> np.ndarray | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else np.concatenate(values, axis=1)

        return CropLabels(*(cat(f.name) for f in dataclass_fields(CropLabels)))  # type: ignore[arg-type]

    def _read(self, sel: tuple[slice, slice], fields: Iterable[CropField]) -> CropLabels:
        fields = frozenset(fields)
        self.check_fields(fields)
        kind = self.spec.label.kind
        dense = self.read(kind.dense_array, sel) if CropField.DENSE in fields else None
        topk = CropField.TOPK in fields
        return CropLabels(boxes=self.read("crops/box", sel), flips=self.read("crops/flip", sel),
                          index=self.read("labels/index", sel) if topk else None,
                          prob=self.read("labels/prob", sel) if topk else None,
                          full=dense if kind is LabelKind.FULL else None,
                          logits=dense if kind is LabelKind.LOGITS else None,
                          gt_prob=self.read("labels/gt_prob", sel) if CropField.GT_PROB in fields else None)

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


    def nbytes_stored(self) -> int:
        """Bytes of all chunk files, as the store reports them (0 where it cannot)."""
        try:
            return int(sum(self.group[k].nbytes_stored() for k in ARRAY_KEYS if k in self.group))
        except Exception:  # remote stores may not list sizes
            return 0


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

"""`labels repair`: recompute exactly the chunks of a store that `labels verify` finds damaged.

Boxes and flips are a pure function of the crop seed (or of the `--reference` store's
crops) and the teacher's labels of a chunk depend only on that chunk, so regenerating a
damaged chunk gives the bytes an undamaged store holds. Repair therefore reuses label
generation instead of a second writer: it clears the done flag of every damaged chunk
(first, so a crash in between leaves a chunk that is merely unfinished), deletes that
chunk's files of every crop array, and reruns the normal resumable generation, which
redoes exactly the chunks not flagged done. Everything the store's attributes record
(M, K, temperature, crop distribution, layout, teacher name and pixels) is taken from
them; what they do not record must be given as for `labels generate`: the dataset
folder, the teacher's checkpoint for a plain timm name, `--reference` for a relabelled
store, and the same batch options for bit-identical probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fkd_dali.config import LabelGenConfig
from fkd_dali.data.index import DatasetIndex
from fkd_dali.errors import ConfigError, LabelStoreError, StoreDamageError
from fkd_dali.labels.generate import LabelGenSummary, build_spec, chunk_boxes, generate_labels
from fkd_dali.labels.index_repair import repair_index
from fkd_dali.labels.teacher import load_teacher
from fkd_dali.store.checks import check_same_spec, index_for_store
from fkd_dali.store.claim import creator_marker
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.opening import open_store
from fkd_dali.store.schema import IMPORT_ATTR_KEY, LabelKind
from fkd_dali.store.tools import verify_store

_MAX_FLAG_RESETS = 1000  # unreadable done flags cleared one by one before giving up


@dataclass(frozen=True)
class RepairOptions:
    """What `labels repair` needs beyond the store (the rest comes from its attributes).

    Attributes:
        data: the dataset folder the store was generated for.
        checkpoint: the teacher's weights (required for a plain timm teacher name).
        reference: the `--reference` store the labels were generated with, if any.
        batch_size, crops_per_round: as given to `labels generate` (None: its defaults);
            other values give the same labels up to float rounding, not bit-identical ones.
        device, threads, progress, storage_options: as for `labels generate`.
    """

    data: str
    checkpoint: str | None = None
    reference: str | None = None
    batch_size: int | None = None
    crops_per_round: int | None = None
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    storage_options: dict[str, Any] | None = None  # fsspec options of the store and the reference store


@dataclass(frozen=True)
class RepairSummary:
    damaged_chunks: list[int]  # image chunks found damaged and recomputed
    unfinished_chunks: list[int]  # chunks that were never written (finished too)
    generation: LabelGenSummary | None
    index_rebuilt: list[str] = field(default_factory=list)  # index arrays rebuilt from --data

    def as_dict(self) -> dict[str, Any]:
        return {"damaged_chunks": self.damaged_chunks, "unfinished_chunks": self.unfinished_chunks,
                **({"index_rebuilt": self.index_rebuilt} if self.index_rebuilt else {}),
                **(self.generation.as_dict() if self.generation is not None else {"chunks_written": 0})}


def repair_config(store: LabelStore, opts: RepairOptions) -> LabelGenConfig:
    """The `labels generate` configuration that made `store`, from its attributes plus `opts`."""
    spec, t = store.spec, store.spec.teacher
    extra = {k: v for k, v in (("batch_size", opts.batch_size), ("crops_per_round", opts.crops_per_round),
                               ("threads", opts.threads)) if v is not None}
    return LabelGenConfig(
        data=opts.data, out=store.url, teacher=t.name, checkpoint=opts.checkpoint,
        num_classes=spec.label.num_classes, crops_per_image=spec.crops_per_image, top_k=spec.label.k,
        full=spec.label.kind is LabelKind.FULL, logits=spec.label.kind is LabelKind.LOGITS, gt_prob=spec.gt is not None,
        temperature=spec.label.temperature or 1.0, seed=spec.crop.seed,
        scale=spec.crop.scale, ratio=spec.crop.ratio, flip_prob=spec.crop.flip_prob,
        images_per_chunk=spec.layout.images_per_chunk, slots_per_chunk=spec.layout.slots_per_chunk,
        reference=opts.reference, device=opts.device, input_size=t.input_size[1], interpolation=t.interpolation,
        mean=t.mean, std=t.std, progress=opts.progress, **extra)


def repair_store(url: str, opts: RepairOptions) -> RepairSummary:
    """Recompute the damaged and unfinished chunks of the store at `url` in place.

    Raises:
        LabelStoreError: the store cannot be opened, its metadata or image list is
            damaged (not recomputable: copy it again or regenerate), or it was imported
            from FKD files or merged from other stores (its labels cannot be recomputed
            from a teacher).
        StoreMismatchError: `opts.data` is not the store's dataset, or the teacher
            checkpoint differs from the one recorded (checked before anything changes).
        TeacherError: no weights for a plain timm teacher (`opts.checkpoint`).
        ConfigError: the stored crops are not the ones the seed draws and no (or another)
            `--reference` was given.
    """
    store = open_store(url, mode="r+", storage_options=opts.storage_options)
    refuse_unrecomputable(store, "labels repair")
    _reset_unreadable_flags(store)  # harmless before the checks below: such a chunk counts as unfinished anyway
    report = verify_store(url, storage_options=opts.storage_options)
    rebuilt = repair_index(store, report, opts.data)
    if rebuilt:
        report = verify_store(url, storage_options=opts.storage_options)  # chunk values could not be checked before
    damaged, unfinished = report.damaged_chunks, store.missing_chunks()
    generation = _recompute_chunks(store, opts, damaged) if damaged or unfinished else None
    if rebuilt or damaged or unfinished or not report.ok:
        check_verified(url, opts.storage_options)
    return RepairSummary(damaged, unfinished, generation, rebuilt)


def check_verified(url: str, storage_options: dict | None = None) -> None:
    """Refuse to report success while `labels verify` still finds problems: name the first one."""
    report = verify_store(url, storage_options=storage_options)
    if not report.ok:
        raise LabelStoreError(
            f"labels repair: store {url} still fails `labels verify` after the repair ({report.problems[0].line()}); "
            "labels repair cannot fix that: restore the store from a copy or regenerate it")


def _recompute_chunks(store: LabelStore, opts: RepairOptions, damaged: list[int]) -> LabelGenSummary:
    """Recompute the damaged and unfinished chunks with the store's teacher, after checking it is the same."""
    index = index_for_store(store, opts.data)
    cfg = repair_config(store, opts)
    reference = open_store(cfg.reference, storage_options=opts.storage_options) if cfg.reference else None
    teacher = load_teacher(cfg.teacher, cfg.checkpoint, cfg.num_classes)
    check_same_spec(store, build_spec(cfg, teacher, reference, index.class_names))  # the same teacher weights, first
    _check_crops_reproducible(store, index, damaged, reference)
    return _recompute(store, cfg, damaged, None if reference else index, teacher)


def _recompute(store: LabelStore, cfg: LabelGenConfig, damaged: list[int], index: DatasetIndex | None,
               teacher: Any) -> LabelGenSummary:
    """Clear the damaged chunks and rerun generation, the store marked as under repair meanwhile.

    The mark makes `verify`, `train` and `info` say that a repair is at work (or did not
    finish, naming `labels repair`) instead of advising `labels generate`.
    """
    marker = creator_marker()
    store.mark_repairing(marker)
    try:
        for chunk in damaged:
            store.clear_chunk(chunk)
        generation = generate_labels(cfg, index=index, teacher=teacher)
    except BaseException:
        store.mark_repairing({**marker, "stopped": True})
        raise
    store.mark_repairing(None)
    return generation


def refuse_unrecomputable(store: LabelStore, command: str) -> None:
    """Refuse (naming `command`) a store whose labels no teacher can recompute: imported or merged."""
    if store.group.attrs.get(IMPORT_ATTR_KEY) is not None:
        raise LabelStoreError(f"{command}: store {store.url} was imported from FKD label files: its labels cannot be "
                              "recomputed from a teacher; run `fkd-dali labels import-fkd` again into a new --out")
    if store.spec.teacher.timm_name == "ensemble":
        raise LabelStoreError(f"{command}: store {store.url} was merged from other stores, whose teachers cannot be "
                              "rerun as one: rerun `fkd-dali labels merge` with the same inputs into a new --out")


def _reset_unreadable_flags(store: LabelStore) -> None:
    """Clear done flags whose files cannot be read (their chunks are then redone like unfinished ones)."""
    for _ in range(_MAX_FLAG_RESETS):
        try:
            store.done()
            return
        except StoreDamageError as e:
            if e.array != "progress/done":
                raise
            store.clear_chunk(e.images[0] // store.spec.layout.images_per_chunk)
    store.done()


def _check_crops_reproducible(store: LabelStore, index: DatasetIndex, damaged: list[int],
                              reference: LabelStore | None) -> None:
    """Refuse before clearing anything if regenerated crops would differ from the stored ones.

    Compares one intact chunk's stored boxes and flips with what generation would draw
    (the seed's, or the reference store's), so a relabelled store repaired without its
    `--reference` is caught instead of getting other crops in its damaged chunks.
    """
    skip = set(damaged) | set(store.missing_chunks())
    intact = [c for c in range(store.n_chunks) if c not in skip]
    if not intact:
        return  # nothing left to compare with: the recorded crop distribution is all there is
    start, stop = store.chunk_range(intact[0])
    boxes, flips = chunk_boxes(store, index, start, stop, reference)
    sel = (slice(start, stop), slice(None))
    if (boxes != store.read("crops/box", sel)).any() or (flips != store.read("crops/flip", sel)).any():
        source = f"the --reference store {reference.url}" if reference else f"crop seed {store.spec.crop.seed}"
        raise ConfigError(
            f"the boxes stored for images {start}-{stop - 1} of {store.url} are not the ones {source} gives: "
            + ("pass the --reference store the labels were generated with" if not reference
               else "pass the --reference store these labels were generated with (or none)"))

"""Label generation: index + crop boxes + DALI crop pipeline + teacher -> soft-label store.

Work is split into the store's image chunks. A chunk is computed in memory (boxes,
flips, teacher top-K for all of its crops) and written whole, then flagged done, so
a rerun after a crash redoes exactly the unflagged chunks, and parallel ranks
(`torchrun` or `--shard i/n`) own disjoint chunks of one store. Batching inside a
chunk depends only on the chunk, so a resumed or sharded run writes the same bytes
as an uninterrupted one.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from fkd_dali.config import LabelGenConfig
from fkd_dali.crops.boxes import CropDistribution, decode_boxes, encode_boxes, roi_corners, sample_crops
from fkd_dali.data.index import DatasetIndex, build_index
from fkd_dali.dist import dali_device_id, dist_env, parse_shard, pick_device
from fkd_dali.errors import ConfigError, CorruptImageError, ImageChangedError, StoreMismatchError, TeacherError
from fkd_dali.labels.teacher import Teacher, TeacherForward, load_teacher
from fkd_dali.store.checks import check_chunk_files, check_written, index_for_store
from fkd_dali.store.ground_truth import ground_truth_spec
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.opening import open_or_create_store, open_store
from fkd_dali.store.schema import CropLabels, GroundTruthSpec, LabelKind, LabelSpec, StoreLayout, StoreSpec, TeacherSpec

if TYPE_CHECKING:
    from fkd_dali.loaders.feed import CropIterator

MAX_LISTED = 20  # left-out files named in the summary line (all of them are counted)


@dataclass
class LabelGenSummary:
    images: int
    crops: int
    chunks_written: int
    chunks_skipped: int
    seconds: float
    store_bytes: int
    n_images_total: int
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of files not labelled

    @property
    def crops_per_s(self) -> float:
        return self.crops / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_image(self) -> float:
        return self.store_bytes / max(1, self.n_images_total)

    def as_dict(self) -> dict[str, float]:
        return {"images": self.images, "crops": self.crops, "chunks_written": self.chunks_written,
                "chunks_skipped": self.chunks_skipped, "seconds": round(self.seconds, 3),
                "crops_per_s": round(self.crops_per_s, 1), "store_bytes": self.store_bytes,
                "bytes_per_image": round(self.bytes_per_image, 1), "left_out": len(self.left_out),
                "left_out_files": [f"{p}: {why}" for p, why in self.left_out[:MAX_LISTED]]
                + ([f"... and {len(self.left_out) - MAX_LISTED} more"] if len(self.left_out) > MAX_LISTED else [])}


def teacher_spec(teacher: Teacher, cfg: LabelGenConfig) -> TeacherSpec:
    """The teacher's pixel contract, with any user overrides applied."""
    c, h, w = teacher.input_size
    if cfg.input_size is not None:
        h = w = cfg.input_size
    if h != w:
        raise ConfigError(f"teacher input {h}x{w} is not square; pass --input-size")
    return TeacherSpec(name=teacher.name, timm_name=teacher.timm_name, checkpoint_sha256=teacher.checkpoint_sha256,
                       input_size=(c, h, w), interpolation=cfg.interpolation or teacher.interpolation,
                       mean=tuple(cfg.mean or teacher.mean), std=tuple(cfg.std or teacher.std))


def build_spec(cfg: LabelGenConfig, teacher: Teacher, reference: LabelStore | None,
               class_names: Sequence[str]) -> StoreSpec:
    """The spec of the store `cfg` writes (`class_names`: the dataset's, for the ground truth of --gt-prob)."""
    if reference is not None:
        crops_per_image, crop = reference.crops_per_image, reference.spec.crop
    else:
        crops_per_image = cfg.crops_per_image
        crop = CropDistribution(scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), flip_prob=cfg.flip_prob,
                                seed=cfg.seed)
    kind = LabelKind.LOGITS if cfg.logits else LabelKind.FULL if cfg.full else LabelKind.TOPK
    if cfg.logits and cfg.top_k > teacher.num_classes:
        raise ConfigError(f"--top-k {cfg.top_k} exceeds the teacher's {teacher.num_classes} outputs; a --logits "
                          "store keeps all of them anyway, the top-K is only a preview: lower --top-k")
    label = LabelSpec(kind=kind, k=cfg.top_k, num_classes=teacher.num_classes,
                      temperature=None if cfg.logits else cfg.temperature)
    gt = ground_truth_spec(class_names, teacher.num_classes) if cfg.gt_prob else None
    return StoreSpec(crops_per_image=crops_per_image, crop=crop, label=label, teacher=teacher_spec(teacher, cfg),
                     layout=StoreLayout(cfg.images_per_chunk, cfg.slots_per_chunk), gt=gt)


def chunk_boxes(store: LabelStore, index: DatasetIndex, start: int, stop: int,
                reference: LabelStore | None) -> tuple[np.ndarray, np.ndarray]:
    """Encoded (uint16) boxes and flips of images [start, stop), all slots."""
    if reference is not None:  # only its crops are needed: damaged labels there do not matter
        sel = (slice(start, stop), slice(None))
        boxes, flips = reference.read("crops/box", sel), reference.read("crops/flip", sel)
        check_written(reference, {"crops/box": boxes}, start, range(reference.crops_per_image))
        return boxes, flips
    slots = np.arange(store.crops_per_image)
    boxes, flips = sample_crops(index.sizes[start:stop], np.arange(start, stop), slots, store.spec.crop)
    return encode_boxes(boxes, index.sizes[start:stop]), flips


def _feed_batches(index: DatasetIndex, start: int, stop: int, rois: np.ndarray, flips: np.ndarray,
                  images_per_batch: int, per_round: int, check: bool, source: str = "") -> Iterator:
    """Batches of (image, round) items: each image's bytes are read once per chunk.

    `check`: decode each image strictly first (`read_encoded`), for indexes whose images
    were not checked when they were built (a `--reference` store's). Where the index has
    file digests (taken from the store `source`: a reference, or the store being repaired)
    each file is compared with its crc32c, so no chunk is labelled on other pixels than
    the store vouches for.
    """
    from fkd_dali.loaders.feed import FeedBatch, read_encoded

    m = rois.shape[1]
    rounds = math.ceil(m / per_round)
    pad = rounds * per_round - m
    if pad:  # the last round repeats its final crop; the extras are discarded
        rois = np.concatenate([rois, np.repeat(rois[:, -1:], pad, axis=1)], axis=1)
        flips = np.concatenate([flips, np.repeat(flips[:, -1:], pad, axis=1)], axis=1)
    flips = flips.astype(np.int32)
    for a in range(start, stop, images_per_batch):
        ids = range(a, min(a + images_per_batch, stop))
        paths = [index.abspath(i) for i in ids]
        data = [read_encoded(p, check=check) for p in paths]
        if index.digests is not None:
            _check_digests(index, ids, data, source)
        for r in range(rounds):
            sl = slice(r * per_round, (r + 1) * per_round)
            yield FeedBatch(encoded=data, rois=[rois[i - start, sl] for i in ids],
                            flips=[flips[i - start, sl] for i in ids],
                            meta=[np.array([i, r], np.int64) for i in ids], paths=paths)


def _check_digests(index: DatasetIndex, ids: range, data: list[np.ndarray], source: str) -> None:
    """Refuse files whose bytes differ from the crc32c the store `source` recorded: the new labels would
    describe other pixels than the store vouches for."""
    from fkd_dali.data.digest import crc32c

    for i, d in zip(ids, data):
        if crc32c(d) != int(index.digests.crc32c[i]):  # type: ignore[union-attr]
            raise ImageChangedError(index.abspath(i), source, "restore the original file, or label the folder anew "
                                    "into a new --out")


class _TeacherRunner:
    """Teacher forward + top-K (+ dense values, + ground-truth probability) on the device.

    bf16 autocast and channels_last on GPU. Outputs per crop, on the CPU: top-K class
    ids (int16) and probabilities (float16) of the softmax at the label temperature
    (at 1 for kind "logits", a preview), the whole softmax (kind "full") or the raw
    outputs (kind "logits") as float16, and, given each crop's ground-truth class, the
    softmax's value there (float16, rounded exactly as the top-K ones).
    """

    def __init__(self, teacher: Teacher, spec: LabelSpec, device: torch.device) -> None:
        self.forward = TeacherForward(teacher, device, torch.bfloat16 if device.type == "cuda" else None)
        self.device = device
        self.spec = spec

    @torch.inference_mode()
    def __call__(self, crops: torch.Tensor, gt: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.forward.logits(crops)
        probs = torch.softmax(logits / (self.spec.temperature or 1.0), dim=1)
        top_p, top_i = probs.topk(self.spec.k, dim=1)
        out = {"index": top_i.to(torch.int16).cpu(), "prob": top_p.half().cpu()}
        if self.spec.kind is LabelKind.FULL:
            out["full"] = probs.half().cpu()
        if self.spec.kind is LabelKind.LOGITS:
            out["logits"] = logits.half().cpu()
        if gt is not None:
            out["gt_prob"] = probs.gather(1, gt.to(self.device, torch.int64)[:, None])[:, 0].half().cpu()
        return out


@dataclass
class Labeller:
    """The DALI crop iterator and the teacher runner of one process, with the batching they use.

    Batching depends only on the chunk (`images_per_batch` images x `per_round` crops per
    teacher call), so any run with the same batch options computes the same bytes.
    """

    crop_iter: CropIterator
    runner: _TeacherRunner
    images_per_batch: int
    per_round: int


def make_labeller(cfg: LabelGenConfig, spec: StoreSpec, teacher: Teacher, device: torch.device) -> Labeller:
    from fkd_dali.loaders.feed import BatchSource, CropIterator
    from fkd_dali.pipelines.crops import make_crop_pipeline

    per_round = min(cfg.crops_per_round, spec.crops_per_image)
    images_per_batch = max(1, cfg.batch_size // per_round)
    ts = spec.teacher
    source = BatchSource()
    pipe = make_crop_pipeline(source, n_crops=per_round, size=ts.input_size[1], interpolation=ts.interpolation,
                              mean=ts.mean, std=ts.std, batch_size=images_per_batch, num_threads=cfg.threads,
                              device_id=dali_device_id(device))
    return Labeller(CropIterator(pipe, source), _TeacherRunner(teacher, spec.label, device), images_per_batch,
                    per_round)


def compute_chunk(store: LabelStore, index: DatasetIndex, chunk: int, labeller: Labeller,
                  reference: LabelStore | None, bar: tqdm, gt: GroundTruthSpec | None = None) -> CropLabels:
    """Boxes, flips and the teacher's labels of every crop of image chunk `chunk` (nothing is written).

    `gt` (default: the store's) adds each crop's ground-truth probability.
    """
    gt = gt or store.spec.gt
    start, stop = store.chunk_range(chunk)
    boxes_q, flips = chunk_boxes(store, index, start, stop, reference)
    rois = roi_corners(decode_boxes(boxes_q, index.sizes[start:stop]))
    n, m, label = stop - start, store.crops_per_image, store.spec.label
    per_round = labeller.per_round
    out = {"index": np.full((n, m, label.k), -1, np.int16), "prob": np.zeros((n, m, label.k), np.float16)}
    if label.kind is not LabelKind.TOPK:
        out[label.kind] = np.zeros((n, m, label.num_classes), np.float16)
    gt_of_image = None
    if gt is not None:
        out["gt_prob"] = np.zeros((n, m), np.float16)
        gt_of_image = gt.of_images(index.classes)
    feed = _feed_batches(index, start, stop, rois, flips, labeller.images_per_batch, per_round,
                         check=reference is not None, source=(reference or store).url)
    for crops, meta in labeller.crop_iter.epoch(feed):
        b, r = crops.shape[0], crops.shape[1]
        meta = meta.numpy()
        gt_rows = None if gt_of_image is None else torch.from_numpy(np.repeat(gt_of_image[meta[:, 0]], r))
        result = labeller.runner(crops.reshape(b * r, *crops.shape[2:]), gt_rows)
        for row, (img, rnd) in enumerate(meta):
            s0 = int(rnd) * per_round
            take = min(per_round, m - s0)
            rows = slice(row * r, row * r + take)
            for name, values in result.items():
                out[name][img - start, s0:s0 + take] = values[rows].numpy()
            bar.update(take)
    for name in ("prob", label.kind, "gt_prob"):
        if name in out:
            _check_finite(out[name], name, index, start)
    return CropLabels(boxes=boxes_q, flips=flips, **out)


def label_chunk(store: LabelStore, index: DatasetIndex, chunk: int, labeller: Labeller,
                reference: LabelStore | None, bar: tqdm) -> int:
    """Compute and write one chunk; returns the number of crops labelled."""
    labels = compute_chunk(store, index, chunk, labeller, reference, bar)
    store.write_chunk(chunk, labels)
    return labels.flips.size


def _check_finite(values: np.ndarray, name: str, index: DatasetIndex, start: int) -> None:
    """Refuse to write NaN/inf (a teacher whose weights or inputs overflow, logits beyond float16's range)."""
    bad = ~np.isfinite(values.astype(np.float32)).reshape(len(values), -1).all(axis=1)
    if bad.any():
        first = start + int(np.flatnonzero(bad)[0])
        what = "outputs (beyond float16's +-65504?)" if name == "logits" else "probabilities"
        raise TeacherError(
            f"the teacher gave NaN or infinite {what} for {int(bad.sum())} image(s) of images "
            f"{start}-{start + len(values) - 1} (first: {index.paths[first]}); nothing of them was written. "
            "Check the teacher's --checkpoint and --mean/--std/--temperature")


def _reference_index(reference: LabelStore, cfg: LabelGenConfig) -> DatasetIndex:
    """The reference store's index of `cfg.data` (no header reads; its skipped files stay out)."""
    try:
        index = index_for_store(reference, cfg.data)
    except StoreMismatchError as e:
        raise StoreMismatchError(f"--reference {cfg.reference}: {e}") from e
    reference.check_complete()
    check_chunk_files(reference, ("crops/box", "crops/flip"))  # only its crops are used
    return index


def _checked_index(cfg: LabelGenConfig) -> DatasetIndex:
    """The index of `cfg.data` with every image decoded strictly, before any store is made.

    Checking all images first means a corrupt one stops the run before the store
    records it (the store's index could not drop it later), and `--skip-corrupt`
    leaves it out and records it instead.
    """
    try:
        return build_index(cfg.data, skip_corrupt=cfg.skip_corrupt, decode=True, progress=cfg.progress)
    except CorruptImageError as e:
        raise CorruptImageError(e.path, f"{e.reason}. Replace or remove the file, or pass --skip-corrupt to "
                                        "leave it out (recorded in the store)") from e


def generate_labels(cfg: LabelGenConfig, index: DatasetIndex | None = None,
                    teacher: Teacher | None = None) -> LabelGenSummary:
    """Run (or resume) label generation for this process's share of the chunks.

    With `cfg.reference` the images, their sizes and the skipped files are the
    reference store's (the folder is only checked against it), so `skip_corrupt` has no
    effect there. `index` replaces indexing `cfg.data` and `teacher` loading `cfg.teacher`
    (`labels repair` passes the store's own index, checked against the folder without
    reading image headers, and the teacher it checked against the store).
    """
    env = dist_env()
    shard, n_shards = parse_shard(cfg.shard, env)
    device = pick_device(cfg.device, env.local_rank)
    reference = open_store(cfg.reference, storage_options=cfg.storage_options) if cfg.reference else None
    if reference is not None:
        index = _reference_index(reference, cfg)
    elif index is None:
        index = _checked_index(cfg)
    if teacher is None:
        teacher = load_teacher(cfg.teacher, cfg.checkpoint, cfg.num_classes)
    spec = build_spec(cfg, teacher, reference, index.class_names)
    store = open_or_create_store(cfg.out, index, spec, storage_options=cfg.storage_options)
    todo = [c for c in store.missing_chunks() if c % n_shards == shard]
    mine = [c for c in range(store.n_chunks) if c % n_shards == shard]
    labeller = make_labeller(cfg, spec, teacher, device)
    total = sum(store.chunk_range(c)[1] - store.chunk_range(c)[0] for c in todo) * store.crops_per_image
    t0 = time.perf_counter()
    crops = 0
    with tqdm(total=total, unit="crop", unit_scale=True, dynamic_ncols=True, disable=not cfg.progress,
              desc=f"labels [{shard}/{n_shards}]" if n_shards > 1 else "labels") as bar:
        for c in todo:
            crops += label_chunk(store, index, c, labeller, reference, bar)
    seconds = time.perf_counter() - t0
    return LabelGenSummary(images=crops // store.crops_per_image, crops=crops, chunks_written=len(todo),
                           chunks_skipped=len(mine) - len(todo), seconds=seconds,
                           store_bytes=store.nbytes_stored(), n_images_total=store.n_images,
                           left_out=index.left_out)

"""`labels add-gt-prob`: add `labels/gt_prob` to a store made without `--gt-prob`, changing nothing else.

The teacher runs again over the store's own crops (its stored boxes and flips, as a
`--reference` relabel would) with the store's recorded teacher, pixels and temperature,
and only the ground-truth probabilities are written: every other array keeps its bytes.
With the batch options of the original generation (`--batch-size`, `--crops-per-round`,
the same device) the values are bit-identical to what `labels generate --gt-prob` writes;
the recomputed top-K labels are compared with the stored ones to say so. Either way the
values written agree with the stored top-K (`consistent_gt_prob`), so `labels verify`
never takes a store relabelled with other batch options for a damaged one.

Resumable: each image chunk's gt_prob is written, then its flag in `progress/gt_done`;
a rerun does only the chunks not flagged. The attribute section that declares gt_prob
(`StoreSpec.gt`) is written last, once every chunk is there, so no reader ever takes a
partly written array for stored ground-truth probabilities. One process at a time.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from fkd_dali.dist import dist_env, pick_device
from fkd_dali.labels.generate import build_spec, compute_chunk, make_labeller
from fkd_dali.labels.repair import RepairOptions, refuse_unrecomputable, repair_config
from fkd_dali.labels.teacher import load_teacher
from fkd_dali.store.checks import check_same_spec
from fkd_dali.store.ground_truth import consistent_gt_prob, ground_truth_spec
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.opening import StoreNeeds, open_checked_store, open_store
from fkd_dali.store.schema import CropLabels, quantize_prob

COMMAND = "labels add-gt-prob"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AddGtSummary:
    chunks_written: int
    chunks_skipped: int  # flagged by an earlier, interrupted run
    crops: int
    seconds: float
    mapping: str
    labels_reproduced: float | None  # share of crops whose recomputed top-K equals the stored one bit for bit

    def as_dict(self) -> dict[str, Any]:
        return {"chunks_written": self.chunks_written, "chunks_skipped": self.chunks_skipped, "crops": self.crops,
                "seconds": round(self.seconds, 3), "mapping": self.mapping,
                "labels_reproduced": None if self.labels_reproduced is None else round(self.labels_reproduced, 6)}


def add_gt_prob(url: str, opts: RepairOptions) -> AddGtSummary:
    """Compute and add the ground-truth probabilities of every stored crop of the store at `url`.

    `opts` as for `labels repair` (`reference` is not used: the store's own crops are
    relabelled). A store that has gt_prob already is left as it is.

    Raises:
        LabelStoreError: the store is incomplete or damaged, or was imported, merged or
            holds logits (no teacher probabilities to recompute).
        StoreMismatchError: `opts.data` is not the store's dataset, or the teacher's
            weights differ from the recorded ones.
        ConfigError: the folder classes cannot be mapped to the teacher's classes.
        TeacherError: no weights for a plain timm teacher (`opts.checkpoint`).
    """
    store = open_store(url, mode="r+", storage_options=opts.storage_options)
    if store.has_gt_prob:
        return AddGtSummary(0, store.n_chunks, 0, 0.0, store.spec.gt.mapping, None)  # type: ignore[union-attr]
    refuse_unrecomputable(store, COMMAND)
    _, index = open_checked_store(store, StoreNeeds(no_logits="they are no classes: it can have no ground-truth "
                                                    "probabilities"), data=opts.data)
    cfg = repair_config(store, opts)
    teacher = load_teacher(cfg.teacher, cfg.checkpoint, cfg.num_classes)
    check_same_spec(store, build_spec(cfg, teacher, None, index.class_names))  # the recorded teacher and weights
    gt = ground_truth_spec(index.class_names, teacher.num_classes, what=COMMAND)
    store.prepare_gt_arrays()
    todo = store.gt_missing_chunks()
    gt_class = gt.of_images(store.read("images/class"))
    labeller = make_labeller(cfg, store.spec, teacher, pick_device(cfg.device, dist_env().local_rank))
    t0, same, crops = time.perf_counter(), 0, 0
    total = sum(b - a for a, b in map(store.chunk_range, todo)) * store.crops_per_image
    with tqdm(total=total, unit="crop", unit_scale=True, dynamic_ncols=True, disable=not opts.progress,
              desc="gt_prob") as bar:
        for chunk in todo:
            labels = compute_chunk(store, index, chunk, labeller, store, bar, gt=gt)
            same += _reproduced(store, chunk, labels)
            crops += labels.flips.size
            store.write_gt_chunk(chunk, _consistent(store, chunk, labels, gt_class))
    store.attach_gt(gt)
    reproduced = same / crops if crops else None
    if reproduced is not None and reproduced < 1.0:
        _log.warning("%s: the teacher's recomputed top-K labels differ from the stored ones for %.2f%% of the "
                     "crops, so gt_prob is not bit-identical to `labels generate --gt-prob`: pass the "
                     "--batch-size, --crops-per-round and device of the original generation for that",
                     COMMAND, 100 * (1 - reproduced))
    return AddGtSummary(len(todo), store.n_chunks - len(todo), crops, time.perf_counter() - t0, gt.mapping,
                        reproduced)


def _consistent(store: LabelStore, chunk: int, labels: CropLabels, gt_class: np.ndarray) -> np.ndarray:
    """The chunk's recomputed gt_prob, made consistent with its stored top-K (`consistent_gt_prob`)."""
    start, stop = store.chunk_range(chunk)
    sel = (slice(start, stop), slice(None))
    return consistent_gt_prob(quantize_prob(labels.gt_prob), store.read("labels/index", sel),  # type: ignore[arg-type]
                              store.read("labels/prob", sel), gt_class[start:stop])


def _reproduced(store: LabelStore, chunk: int, labels: CropLabels) -> int:
    """Crops of `chunk` whose recomputed top-K ids and (rounded) probabilities equal the stored ones."""
    start, stop = store.chunk_range(chunk)
    sel = (slice(start, stop), slice(None))
    same_index = (store.read("labels/index", sel) == labels.index).all(-1)
    same_prob = (store.read("labels/prob", sel).view(np.uint16) == quantize_prob(labels.prob).view(np.uint16)).all(-1)
    return int((same_index & same_prob).sum())

"""Teacher ensembles: merge stores that label the same crops into one store.

Stores made with `labels generate --reference` share boxes and flips, so their
labels can be averaged crop by crop. Each store contributes its top-K at its
classes (mass outside a store's top-K counts as zero, a lower bound that keeps the
merge exact for what was stored); the weighted mean is re-ranked and the new top-K
kept. Works chunk by chunk, so memory stays bounded and the output is resumable.
The ensemble stores no `labels/gt_prob` (its inputs' are dropped), and stores of raw
self-supervised outputs (kind "logits") are refused: their dimensions are no classes.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from fkd_dali.errors import ConfigError, StoreMismatchError
from fkd_dali.store.checks import read_written
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.opening import StoreNeeds, open_checked_store, open_or_create_store
from fkd_dali.store.schema import (
    ENSEMBLE_TIMM_NAME,
    MERGE_ATTR_KEY,
    TOPK_ONLY,
    CropLabels,
    LabelKind,
    LabelSpec,
    TeacherSpec,
)


def merge_topk(indices: Sequence[np.ndarray], probs: Sequence[np.ndarray], weights: Sequence[float],
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean of sparse top-K distributions, re-ranked to the new top-k.

    Args:
        indices, probs: per store (..., K_s) class ids and probabilities.
        weights: per store, summing to 1.

    Returns:
        (..., k) int16 class ids (most probable first) and float16 probabilities.
    """
    cat_i = np.concatenate([np.asarray(i, np.int64) for i in indices], axis=-1)
    cat_p = np.concatenate([np.asarray(p, np.float32) * w for p, w in zip(probs, weights)], axis=-1)
    flat_i = cat_i.reshape(-1, cat_i.shape[-1])
    flat_p = cat_p.reshape(-1, cat_p.shape[-1])
    # sum duplicate classes per row: sort by class, then reduce equal neighbours
    order = np.argsort(flat_i, axis=1, kind="stable")
    si = np.take_along_axis(flat_i, order, 1)
    sp = np.take_along_axis(flat_p, order, 1)
    same_as_next = np.zeros_like(si, dtype=bool)
    same_as_next[:, :-1] = si[:, :-1] == si[:, 1:]
    run_sum = sp.copy()
    for j in range(si.shape[1] - 2, -1, -1):  # at most sum(K_s) iterations, vectorised over rows
        run_sum[:, j] += np.where(same_as_next[:, j], run_sum[:, j + 1], 0.0)
    first = np.ones_like(same_as_next)
    first[:, 1:] = ~same_as_next[:, :-1]
    score = np.where(first, run_sum, -1.0)
    top = np.argsort(-score, axis=1, kind="stable")[:, :k]
    out_i = np.take_along_axis(si, top, 1).astype(np.int16)
    out_p = np.clip(np.take_along_axis(score, top, 1), 0, 1).astype(np.float16)
    shape = cat_i.shape[:-1] + (k,)
    return out_i.reshape(shape), out_p.reshape(shape)


def _check_same_crops(stores: Sequence[LabelStore]) -> None:
    first = stores[0]
    for s in stores[1:]:
        if s.fingerprint != first.fingerprint:
            raise StoreMismatchError(f"{s.url} and {first.url} label different datasets "
                                     f"(fingerprints {s.fingerprint[:12]} vs {first.fingerprint[:12]})")
        if s.crops_per_image != first.crops_per_image or s.spec.crop != first.spec.crop:
            raise StoreMismatchError(f"{s.url} and {first.url} hold different crops; make one with "
                                     f"`labels generate --reference {first.url}`")
        if s.spec.label.num_classes != first.spec.label.num_classes:
            raise StoreMismatchError(f"{s.url} and {first.url} have different class counts")


def merge_record(stores: Sequence[LabelStore], weights: np.ndarray) -> dict:
    """Each merged teacher as its store recorded it, with its weight: the merged store's own teacher
    attributes can hold only one normalization and input size, so `labels info` shows these instead."""
    return {"teachers": [{"store": s.url, "name": s.spec.teacher.name, "timm_name": s.spec.teacher.timm_name,
                          "checkpoint_sha256": s.spec.teacher.checkpoint_sha256,
                          "input_size": list(s.spec.teacher.input_size), "interpolation": s.spec.teacher.interpolation,
                          "mean": list(s.spec.teacher.mean), "std": list(s.spec.teacher.std),
                          "k": s.spec.label.k, "weight": round(float(wt), 6)} for s, wt in zip(stores, weights)]}


def merge_stores(urls: Sequence[str], out: str, weights: Sequence[float] | None = None,
                 k: int | None = None, storage_options: dict | None = None) -> LabelStore:
    """Write the weighted ensemble of stores `urls` (same crops) to `out` (`storage_options`: fsspec's, for all)."""
    if len(urls) < 2:
        raise ConfigError("merge needs at least two stores")
    need = StoreNeeds(no_logits="merge: their dimensions are no shared classes to average; merge stores of "
                                "class probabilities")
    stores = [open_checked_store(u, need, storage_options=storage_options)[0] for u in urls]
    _check_same_crops(stores)
    w = np.asarray(weights if weights is not None else [1.0] * len(stores), np.float64)
    if len(w) != len(stores) or not np.all(np.isfinite(w) & (w > 0)):
        raise ConfigError(f"--weights needs one finite weight > 0 per store ({len(stores)} stores), "
                          f"got {' '.join(str(v) for v in w)}")
    w = w / w.sum()
    first = stores[0]
    k = k or max(s.spec.label.k for s in stores)
    names = "+".join(s.spec.teacher.name for s in stores)
    spec = dataclasses.replace(
        first.spec, label=LabelSpec(kind=LabelKind.TOPK, k=k, num_classes=first.spec.label.num_classes,
                                    temperature=first.spec.label.temperature),
        teacher=TeacherSpec(name=f"ensemble({names})", timm_name=ENSEMBLE_TIMM_NAME,
                            checkpoint_sha256=",".join(s.spec.teacher.checkpoint_sha256[:12] for s in stores),
                            input_size=first.spec.teacher.input_size, interpolation=first.spec.teacher.interpolation,
                            mean=first.spec.teacher.mean, std=first.spec.teacher.std),
        gt=None)  # an ensemble keeps no ground-truth probabilities
    index = first.load_index()
    merged = open_or_create_store(out, index, spec, storage_options=storage_options)
    merged.group.attrs[MERGE_ATTR_KEY] = merge_record(stores, w)
    for c in merged.missing_chunks():
        a, b = merged.chunk_range(c)
        parts = [read_written(s, a, b, TOPK_ONLY) for s in stores]
        idx, prob = merge_topk([p.index for p in parts], [p.prob for p in parts], w, k)
        merged.write_chunk(c, CropLabels(boxes=parts[0].boxes, flips=parts[0].flips, index=idx, prob=prob))
    return merged

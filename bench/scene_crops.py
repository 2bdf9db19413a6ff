"""What a crop box shows in a scene (`bench.scenes`): visible objects, and whether a crop's label names one.

Boxes are FKD fractions (i/H, j/W, h/H, w/W), as the store and `scenes.json` keep them. An
object is visible in a crop when at least `visible` of its box lies inside the crop, or its
box fills at least `fill` of the crop (a small crop inside a large object shows that object,
though it holds little of its box). Defaults and reasons: bench/SCENES.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from fkd_dali.errors import ConfigError

from .scenes import Scene

if TYPE_CHECKING:
    from fkd_dali.crops.boxes import CropDistribution

VISIBLE = 0.3  # share of an object's box inside the crop
FILL = 0.5  # share of the crop covered by an object's box
#: Crop kinds, by what is visible: the labelled object (with or without distractors), only distractors, nothing.
KINDS = ("labelled", "distractor_only", "background")


@dataclass(frozen=True)
class ObjectArrays:
    """Every scene's objects as padded arrays (J = most objects in a scene): what vectorised checks need."""

    classes: np.ndarray  # (N, J) int64, -1 where a scene has fewer objects
    labelled: np.ndarray  # (N, J) bool
    boxes: np.ndarray  # (N, J, 4) float64 fractions (y, x, h, w); zeros where padded
    image_class: np.ndarray  # (N,) int64, the folder (hard) label


@dataclass(frozen=True)
class CropContent:
    """What one crop shows."""

    visible: tuple[int, ...]  # classes of the visible objects, labelled object first
    labelled: bool  # the labelled object is visible
    distractor_only: bool  # no labelled object, at least one distractor
    background: bool  # no object visible

    @property
    def kind(self) -> str:
        return "labelled" if self.labelled else "distractor_only" if self.distractor_only else "background"


def object_arrays(scenes: Sequence[Scene]) -> ObjectArrays:
    """Pad the scenes' objects into arrays, labelled object first (row j=0)."""
    width = max((len(s.objects) for s in scenes), default=1)
    n = len(scenes)
    classes = np.full((n, width), -1, dtype=np.int64)
    labelled = np.zeros((n, width), dtype=bool)
    boxes = np.zeros((n, width, 4), dtype=np.float64)
    for i, s in enumerate(scenes):
        ordered = sorted(s.objects, key=lambda o: o.role != "labelled")
        for j, o in enumerate(ordered):
            classes[i, j], labelled[i, j], boxes[i, j] = o.cls, o.role == "labelled", o.box
    return ObjectArrays(classes, labelled, boxes, np.array([s.cls for s in scenes], dtype=np.int64))


def visibility(object_boxes: np.ndarray, crop_boxes: np.ndarray, visible: float = VISIBLE,
               fill: float | None = FILL) -> np.ndarray:
    """(n, J) bool: is object j visible in crop n (boxes (n, J, 4) and (n, 4), fractions)?

    Padded objects (zero-size boxes) are never visible. `fill=None` keeps only the
    share-of-the-object rule.
    """
    _check_thresholds(visible, fill)
    ob = np.asarray(object_boxes, dtype=np.float64)
    cb = np.asarray(crop_boxes, dtype=np.float64)
    inter = _intersection(ob, cb)
    obj_area = ob[..., 2] * ob[..., 3]
    crop_area = (cb[:, 2] * cb[:, 3])[:, None]
    real = obj_area > 0
    seen = real & (inter >= visible * np.where(real, obj_area, 1.0) - 1e-12)
    if fill is not None:
        seen |= real & (inter >= fill * crop_area - 1e-12)
    return seen


def inside_share(object_boxes: np.ndarray, crop_boxes: np.ndarray) -> np.ndarray:
    """(n, J): the share of object j's box that lies inside crop n (0 for padded objects)."""
    ob = np.asarray(object_boxes, dtype=np.float64)
    area = ob[..., 2] * ob[..., 3]
    return np.where(area > 0, _intersection(ob, crop_boxes) / np.where(area > 0, area, 1.0), 0.0)


def _intersection(ob: np.ndarray, crop_boxes: np.ndarray) -> np.ndarray:
    cb = np.asarray(crop_boxes, dtype=np.float64)[:, None, :]
    dy = np.clip(np.minimum(ob[..., 0] + ob[..., 2], cb[..., 0] + cb[..., 2]) - np.maximum(ob[..., 0], cb[..., 0]), 0,
                 None)
    dx = np.clip(np.minimum(ob[..., 1] + ob[..., 3], cb[..., 1] + cb[..., 3]) - np.maximum(ob[..., 1], cb[..., 1]), 0,
                 None)
    return dy * dx


def _check_thresholds(visible: float, fill: float | None) -> None:
    if not 0 < visible <= 1:
        raise ConfigError(f"the visibility threshold must be in (0, 1], got {visible}")
    if fill is not None and not 0 < fill <= 1:
        raise ConfigError(f"the fill threshold must be in (0, 1] or None, got {fill}")


def crop_content(scene: Scene, box: Sequence[float], visible: float = VISIBLE, fill: float | None = FILL
                 ) -> CropContent:
    """What crop `box` (fractions y, x, h, w) of `scene` shows."""
    arrays = object_arrays([scene])
    seen = visibility(arrays.boxes, np.asarray(box, dtype=np.float64)[None, :], visible, fill)[0]
    classes = tuple(int(c) for c in arrays.classes[0][seen])
    lab = bool((seen & arrays.labelled[0]).any())
    return CropContent(classes, lab, (not lab) and bool(seen.any()), not bool(seen.any()))


def crop_kinds(arrays: ObjectArrays, image_ids: np.ndarray, boxes: np.ndarray, visible: float = VISIBLE,
               fill: float | None = FILL) -> tuple[np.ndarray, np.ndarray]:
    """(kind index into KINDS per crop (n,), visibility (n, J)) for crops `boxes` (n, 4) of images `image_ids`."""
    ids = np.asarray(image_ids, dtype=np.int64)
    seen = visibility(arrays.boxes[ids], boxes, visible, fill)
    lab = (seen & arrays.labelled[ids]).any(axis=1)
    any_seen = seen.any(axis=1)
    kinds = np.where(lab, 0, np.where(any_seen, 1, 2))
    return kinds, seen


def kind_shares(kinds: np.ndarray) -> dict[str, float]:
    n = max(len(kinds), 1)
    return {k: float(np.sum(kinds == i)) / n for i, k in enumerate(KINDS)}


def crop_statistics(scenes: Sequence[Scene], n_crops: int, seed: int = 0, scale: tuple[float, float] | None = None,
                    ratio: tuple[float, float] | None = None, visible: float = VISIBLE,
                    fill: float | None = FILL) -> dict:
    """Shares of `n_crops` random-resized crops (fkd-dali's own sampler) by what they show.

    Crops are spread evenly over the scenes (slots 0..ceil(n / N)-1 of every image,
    truncated to `n_crops`), drawn by `fkd_dali.crops.boxes.sample_crops` with
    torchvision's RandomResizedCrop semantics (scale 0.08-1, ratio 3/4-4/3 by default).
    """
    from fkd_dali.crops.boxes import CropDistribution
    from fkd_dali.defaults import CROP_RATIO, CROP_SCALE

    if n_crops < 1 or not scenes:
        raise ConfigError(f"crop statistics need >= 1 crop and scene, got {n_crops} crops, {len(scenes)} scenes")
    dist = CropDistribution(scale=scale or CROP_SCALE, ratio=ratio or CROP_RATIO, seed=seed)
    image_ids, boxes = sample_fraction_boxes(scenes, n_crops, dist)
    kinds, seen = crop_kinds(object_arrays(scenes), image_ids, boxes, visible, fill)
    out = {"crops": int(len(kinds)), "scale": list(dist.scale), "ratio": list(dist.ratio), "seed": seed,
           "visible": visible, "fill": fill, **kind_shares(kinds)}
    out["not_labelled"] = out["distractor_only"] + out["background"]
    out["labelled_and_distractor"] = float(np.mean(seen[:, 1:].any(axis=1) & (kinds == 0))) if seen.shape[1] > 1 \
        else 0.0
    return out


def sample_fraction_boxes(scenes: Sequence[Scene], n_crops: int, dist: "CropDistribution"
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, fraction boxes) of `n_crops` crops spread evenly over the scenes: every image's slot 0, then 1, ...

    Image ids are positions in `scenes` and the sampler's image key, so a store made for a
    folder in the same order with the same crop seed holds the same boxes.
    """
    from fkd_dali.crops.boxes import sample_crops

    n = len(scenes)
    slots = np.arange(-(-n_crops // n))
    sizes = np.array([[s.height, s.width] for s in scenes], dtype=np.int64)
    px, _ = sample_crops(sizes, np.arange(n), slots, dist)
    frac = px / sizes[:, None, [0, 1, 0, 1]].astype(np.float64)
    ids = np.repeat(np.arange(n), len(slots))
    order = np.argsort(np.tile(slots, n), kind="stable")[:n_crops]  # first every image's slot 0, then slot 1, ...
    return ids[order], frac.reshape(-1, 4)[order]


def crop_label_correctness(scenes: Sequence[Scene], image_ids: np.ndarray, boxes: np.ndarray,
                           predicted: np.ndarray, visible: float = VISIBLE, fill: float | None = FILL,
                           confidence: np.ndarray | None = None) -> dict:
    """How often a crop's label names an object the crop shows: the given per-crop top-1 vs the folder label.

    Args:
        scenes: the scenes the image ids index (e.g. `scenes_for_index(...)` of a store's paths).
        image_ids: (n,) scene index of each crop.
        boxes: (n, 4) crop boxes as fractions (y, x, h, w).
        predicted: (n,) predicted class of each crop (e.g. the teacher's stored top-1).
        confidence: (n,) the label's probability of `predicted`, if any (a folder label's is 1).

    Returns:
        `predicted_correct` / `hard_correct`: share of crops whose predicted / folder
        class is one of the visible objects' classes (a background-only crop has none,
        so both count it wrong); the same per crop kind under `by_kind`, with how often
        the prediction is the image's class, how often part of the labelled object is
        inside the crop (visible or not) and, given `confidence`, its mean; and the kind shares.
    """
    ids = np.asarray(image_ids, dtype=np.int64)
    pred = np.asarray(predicted, dtype=np.int64)
    if not (len(ids) == len(boxes) == len(pred)):
        raise ConfigError(f"crop-label correctness needs as many image ids, boxes and predictions, got "
                          f"{len(ids)}, {len(boxes)}, {len(pred)}")
    arrays = object_arrays(scenes)
    kinds, seen = crop_kinds(arrays, ids, np.asarray(boxes, dtype=np.float64), visible, fill)
    classes = arrays.classes[ids]
    pred_ok = (seen & (classes == pred[:, None])).any(axis=1)
    hard_ok = (seen & (classes == arrays.image_class[ids][:, None])).any(axis=1)
    is_image_class = pred == arrays.image_class[ids]
    labelled_inside = (inside_share(arrays.boxes[ids], boxes) * arrays.labelled[ids]).max(axis=1)
    by_kind = {}
    for i, k in enumerate(KINDS):
        sel = kinds == i

        def share(x: np.ndarray) -> float | None:
            return float(x[sel].mean()) if sel.any() else None

        by_kind[k] = {"crops": int(sel.sum()), "predicted_correct": share(pred_ok), "hard_correct": share(hard_ok),
                      "predicted_is_image_class": share(is_image_class),
                      "labelled_partly_inside": share(labelled_inside > 0)}
        if confidence is not None:
            by_kind[k]["mean_confidence"] = share(np.asarray(confidence, dtype=np.float64))
    return {"crops": int(len(ids)), "visible": visible, "fill": fill, "predicted_correct": float(pred_ok.mean()),
            "hard_correct": float(hard_ok.mean()), "shares": kind_shares(kinds), "by_kind": by_kind}

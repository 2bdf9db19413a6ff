"""The ground truth of `labels/gt_prob`: which teacher class each class folder of the dataset is.

FerKD's calibration needs, per crop, the teacher's probability of the image's true
class, so the folder class must be a class of the teacher. Two cases are unambiguous:
WordNet-id folders (ImageNet's layout) with a 1000-class ImageNet teacher, mapped by
timm's ImageNet metadata; and a teacher trained on this very folder dataset, whose
class i is the i-th folder in sorted order (as every ImageNet-style loader numbers
them), recognised by equal class counts. Anything else is refused: a guessed mapping
would give plausible-looking but wrong calibration.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fkd_dali.errors import ConfigError
from fkd_dali.store.schema import GroundTruthSpec

IMAGENET_CLASSES = 1000


def folder_class_map(class_names: Sequence[str], num_classes: int) -> tuple[str, np.ndarray] | None:
    """(rule, model class of each folder class) for a model with `num_classes` ImageNet-or-own-dataset
    outputs, or None when neither rule applies.

    The rules: "imagenet_wnid" (WordNet-id folders, 1000 outputs, timm's ImageNet
    metadata) and "folder_order" (as many outputs as folders, class i = i-th sorted folder).
    Label generation (`--gt-prob`) and evaluation of distilled students share them.
    """
    from fkd_dali.data.sample_data import imagenet_index_of

    if num_classes == IMAGENET_CLASSES:
        wnid = imagenet_index_of(list(class_names))
        if wnid is not None:
            return "imagenet_wnid", wnid
    if num_classes == len(class_names):
        return "folder_order", np.arange(num_classes, dtype=np.int64)
    return None


def ground_truth_spec(class_names: Sequence[str], num_classes: int, what: str = "--gt-prob") -> GroundTruthSpec:
    """The teacher class of each folder class, for a teacher with `num_classes` outputs.

    Args:
        class_names: the dataset's class folders, in index (sorted) order.
        num_classes: the teacher's number of classes.
        what: the option or command named in the error.

    Raises:
        ConfigError: neither WordNet-id folders with a 1000-class teacher nor as many
            teacher classes as folders (one line naming `what` and the two ways that work).
    """
    found = folder_class_map(class_names, num_classes)
    if found is not None:
        return GroundTruthSpec(found[0], tuple(int(c) for c in found[1]))
    raise ConfigError(
        f"{what}: cannot map the {len(class_names)} class folders to the teacher's {num_classes} classes: it needs "
        "ImageNet WordNet-id folders (n01440764, ...) with a 1000-class ImageNet teacher, or a teacher trained on "
        "this folder dataset (as many classes as folders, in sorted-folder order)")


def consistent_gt_prob(gt_prob: np.ndarray, index: np.ndarray, prob: np.ndarray, gt_class: np.ndarray) -> np.ndarray:
    """Recomputed ground-truth probabilities made consistent with a store's stored top-K.

    Where the ground-truth class is among a crop's stored top-K, its stored probability
    is the answer (the same softmax value, rounded alike); elsewhere the recomputed one,
    capped at the K-th stored probability. With the original generation's batch options
    the recomputation reproduces the top-K bit for bit and this changes nothing; with
    others (another batch size, another GPU) the last bits of the teacher's output may
    differ, and the store stays what `labels verify` expects instead of looking damaged.

    Args:
        gt_prob: (n, m) recomputed probabilities, already rounded as the store rounds them.
        index, prob: (n, m, K) the stored top-K class ids and probabilities.
        gt_class: (n,) ground-truth class of each image, in the teacher's classes.
    """
    hit = index.astype(np.int64) == np.asarray(gt_class, np.int64)[:, None, None]
    stored = np.where(hit, prob.astype(np.float32), 0.0).sum(-1)
    capped = np.minimum(np.asarray(gt_prob, np.float32), prob[..., -1].astype(np.float32))
    return np.where(hit.any(-1), stored, capped).astype(np.float16)

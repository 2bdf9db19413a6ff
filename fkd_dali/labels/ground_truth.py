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

from fkd_dali.errors import ConfigError
from fkd_dali.store.label_store import GroundTruthSpec

IMAGENET_CLASSES = 1000


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
    from fkd_dali.data.sample_data import imagenet_index_of

    if num_classes == IMAGENET_CLASSES:
        wnid = imagenet_index_of(list(class_names))
        if wnid is not None:
            return GroundTruthSpec("imagenet_wnid", tuple(int(c) for c in wnid))
    if num_classes == len(class_names):
        return GroundTruthSpec("folder_order", tuple(range(num_classes)))
    raise ConfigError(
        f"{what}: cannot map the {len(class_names)} class folders to the teacher's {num_classes} classes: it needs "
        "ImageNet WordNet-id folders (n01440764, ...) with a 1000-class ImageNet teacher, or a teacher trained on "
        "this folder dataset (as many classes as folders, in sorted-folder order)")

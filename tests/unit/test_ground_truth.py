"""The ground truth of `labels/gt_prob`: folder classes mapped to the teacher's classes, or a refusal."""
from __future__ import annotations

import pytest

from fkd_dali.errors import ConfigError
from fkd_dali.labels.ground_truth import ground_truth_spec

# three ImageNet WordNet ids and their class indices (timm's ImageNet metadata)
WNIDS = ["n01440764", "n02123045", "n07920052"]  # tench, tabby cat, espresso


def test_wordnet_folders_with_an_imagenet_teacher_map_by_wnid():
    gt = ground_truth_spec(WNIDS, 1000)
    assert gt.mapping == "imagenet_wnid" and gt.teacher_class == (0, 281, 967)


@pytest.mark.parametrize("names, num_classes", [(["a", "b", "c"], 3), (WNIDS, 3),
                                                ([f"c{i:04d}" for i in range(1000)], 1000)])
def test_as_many_teacher_classes_as_folders_map_in_folder_order(names, num_classes):
    gt = ground_truth_spec(names, num_classes)
    assert gt.mapping == "folder_order" and gt.teacher_class == tuple(range(num_classes))


@pytest.mark.parametrize("names, num_classes", [(["a", "b", "c"], 1000), (WNIDS, 5), (["a", "b"], 128)])
def test_anything_else_is_refused_naming_the_option(names, num_classes):
    with pytest.raises(ConfigError) as e:
        ground_truth_spec(names, num_classes)
    msg = str(e.value)
    assert msg.startswith("--gt-prob:") and "\n" not in msg
    assert f"{len(names)} class folders" in msg and f"{num_classes} classes" in msg and "WordNet" in msg

"""The ground truth of `labels/gt_prob`: folder classes mapped to the teacher's classes, or a refusal."""
from __future__ import annotations

import numpy as np
import pytest

from fkd_dali.errors import ConfigError
from fkd_dali.store.ground_truth import ground_truth_spec

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


def test_recomputed_gt_prob_is_made_consistent_with_the_stored_top_k():
    from fkd_dali.store.ground_truth import consistent_gt_prob

    index = np.array([[[3, 1, 0], [2, 0, 1]], [[4, 2, 1], [1, 4, 0]]], np.int16)  # (2 images, 2 crops, K=3)
    prob = np.array([[[0.5, 0.25, 0.125], [0.75, 0.125, 0.0625]],
                     [[0.375, 0.25, 0.125], [0.5, 0.25, 0.25]]], np.float16)
    recomputed = np.array([[0.2490, 0.3], [0.9, 0.01]], np.float16)  # last bits off, or wrong beside the top-K
    got = consistent_gt_prob(recomputed, index, prob, gt_class=np.array([1, 0]))
    # image 0 (gt 1): crop 0 has it 2nd -> 0.25 stored; crop 1 has it 3rd -> 0.0625 stored
    # image 1 (gt 0): crop 0 lacks it -> min(0.9, K-th 0.125); crop 1 has it 3rd -> 0.25 stored
    np.testing.assert_array_equal(got, np.array([[0.25, 0.0625], [0.125, 0.25]], np.float16))
    assert got.dtype == np.float16
    below = consistent_gt_prob(np.array([[0.01, 0.01], [0.01, 0.01]], np.float16), index, prob, np.array([7, 7]))
    np.testing.assert_array_equal(below, np.full((2, 2), 0.01, np.float16))  # not in any top-K, below the K-th

"""The feed side of the crop graph: flips travel as reversed ROIs."""
from __future__ import annotations

import numpy as np

from fkd_dali.loaders.feed import FeedBatch, flipped_rois


def test_flipped_rois_swap_x_of_flipped_crops_only():
    rois = np.array([[1, 2, 11, 22], [3, 4, 13, 24]], np.float32)
    out = flipped_rois(rois, np.array([0, 1]))
    np.testing.assert_array_equal(out, [[1, 2, 11, 22], [3, 24, 13, 4]])
    np.testing.assert_array_equal(rois, [[1, 2, 11, 22], [3, 4, 13, 24]])  # input untouched
    assert out.dtype == np.float32


def test_feed_batch_hands_the_graph_reversed_rois():
    rois = np.array([[0, 0, 5, 5], [0, 1, 5, 6]], np.float32)
    batch = FeedBatch(encoded=[np.zeros(1, np.uint8)], rois=[rois], flips=[np.array([1, 0], np.int32)],
                      meta=[np.zeros(1, np.int64)])
    np.testing.assert_array_equal(batch.flipped_rois[0], [[0, 5, 5, 0], [0, 1, 5, 6]])

"""Crop boxes: counter-based determinism, bounds, torchvision's distribution, the uint16 encoding."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import RandomResizedCrop

from fkd_dali.crops.boxes import BOX_SCALE, CropDistribution, decode_boxes, encode_boxes, roi_corners, sample_crops
from fkd_dali.errors import ConfigError

SIZES = np.array([[375, 500], [500, 375], [211, 240], [1, 1], [10, 2000], [2000, 10]], dtype=np.int32)

# Two-sample KS statistic bound for 20k vs 20k draws. The 0.1% critical value is
# 1.95 * sqrt(2 / 20000) = 0.0195; the draws are seeded, so the test is deterministic
# and the bound only has to sit clear of what identical distributions give (~0.005-0.012).
KS_DRAWS = 20_000
KS_MAX = 0.02


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """max |F_a(x) - F_b(x)| over all sample values (exact for ties/discrete data)."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def draw(dist: CropDistribution, sizes=SIZES, n_slots: int = 16, first_image: int = 0):
    ids = np.arange(first_image, first_image + len(sizes))
    return sample_crops(sizes, ids, np.arange(n_slots), dist)


# -- determinism -------------------------------------------------------------------------------

def test_same_seed_same_boxes():
    b1, f1 = draw(CropDistribution(seed=7))
    b2, f2 = draw(CropDistribution(seed=7))
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(f1, f2)
    assert b1.dtype == np.int32 and b1.shape == (len(SIZES), 16, 4) and f1.shape == (len(SIZES), 16)


@pytest.mark.parametrize("change", ["seed", "image", "slot"])
def test_other_key_gives_other_boxes(change):
    size = np.array([[375, 500]] * 50, dtype=np.int32)
    slots = np.arange(20)
    base, _ = sample_crops(size, np.arange(50), slots, CropDistribution(seed=0))
    if change == "seed":
        other, _ = sample_crops(size, np.arange(50), slots, CropDistribution(seed=1))
    elif change == "image":  # same sizes, image ids shifted by 50
        other, _ = sample_crops(size, np.arange(50, 100), slots, CropDistribution(seed=0))
    else:  # slots shifted by 20
        other, _ = sample_crops(size, np.arange(50), slots + 20, CropDistribution(seed=0))
    same = np.all(base == other, axis=-1).mean()
    assert same < 0.01, f"{same:.1%} of boxes unchanged when the {change} changes"


def test_single_image_slot_regenerates_alone():
    dist = CropDistribution(seed=3)
    full_b, full_f = draw(dist, n_slots=32, first_image=100)
    for row, (i, s) in enumerate([(0, 0), (3, 31), (5, 17), (2, 9)]):
        b, f = sample_crops(SIZES[i:i + 1], np.array([100 + i]), np.array([s]), dist)
        np.testing.assert_array_equal(b[0, 0], full_b[i, s])
        assert f[0, 0] == full_f[i, s]
    # batch composition and order do not matter
    ids = np.array([105, 101])
    b, f = sample_crops(SIZES[[5, 1]], ids, np.array([30, 4, 0]), dist)
    np.testing.assert_array_equal(b, full_b[[5, 1]][:, [30, 4, 0]])
    np.testing.assert_array_equal(f, full_f[[5, 1]][:, [30, 4, 0]])


# -- bounds ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(10, 2000), (2000, 10), (1, 1), (1, 5000), (3, 2), (375, 500), (19999, 20000)])
@pytest.mark.parametrize("scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 1.0), (0.1, 10.0)),
                                         ((1.0, 1.0), (1.0, 1.0))])
def test_boxes_inside_image(size, scale, ratio):
    sizes = np.array([size], dtype=np.int32)
    boxes, _ = sample_crops(sizes, np.array([0]), np.arange(500), CropDistribution(scale=scale, ratio=ratio))
    y, x, h, w = (boxes[0, :, k] for k in range(4))
    height, width = size
    assert (h >= 1).all() and (w >= 1).all()
    assert (y >= 0).all() and (x >= 0).all()
    assert (y + h <= height).all() and (x + w <= width).all()


# -- distribution: torchvision's RandomResizedCrop.get_params -----------------------------------

def _features(boxes: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    y, x, h, w = (boxes[:, k].astype(np.float64) for k in range(4))
    return {"h/H": h / height, "w/W": w / width, "area": h * w / (height * width), "aspect": w / h,
            "centre_y": (y + h / 2) / height, "centre_x": (x + w / 2) / width}


@pytest.fixture(scope="module")
def torchvision_and_ours():
    height, width = 375, 500
    torch.manual_seed(0)
    img = torch.empty(1, height, width, dtype=torch.uint8)
    tv = np.array([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(KS_DRAWS)])
    ours, _ = sample_crops(np.array([[height, width]]), np.array([0]), np.arange(KS_DRAWS), CropDistribution())
    return _features(tv, height, width), _features(ours[0], height, width)


@pytest.mark.parametrize("feature", ["h/H", "w/W", "area", "aspect", "centre_y", "centre_x"])
def test_distribution_matches_torchvision(torchvision_and_ours, feature):
    tv, ours = torchvision_and_ours
    stat = ks_statistic(tv[feature], ours[feature])
    assert stat < KS_MAX, f"{feature}: KS statistic {stat:.4f} >= {KS_MAX}"


def test_distribution_detects_a_wrong_scale(torchvision_and_ours):
    """The KS check has teeth: a slightly different scale range fails it."""
    tv, _ = torchvision_and_ours
    wrong, _ = sample_crops(np.array([[375, 500]]), np.array([0]), np.arange(KS_DRAWS),
                            CropDistribution(scale=(0.12, 1.0)))
    assert ks_statistic(tv["area"], _features(wrong[0], 375, 500)["area"]) > 2 * KS_MAX


@pytest.mark.parametrize("flip_prob", [0.0, 0.2, 0.5, 1.0])
def test_flip_rate(flip_prob):
    _, flips = sample_crops(np.array([[375, 500]] * 4), np.arange(4), np.arange(5000),
                            CropDistribution(flip_prob=flip_prob))
    assert abs(flips.mean() - flip_prob) < 0.01  # 20k draws: sd <= 0.0035


def test_flips_independent_of_boxes():
    boxes, flips = sample_crops(np.array([[375, 500]]), np.array([0]), np.arange(20000), CropDistribution())
    area = boxes[0, :, 2] * boxes[0, :, 3]
    big = area > np.median(area)
    assert abs(flips[0, big].mean() - flips[0, ~big].mean()) < 0.03


@pytest.mark.parametrize("size,scale,ratio", [
    ((375, 500), (1.0, 1.0), (0.5, 0.9)),  # wide image, ratio range below it: h=H, w=round(0.9*H)=338 (337.5)
    ((500, 375), (1.0, 1.0), (1.0, 2.0)),  # tall image, ratio range above it
    ((375, 500), (1.0, 1.0), (0.5, 2.0)),  # aspect in range but area 1.0 never fits: whole image
    ((10, 2000), (0.9, 1.0), (3 / 4, 4 / 3)),
    ((2000, 10), (0.9, 1.0), (3 / 4, 4 / 3)),
    ((333, 333), (1.0, 1.0), (1.5, 2.5)),
])
def test_fallback_centre_crop_equals_torchvision(size, scale, ratio):
    height, width = size
    tv = RandomResizedCrop.get_params(torch.empty(1, height, width), list(scale), list(ratio))
    boxes, _ = sample_crops(np.array([size]), np.array([0]), np.arange(50), CropDistribution(scale=scale, ratio=ratio))
    # every draw must fall back (no attempt can fit), so every slot is torchvision's centre crop
    for b in boxes[0]:
        assert tuple(int(v) for v in b) == tuple(tv)


# -- uint16 encoding ------------------------------------------------------------------------

@pytest.mark.parametrize("side", [1, 2, 3, 7, 224, 375, 500, 4095, 10007, 19999, 20000, 32768, 65535])
def test_encode_decode_exact(side):
    v = np.arange(side + 1)
    # every coordinate value 0..side as y and h (height side), reversed as x and w (width side)
    boxes = np.stack([v, v[::-1], v, v[::-1]], axis=-1)[None].astype(np.int32)  # (1, n, 4)
    sizes = np.array([[side, side]])
    enc = encode_boxes(boxes, sizes)
    assert enc.dtype == np.uint16
    np.testing.assert_array_equal(decode_boxes(enc, sizes), boxes)
    np.testing.assert_array_equal(encode_boxes(decode_boxes(enc, sizes), sizes), enc)  # re-encoding is stable


def test_encode_decode_sampled_boxes_mixed_sizes():
    sizes = np.array([[375, 500], [20000, 3], [1, 1], [12345, 20000]], dtype=np.int32)
    boxes, _ = sample_crops(sizes, np.arange(4), np.arange(200), CropDistribution())
    np.testing.assert_array_equal(decode_boxes(encode_boxes(boxes, sizes), sizes), boxes)
    full = encode_boxes(np.array([[[0, 0, 375, 500]]]), sizes[:1])
    np.testing.assert_array_equal(full, [[[0, 0, BOX_SCALE, BOX_SCALE]]])


def test_roi_corners():
    np.testing.assert_array_equal(roi_corners(np.array([[3, 4, 10, 20]])), [[3, 4, 13, 24]])
    assert roi_corners(np.zeros((2, 5, 4), np.int32)).dtype == np.float32


@pytest.mark.parametrize("kwargs", [dict(scale=(0.0, 1.0)), dict(scale=(0.5, 0.2)), dict(scale=(0.1, 1.5)),
                                    dict(ratio=(2.0, 1.0)), dict(ratio=(0.0, 1.0)), dict(flip_prob=1.5),
                                    dict(seed=-1)])
def test_bad_distribution_rejected(kwargs):
    with pytest.raises(ConfigError):
        CropDistribution(**kwargs)


def test_seed_is_64_bit_safe():
    big = 2 ** 63 + 12345
    b1, _ = sample_crops(SIZES[:1], np.array([2 ** 40]), np.arange(4), CropDistribution(seed=big))
    b2, _ = sample_crops(SIZES[:1], np.array([2 ** 40]), np.arange(4), CropDistribution(seed=big))
    np.testing.assert_array_equal(b1, b2)
    assert math.isfinite(float(b1.sum()))

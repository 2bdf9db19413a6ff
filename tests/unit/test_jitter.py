"""Colour jitter: factors from the counter-based generator, and the DALI fragment against its formula."""
from __future__ import annotations

import numpy as np
import pytest

from fkd_dali.crops.jitter import jitter_factors


def test_factors_lie_in_torchvisions_ranges_and_cover_them():
    f = jitter_factors(0.4, seed=1, pass_idx=0, image_ids=np.arange(200), slots=np.arange(8))
    assert f.shape == (200, 8, 3) and f.dtype == np.float32
    assert f.min() >= 0.6 and f.max() <= 1.4
    assert f.min() < 0.61 and f.max() > 1.39  # 4800 draws per factor reach both ends
    strong = jitter_factors(1.5, seed=1, pass_idx=0, image_ids=np.arange(50), slots=np.arange(4))
    assert strong.min() >= 0.0 and strong.max() <= 2.5  # [max(0, 1 - 1.5), 2.5]


def test_factors_are_a_pure_function_of_seed_pass_image_slot():
    a = jitter_factors(0.4, 3, 5, np.array([7, 2, 9]), np.array([20, 21]))
    alone = jitter_factors(0.4, 3, 5, np.array([2]), np.array([21]))
    assert np.array_equal(a[1, 1], alone[0, 0])  # regenerated alone, in any batch
    assert not np.array_equal(a, jitter_factors(0.4, 3, 6, np.array([7, 2, 9]), np.array([20, 21])))  # pass
    assert not np.array_equal(a, jitter_factors(0.4, 4, 5, np.array([7, 2, 9]), np.array([20, 21])))  # seed
    assert len({tuple(v) for v in a.reshape(-1, 3)}) == 6  # every crop its own factors
    ad_hoc = jitter_factors(0.4, 3, -1, np.array([7]), np.array([0]))  # an ad-hoc table's pass -1
    assert ad_hoc.shape == (1, 1, 3)


def dali_formula(x: np.ndarray, f: np.ndarray) -> np.ndarray:
    """DALI's color_twist: b * (128 + c * (sat(x) - 128)), sat(x) = grey + s * (x - grey), luma grey."""
    b, c, s = (f[:, i].reshape(-1, 1, 1, 1) for i in range(3))
    grey = (x * np.array([0.299, 0.587, 0.114])).sum(-1, keepdims=True)
    return np.clip(np.rint(b * (128 + c * (grey + s * (x - grey) - 128))), 0, 255)


def test_the_dali_fragment_applies_each_crops_factors():
    from nvidia.dali import fn, pipeline_def

    from fkd_dali.pipelines.fragments import color_jitter

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)  # F, H, W, C
    factors = jitter_factors(0.4, 0, 0, np.array([0]), np.arange(4))[0]
    factors[0] = (1.0, 1.0, 1.0)  # the identity

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def graph():
        x = fn.external_source(source=lambda: [crops], batch=True, layout="FHWC")
        f = fn.external_source(source=lambda: [factors], batch=True)
        return color_jitter(x, f)

    pipe = graph()
    pipe.build()
    out = np.array(pipe.run()[0][0]).astype(np.float64)
    assert np.array_equal(out[0], crops[0])
    expected = dali_formula(crops.astype(np.float64), factors.astype(np.float64))
    assert np.abs(out - expected).max() <= 1.0  # rounding of DALI's fused matrix
    assert np.abs(out[1:] - crops[1:]).mean() > 5  # the others really changed


@pytest.mark.parametrize("strength", [-0.1, float("nan"), float("inf")])
def test_bad_strength_names_the_flag(strength):
    from fkd_dali.config import TrainConfig
    from fkd_dali.errors import ConfigError

    with pytest.raises(ConfigError, match="--color-jitter"):
        TrainConfig(data="d", labels="s", color_jitter=strength)


def test_vanilla_refuses_color_jitter():
    from fkd_dali.config import TrainConfig
    from fkd_dali.errors import ConfigError

    with pytest.raises(ConfigError, match="--color-jitter applies to replayed"):
        TrainConfig(data="d", labels="none", color_jitter=0.4)

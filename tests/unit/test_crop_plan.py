"""Tests of fkd_dali.crops.plan: slot coverage, image order, rank split, steps."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fkd_dali.crops.plan import (
    PassPlan,
    epochs_to_passes,
    image_order,
    make_pass_plan,
    pass_slots,
    passes_per_cycle,
    rank_images,
)
from fkd_dali.errors import CropPlanError

SEED = 1234


@pytest.mark.parametrize(
    "pass_idx, m, M, expected",
    [
        (0, 4, 8, [0, 1, 2, 3]),
        (1, 4, 8, [4, 5, 6, 7]),
        (2, 4, 8, [0, 1, 2, 3]),
        (1, 4, 6, [4, 5, 0, 1]),  # wraps around the end
        (2, 4, 6, [2, 3, 4, 5]),
        (3, 1, 5, [3]),
        (7, 5, 5, [0, 1, 2, 3, 4]),
    ],
)
def test_pass_slots_hand_cases(pass_idx: int, m: int, M: int, expected: list[int]) -> None:
    slots = pass_slots(pass_idx, m, M)
    assert slots.dtype == np.int64
    assert slots.tolist() == expected


@pytest.mark.parametrize("m, M", [(4, 8), (4, 500), (2, 2), (1, 3), (4, 6), (3, 10), (7, 500)])
def test_every_slot_used_equally_over_a_cycle(m: int, M: int) -> None:
    cycle = passes_per_cycle(m, M)
    assert cycle == math.lcm(m, M) // m
    if M % m == 0:
        assert cycle == M // m
    used = np.concatenate([pass_slots(p, m, M) for p in range(cycle)])
    counts = np.bincount(used, minlength=M)
    assert (counts == math.lcm(m, M) // M).all()
    # Each pass uses m distinct slots, and the next cycle starts over at slot 0.
    for p in range(cycle):
        assert len(set(pass_slots(p, m, M).tolist())) == m
    assert pass_slots(cycle, m, M).tolist() == pass_slots(0, m, M).tolist()


@pytest.mark.parametrize("m, M", [(4, 6), (3, 10), (4, 8)])
def test_no_slot_reused_before_all_are_used(m: int, M: int) -> None:
    stream = np.concatenate([pass_slots(p, m, M) for p in range(math.ceil(M / m))])
    assert sorted(stream[:M].tolist()) == list(range(M))


@pytest.mark.parametrize("n_images, world", [(10, 1), (10, 3), (12, 4), (101, 8)])
def test_one_pass_gives_each_used_image_exactly_m_slots(n_images: int, world: int) -> None:
    m, M = 4, 10
    seen: dict[int, list[int]] = {}
    for rank in range(world):
        plan = make_pass_plan(SEED, 3, m, M, n_images, rank, world)
        for image in plan.images.tolist():
            assert image not in seen
            seen[image] = plan.slots.tolist()
    assert len(seen) == (n_images // world) * world
    assert all(slots == [2, 3, 4, 5] for slots in seen.values())


def test_image_order_is_a_seeded_permutation() -> None:
    order = image_order(SEED, 0, 50)
    assert order.dtype == np.int64
    assert sorted(order.tolist()) == list(range(50))
    np.testing.assert_array_equal(order, image_order(SEED, 0, 50))
    assert not np.array_equal(order, image_order(SEED, 1, 50))
    assert not np.array_equal(order, image_order(SEED + 1, 0, 50))


def test_image_order_ignores_global_numpy_state() -> None:
    np.random.seed(0)
    first = image_order(SEED, 2, 30)
    np.random.seed(99)
    np.testing.assert_array_equal(first, image_order(SEED, 2, 30))


@pytest.mark.parametrize("n_images, world", [(10, 1), (10, 3), (12, 4), (101, 8), (8, 8)])
def test_ranks_are_disjoint_equal_and_cover_the_permutation_head(n_images: int, world: int) -> None:
    parts = [rank_images(SEED, 5, n_images, rank, world) for rank in range(world)]
    per_rank = n_images // world
    assert all(len(part) == per_rank for part in parts)
    joined = np.concatenate(parts)
    assert len(set(joined.tolist())) == len(joined)
    order = image_order(SEED, 5, n_images)
    np.testing.assert_array_equal(joined, order[: per_rank * world])


def test_dropped_tail_changes_between_passes() -> None:
    n_images, world = 103, 4
    dropped = set()
    for p in range(20):
        used = np.concatenate([rank_images(SEED, p, n_images, r, world) for r in range(world)])
        dropped |= set(range(n_images)) - set(used.tolist())
    assert len(dropped) > 3 * 3


@pytest.mark.parametrize("n_images, world", [(10, 3), (12, 4), (101, 8)])
def test_without_drop_last_ranks_pad_with_the_head(n_images: int, world: int) -> None:
    parts = [rank_images(SEED, 0, n_images, r, world, drop_last=False) for r in range(world)]
    per_rank = math.ceil(n_images / world)
    assert all(len(part) == per_rank for part in parts)
    joined = np.concatenate(parts)
    order = image_order(SEED, 0, n_images)
    assert set(joined.tolist()) == set(range(n_images))
    np.testing.assert_array_equal(joined[n_images:], order[: per_rank * world - n_images])


@pytest.mark.parametrize("n_images, images_per_step", [(10, 3), (12, 4), (12, 5), (7, 7), (7, 1)])
def test_steps_cover_rank_images_in_order(n_images: int, images_per_step: int) -> None:
    plan = make_pass_plan(SEED, 1, 2, 8, n_images)
    n_steps = plan.steps(images_per_step)
    assert n_steps == n_images // images_per_step
    chunks = [plan.step_images(s, images_per_step) for s in range(n_steps)]
    assert all(len(chunk) == images_per_step for chunk in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), plan.images[: n_steps * images_per_step])


def test_pass_plan_fields_and_immutability() -> None:
    plan = make_pass_plan(SEED, 2, 4, 6, 20, rank=1, world=2)
    assert isinstance(plan, PassPlan)
    assert (plan.seed, plan.pass_idx, plan.m, plan.M, plan.rank, plan.world) == (SEED, 2, 4, 6, 1, 2)
    assert plan.n_images == 10
    assert plan.slots.tolist() == [2, 3, 4, 5]
    np.testing.assert_array_equal(plan.images, rank_images(SEED, 2, 20, 1, 2))
    with pytest.raises(ValueError):
        plan.images[0] = 0
    with pytest.raises(AttributeError):
        plan.pass_idx = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "epochs, m, expected", [(0, 4, 0), (1, 4, 1), (4, 4, 1), (5, 4, 2), (300, 4, 75), (301, 4, 76), (7, 1, 7)]
)
def test_epochs_to_passes(epochs: int, m: int, expected: int) -> None:
    assert epochs_to_passes(epochs, m) == expected


@pytest.mark.parametrize(
    "call",
    [
        lambda: pass_slots(0, 5, 4),
        lambda: pass_slots(0, 0, 4),
        lambda: pass_slots(-1, 2, 4),
        lambda: passes_per_cycle(9, 8),
        lambda: passes_per_cycle(0, 8),
        lambda: image_order(-1, 0, 10),
        lambda: rank_images(SEED, 0, 3, 0, 4),
        lambda: rank_images(SEED, 0, 10, 2, 2),
        lambda: rank_images(SEED, 0, 10, -1, 2),
        lambda: rank_images(SEED, 0, 10, 0, 0),
        lambda: make_pass_plan(SEED, 0, 8, 4, 10),
        lambda: make_pass_plan(SEED, 0, 2, 4, 10).steps(0),
        lambda: make_pass_plan(SEED, 0, 2, 4, 10).step_images(3, 3),
        lambda: make_pass_plan(SEED, 0, 2, 4, 10).step_images(-1, 3),
        lambda: epochs_to_passes(10, 0),
        lambda: epochs_to_passes(-1, 4),
    ],
)
def test_bad_input_raises_crop_plan_error(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CropPlanError):
        call()

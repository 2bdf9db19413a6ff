"""The FKD replay plan: which stored crop slots and which images each pass, rank and step uses.

Pure numpy and a pure function of (seed, pass, rank, world), so a resumed run replays
exactly the same samples. One pass over the dataset = m epochs in FKD's accounting,
because each image contributes its m crops of that pass to one mini-batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fkd_dali.errors import CropPlanError


def _check_slots(m: int, M: int | None) -> None:
    if m < 1 or (M is not None and m > M):
        raise CropPlanError(
            f"crops per pass m={m} must be between 1 and the crops stored per image M={M}: "
            "lower --num-crops or regenerate labels with more crops per image"
        )


def _check_non_negative(name: str, value: int) -> None:
    if value < 0:
        raise CropPlanError(f"{name} must be >= 0, got {value}")


def pass_slots(pass_idx: int, m: int, M: int | None) -> np.ndarray:
    """Returns the crop slots every image uses in pass ``pass_idx``.

    Slots run as one cyclic stream ``(p*m + j) mod M``: each stored crop is used once
    before any is reused, and because crops were drawn i.i.d. the slot order is
    already random, so no shuffling of slots is needed.

    Args:
        pass_idx: p >= 0, the pass number (pass p covers epochs p*m .. p*m + m - 1).
        m: crops of each image per pass (num_crops), 1 <= m <= M.
        M: crops stored per image; None for crops drawn afresh each pass (online KD,
            ReLabel), whose slots ``p*m + j`` never wrap, so every pass gets new crops.

    Returns:
        (m,) int64 slot indices, all distinct.

    Raises:
        CropPlanError: m outside [1, M] or a negative pass.
    """
    _check_slots(m, M)
    _check_non_negative("pass_idx", pass_idx)
    slots = pass_idx * m + np.arange(m, dtype=np.int64)
    return slots if M is None else slots % M


def passes_per_cycle(m: int, M: int) -> int:
    """Returns the period of `pass_slots`: after it, every slot was used equally often.

    When m divides M this is M / m and each slot is used once per cycle. Otherwise a
    pass wraps around the end (e.g. m=4, M=6: slots 0-3, then 4,5,0,1, then 2-5), so
    every slot is first covered after ceil(M / m) passes, but the plan only returns to
    slot 0 after lcm(m, M) / m passes, in which each slot is used lcm(m, M) / M times.

    Raises:
        CropPlanError: m outside [1, M].
    """
    _check_slots(m, M)
    return math.lcm(m, M) // m


def image_order(seed: int, pass_idx: int, n_images: int) -> np.ndarray:
    """Returns the global image order of a pass, a permutation of ``range(n_images)``.

    Drawn from ``PCG64(SeedSequence([seed, pass_idx]))``, so it depends only on the
    run's plan seed and the pass, never on the rank, world size or numpy's global state.

    Raises:
        CropPlanError: a negative seed, pass or image count.
    """
    _check_non_negative("seed", seed)
    _check_non_negative("pass_idx", pass_idx)
    _check_non_negative("n_images", n_images)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, pass_idx])))
    return rng.permutation(n_images).astype(np.int64, copy=False)


def rank_images(
    seed: int, pass_idx: int, n_images: int, rank: int, world: int, drop_last: bool = True
) -> np.ndarray:
    """Returns this rank's images of a pass, in order: one contiguous part of `image_order`.

    With ``drop_last`` (the default, like ``DistributedSampler(drop_last=True)``) every
    rank gets ``n_images // world`` images and the ``n_images % world`` last images of
    the permutation are not used in this pass; since the permutation changes every
    pass, no image is systematically dropped. Without it the permutation is padded
    with its own head to a multiple of ``world`` (as ``DistributedSampler`` does), so
    a few images are seen twice in the pass. Either way all ranks get equal counts and
    so run the same number of iterations.

    Args:
        seed, pass_idx, n_images: see `image_order`.
        rank: this process's rank, 0 <= rank < world.
        world: number of ranks (DDP world size).
        drop_last: drop the remainder (True) or pad with repeats (False).

    Returns:
        int64 image ids of this rank.

    Raises:
        CropPlanError: world < 1, rank outside [0, world) or n_images < world.
    """
    if world < 1:
        raise CropPlanError(f"world size must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise CropPlanError(f"rank {rank} is outside [0, {world}) for world size {world}")
    if n_images < world:
        raise CropPlanError(
            f"{n_images} images cannot be split over {world} ranks: use fewer processes"
        )
    order = image_order(seed, pass_idx, n_images)
    if drop_last:
        per_rank = n_images // world
    else:
        per_rank = -(-n_images // world)
        order = np.concatenate([order, order[: per_rank * world - n_images]])
    return order[rank * per_rank : (rank + 1) * per_rank]


@dataclass(frozen=True, eq=False)
class PassPlan:
    """What one rank replays in one pass: its images (in order) and the pass's slots.

    Arrays are made read-only, so a plan can be shared with loader threads safely.
    Equality is identity (numpy arrays have no single truth value).
    """

    seed: int
    pass_idx: int
    m: int
    M: int | None  # crops per image; None: drawn afresh, unbounded
    rank: int
    world: int
    images: np.ndarray
    slots: np.ndarray

    def __post_init__(self) -> None:
        if self.slots.shape != (self.m,):
            raise CropPlanError(f"pass plan has {self.slots.shape} slots for m={self.m}")
        self.images.setflags(write=False)
        self.slots.setflags(write=False)

    @property
    def n_images(self) -> int:
        """Number of images this rank sees in the pass."""
        return int(self.images.shape[0])

    def steps(self, images_per_step: int) -> int:
        """Returns the number of full steps: ``n_images // images_per_step``.

        The tail smaller than one step is dropped so that every rank runs the same
        number of equal-sized steps (a short last batch would change the loss scale
        and desynchronize DDP collectives across ranks).

        Raises:
            CropPlanError: images_per_step < 1.
        """
        if images_per_step < 1:
            raise CropPlanError(f"images per step must be >= 1, got {images_per_step}")
        return self.n_images // images_per_step

    def step_images(self, step: int, images_per_step: int) -> np.ndarray:
        """Returns the image ids of one step (``images_per_step`` of them, in plan order).

        Raises:
            CropPlanError: images_per_step < 1 or step outside [0, steps).
        """
        n_steps = self.steps(images_per_step)
        if not 0 <= step < n_steps:
            raise CropPlanError(f"step {step} is outside [0, {n_steps}) in pass {self.pass_idx}")
        return self.images[step * images_per_step : (step + 1) * images_per_step]


def make_pass_plan(
    seed: int,
    pass_idx: int,
    m: int,
    M: int | None,
    n_images: int,
    rank: int = 0,
    world: int = 1,
    drop_last: bool = True,
) -> PassPlan:
    """Builds the `PassPlan` of one rank; see `pass_slots` and `rank_images` for the rules.

    Raises:
        CropPlanError: any argument out of range (see `pass_slots`, `rank_images`).
    """
    slots = pass_slots(pass_idx, m, M)
    images = rank_images(seed, pass_idx, n_images, rank, world, drop_last)
    return PassPlan(seed, pass_idx, m, M, rank, world, np.ascontiguousarray(images), slots)


def epochs_to_passes(epochs: int, m: int) -> int:
    """Converts FKD epochs to passes: one pass = m epochs, so ``ceil(epochs / m)``.

    Raises:
        CropPlanError: m < 1 or epochs < 0.
    """
    if m < 1:
        raise CropPlanError(f"crops per pass m must be >= 1, got {m}")
    _check_non_negative("epochs", epochs)
    return -(-epochs // m)

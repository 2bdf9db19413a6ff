"""Fresh random crops for online KD (`fkd-dali train --labels online`): the replay loader without a store.

Online KD, the method FKD replaces, runs the teacher on every training crop, so the
crops need no store: each pass draws new ones. They are cut by the same crop graph as
replay (`fkd_dali.pipelines.crops`, through `ReplayLoader`), with boxes and flips from
the counter-based sampler of `fkd_dali.crops.boxes`, keyed by (seed, image, slot) with
slots ``p*m .. p*m + m - 1`` in pass p: fresh crops every pass that are still a pure
function of (seed, pass, image), so a resumed run cuts exactly the same pixels.
Batches carry no labels (`index`, `prob` are None); the teacher supplies them
(`fkd_dali.train.online`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from fkd_dali.crops.boxes import CropDistribution, encode_boxes, roi_corners, sample_crops
from fkd_dali.loaders.pass_table import PassTable
from fkd_dali.data.index import DatasetIndex
from fkd_dali.defaults import CROP_RATIO, CROP_SCALE, FLIP_PROB, INTERPOLATION
from fkd_dali.loaders.replay import ReplayLoader


@dataclass(frozen=True)
class _FreshSlots:
    """Stands in for the store `ReplayLoader` reads its slot count M from: with no store
    there is no bound, so the plan's cyclic slots (p*m + j) mod M never wrap (M = 2**62)."""

    crops_per_image: int = 2**62


class FreshCropLoader(ReplayLoader):
    """Random-resized crops drawn afresh each pass, cut by the replay crop graph; no labels.

    Args: as `ReplayLoader` (less store, labels and prefetching; `color_jitter` too),
    plus the crop distribution (`scale`, `ratio`, `flip_prob`, torchvision's
    RandomResizedCrop semantics); `seed` keys both the image order and the boxes.
    """

    def __init__(self, index: DatasetIndex, m: int, batch_size: int, size: int, mean: Sequence[float],
                 std: Sequence[float], interpolation: str = INTERPOLATION, seed: int = 0, rank: int = 0,
                 world: int = 1, device: torch.device | str = "cpu", threads: int | None = None,
                 scale: Sequence[float] = CROP_SCALE, ratio: Sequence[float] = CROP_RATIO,
                 flip_prob: float = FLIP_PROB, half: bool | None = None, color_jitter: float = 0.0) -> None:
        super().__init__(_FreshSlots(), index, m, batch_size, size, mean, std,  # type: ignore[arg-type]
                         interpolation=interpolation, seed=seed, rank=rank, world=world, device=device,
                         threads=threads, with_labels=False, half=half, prefetch_tables=False,
                         color_jitter=color_jitter)
        self.crops = CropDistribution(tuple(scale), tuple(ratio), flip_prob, seed)  # type: ignore[arg-type]

    def table(self, pass_idx: int) -> PassTable:
        """This rank's images of the pass with m freshly drawn boxes and flips each (empty labels)."""
        plan = self.plan(pass_idx)
        sizes = self.index.sizes[plan.images]
        boxes, flips = sample_crops(sizes, plan.images, plan.slots, self.crops)
        n, m = boxes.shape[:2]
        row_of = np.full(len(self.index), -1, dtype=np.int64)
        row_of[plan.images] = np.arange(n)
        return PassTable(pass_idx=pass_idx, slots=plan.slots, images=plan.images,
                         boxes=encode_boxes(boxes, sizes), rois=roi_corners(boxes), flips=flips.astype(np.int32),
                         index=np.zeros((n, m, 0), np.int16), prob=np.zeros((n, m, 0), np.float16), row_of=row_of)

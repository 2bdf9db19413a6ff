"""Where a pass's crops come from: a store's stored crops (FKD replay) or crops drawn afresh (online KD, ReLabel).

A crop source turns a rank's pass plan into a `PassTable` (boxes, flips and the fields
the run declared); the replay loader cuts whatever table it gets with the same DALI
graph, so the three training modes differ only in their source and their targets.
"""
from __future__ import annotations

from typing import Iterable, Protocol

import numpy as np

from fkd_dali.crops.boxes import CropDistribution, boxes_to_fractions, encode_boxes, sample_crops
from fkd_dali.crops.plan import PassPlan, make_pass_plan
from fkd_dali.errors import ConfigError
from fkd_dali.loaders.pass_table import PassTable, PassTablePrefetcher, plan_table, table_of_boxes
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.schema import TOPK_ONLY, CropField


class CropSource(Protocol):
    """The crops of a pass: `table(plan)` for a rank's plan of pass `plan.pass_idx`."""

    #: crops per image the plan may cycle through; None: unbounded (drawn afresh)
    crops_per_image: int | None
    #: the per-crop fields its tables carry
    fields: frozenset[CropField]

    def table(self, plan: PassPlan) -> PassTable: ...

    def close(self) -> None: ...


class StoreCrops:
    """A store's stored crops and the declared fields, one pass table per pass, the next read ahead.

    Args:
        store: an opened, complete store (the caller checked it, e.g. `open_replay_data`).
        sizes: (N, 2) image sizes of the dataset (to turn stored fractions into pixels).
        fields: the per-crop fields the run needs; refused here if the store lacks one.
        prefetch: read the next pass's table in a background thread while this one trains.
    """

    def __init__(self, store: LabelStore, sizes: np.ndarray, fields: Iterable[CropField] = TOPK_ONLY,
                 prefetch: bool = True) -> None:
        self.store, self.sizes = store, np.asarray(sizes)
        self.fields = frozenset(fields)
        store.check_fields(self.fields)
        self.crops_per_image: int | None = store.crops_per_image
        self._plans: dict[int, PassPlan] = {}
        self._prefetcher = PassTablePrefetcher(self._read_pass) if prefetch else None

    def _read_pass(self, pass_idx: int) -> PassTable:
        plan = self._plans[pass_idx]
        return plan_table(self.store, self.sizes, plan, self.fields)

    def table(self, plan: PassPlan) -> PassTable:
        if self._prefetcher is None:
            return plan_table(self.store, self.sizes, plan, self.fields)
        self._remember(plan)
        return self._prefetcher.get(plan.pass_idx)

    def _remember(self, plan: PassPlan) -> None:
        """Keep the plans of this pass and the next (the prefetcher reads the next ahead)."""
        nxt = make_pass_plan(plan.seed, plan.pass_idx + 1, plan.m, plan.M, len(self.sizes), plan.rank, plan.world)
        self._plans = {plan.pass_idx: plan, plan.pass_idx + 1: nxt}

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()


class FreshCrops:
    """Random-resized crops drawn anew every pass, keyed by (seed, image, slot): no store, no labels.

    Slots run ``p*m .. p*m + m - 1`` in pass p and never wrap (`crops_per_image` None), so
    every pass gets new crops that are still a pure function of (seed, pass, image): a
    resumed run cuts exactly the same pixels. Boxes follow torchvision's
    RandomResizedCrop (`fkd_dali.crops.boxes.sample_crops`). The only field it can carry
    is `CropField.BOX` (the crops' boxes and flips on the device).
    """

    crops_per_image: int | None = None

    def __init__(self, sizes: np.ndarray, crops: CropDistribution,
                 fields: Iterable[CropField] = frozenset()) -> None:
        self.sizes, self.crops = np.asarray(sizes), crops
        self.fields = frozenset(fields)
        if self.fields - {CropField.BOX}:
            raise ConfigError(f"fresh crops carry no stored labels; asked for {sorted(map(str, self.fields))}")

    def table(self, plan: PassPlan) -> PassTable:
        sizes = self.sizes[plan.images]
        boxes, flips = sample_crops(sizes, plan.images, plan.slots, self.crops)
        stored = encode_boxes(boxes, sizes)
        values = ({"box": boxes_to_fractions(stored, sizes), "flip": flips.astype(bool)}
                  if CropField.BOX in self.fields else {})
        return table_of_boxes(plan.pass_idx, plan.slots, plan.images, stored, boxes, flips, len(self.sizes), values)

    def close(self) -> None:
        pass

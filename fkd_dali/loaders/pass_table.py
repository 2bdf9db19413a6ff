"""The pass table: one pass's boxes, flips and the per-crop fields a run declared, for one rank's images.

Read from the store at the start of a pass in one sequential read (`LabelStore.read_slots`,
one run of chunks per field; never a read per image), ideally in a background thread
during the previous pass (`PassTablePrefetcher`). Afterwards every per-batch lookup is
array indexing: rows of the host table feed DALI (boxes, flips), and the declared
fields live on the training device (`DeviceFields`) where a step's rows are looked up
once by image id and every field is gathered with them.

Row order is the order of the images given (the pass plan's order for training), so the
images of step s are the contiguous rows [s * images_per_step, (s + 1) * images_per_step).

Field names (keys of `PassTable.crop_values`, `PassTable.image_values` and of a batch's
`fields`): "index" (K,) int, "prob" (K,) float (`CropField.TOPK`); "dense" (C,) float
(`CropField.DENSE`); "gt_prob" float per crop and "gt_class" int per image
(`CropField.GT_PROB`); "box" (4,) float32 exact fractions (y, x, h, w) of (H, W, H, W) and
"flip" bool per crop (`CropField.BOX`).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from fkd_dali.crops.boxes import boxes_to_fractions, decode_boxes, roi_corners
from fkd_dali.crops.plan import PassPlan
from fkd_dali.errors import LabelStoreError
from fkd_dali.store.checks import check_written
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.schema import TOPK_ONLY, CropField, CropLabels

#: device dtype of each field once gathered: class ids as int64, values as float32
_DEVICE_DTYPES = {"index": torch.int64, "prob": torch.float32, "dense": torch.float32, "gt_prob": torch.float32,
                  "gt_class": torch.int64, "box": torch.float32, "flip": torch.bool}


@dataclass(frozen=True, eq=False)
class PassTable:
    """Stored crops of `slots` for `images` (rows in the order of `images`) and the fields read with them.

    Attributes:
        pass_idx: the pass this table serves (-1 for an ad-hoc slot selection).
        slots: (m,) store slots, in the order crops are cut and emitted.
        images: (n,) int64 dataset image ids, one per row.
        boxes: (n, m, 4) uint16 stored boxes (fractions of H, W; see `fkd_dali.crops.boxes`).
        rois: (n, m, 4) float32 pixel corners (y0, x0, y1, x1), what DALI's resize takes.
        flips: (n, m) int32 horizontal flips.
        row_of: (n_images_total,) int64 row of each dataset image id, -1 where absent.
        crop_values: per-crop fields, (n, m, ...) arrays by field name (module docstring).
        image_values: per-image fields, (n, ...) arrays by field name ("gt_class").
        read_s: seconds the store read and decoding took.
    """

    pass_idx: int
    slots: np.ndarray
    images: np.ndarray
    boxes: np.ndarray
    rois: np.ndarray
    flips: np.ndarray
    row_of: np.ndarray
    crop_values: dict[str, np.ndarray] = field(default_factory=dict)
    image_values: dict[str, np.ndarray] = field(default_factory=dict)
    read_s: float = 0.0

    def __post_init__(self) -> None:
        n, m = len(self.images), len(self.slots)
        for name, arr in (("boxes", self.boxes), ("rois", self.rois), ("flips", self.flips),
                          *self.crop_values.items()):
            if arr.shape[:2] != (n, m):
                raise LabelStoreError(f"pass table {name} has shape {arr.shape}, expected ({n}, {m}, ...)")
        for name, arr in self.image_values.items():
            if arr.shape[:1] != (n,):
                raise LabelStoreError(f"pass table {name} has shape {arr.shape}, expected ({n}, ...)")
        for arr in (self.slots, self.images, self.boxes, self.rois, self.flips, self.row_of,
                    *self.crop_values.values(), *self.image_values.values()):
            arr.setflags(write=False)

    @property
    def m(self) -> int:
        return int(len(self.slots))

    def rows(self, image_ids: np.ndarray) -> np.ndarray:
        """Rows of the given image ids; raises if an image is not in this table."""
        rows = self.row_of[np.asarray(image_ids, dtype=np.int64)]
        if (rows < 0).any():
            missing = np.asarray(image_ids)[rows < 0][:5].tolist()
            raise LabelStoreError(f"images {missing} are not in the pass table of pass {self.pass_idx}")
        return rows

    def to_device(self, device: torch.device) -> DeviceFields:
        return DeviceFields.from_table(self, device)


@dataclass(frozen=True, eq=False)
class DeviceFields:
    """A pass table's fields on the training device; `gather` looks a step's rows up once for all of them."""

    row_of: torch.Tensor  # (n_images_total,) int64
    m: int
    crop_values: dict[str, torch.Tensor]  # (n, m, ...) as stored (float16, int16...)
    image_values: dict[str, torch.Tensor]  # (n, ...)

    @classmethod
    def from_table(cls, table: PassTable, device: torch.device) -> DeviceFields:
        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(a)).to(device)

        return cls(row_of=put(table.row_of), m=table.m,
                   crop_values={k: put(v) for k, v in table.crop_values.items()},
                   image_values={k: put(v) for k, v in table.image_values.items()})

    def gather(self, image_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """(b,) image ids (on the device) -> every field, one row per crop (b*m, ...), in device dtypes.

        Crops of one image are adjacent, in slot order, as the replay pipeline emits them.
        """
        if not self.crop_values and not self.image_values:
            return {}
        rows = self.row_of[image_ids.to(self.row_of.device, torch.int64)]
        out = {k: v[rows].reshape(-1, *v.shape[2:]).to(_DEVICE_DTYPES[k]) for k, v in self.crop_values.items()}
        out.update({k: v[rows].repeat_interleave(self.m, dim=0).to(_DEVICE_DTYPES[k])
                    for k, v in self.image_values.items()})
        return out


def _crop_values(block: CropLabels, images: np.ndarray, fields: frozenset[CropField],
                 sizes: np.ndarray) -> dict[str, np.ndarray]:
    """The declared per-crop fields of `block` (all images, the pass's slots), rows of `images` of `sizes`."""
    out: dict[str, np.ndarray] = {}
    if CropField.TOPK in fields:
        out["index"], out["prob"] = block.index[images], block.prob[images]  # type: ignore[index]
    if CropField.DENSE in fields:
        dense = block.full if block.full is not None else block.logits
        out["dense"] = dense[images]  # type: ignore[index]
    if CropField.GT_PROB in fields:
        out["gt_prob"] = block.gt_prob[images]  # type: ignore[index]
    if CropField.BOX in fields:
        out["box"], out["flip"] = boxes_to_fractions(block.boxes[images], sizes), block.flips[images]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def read_pass_table(store: LabelStore, sizes: np.ndarray, slots: np.ndarray, images: np.ndarray,
                    pass_idx: int = -1, fields: Iterable[CropField] = TOPK_ONLY) -> PassTable:
    """Read `slots` of every image in one sequential read and keep the rows of `images`.

    Args:
        store: an opened, complete store.
        sizes: (N, 2) image (height, width) of the whole dataset, to turn stored
            fractions back into exact pixel boxes.
        slots: the crop slots, e.g. `PassPlan.slots`.
        images: image ids wanted, e.g. `PassPlan.images`; their order is the row order.
        pass_idx: recorded in the table.
        fields: the per-crop fields the run needs (`CropField`); the store must hold them.

    Raises:
        StoreDamageError: a chunk of these slots cannot be read, or holds fill values
            (a chunk file deleted after it was written); never a table of garbage.
        LabelStoreError: a field the store does not hold (the message says how to add it).
    """
    t0 = time.perf_counter()
    slots = np.asarray(slots, dtype=np.int64)
    images = np.asarray(images, dtype=np.int64)
    fields = frozenset(fields)
    if slots.size and (slots.min() < 0 or slots.max() >= store.crops_per_image):
        raise LabelStoreError(f"slots {slots.tolist()} outside [0, {store.crops_per_image}) of store {store.url}")
    block = store.read_slots(slots.tolist(), fields)
    check_written(store, block, 0, slots)  # every image, so all DDP ranks refuse the same pass
    image_values = {"gt_class": store.gt_classes()[images]} if CropField.GT_PROB in fields else {}
    boxes, sizes = np.ascontiguousarray(block.boxes[images]), np.asarray(sizes)[images]
    return table_of_boxes(pass_idx, slots, images, boxes, decode_boxes(boxes, sizes), block.flips[images],
                          store.n_images, _crop_values(block, images, fields, sizes), image_values,
                          time.perf_counter() - t0)


def table_of_boxes(pass_idx: int, slots: np.ndarray, images: np.ndarray, boxes: np.ndarray, pixel: np.ndarray,
                   flips: np.ndarray, n_images: int, crop_values: dict[str, np.ndarray] | None = None,
                   image_values: dict[str, np.ndarray] | None = None, read_s: float = 0.0) -> PassTable:
    """A `PassTable` of crops given as stored (uint16 fraction) and pixel boxes: stored or freshly drawn."""
    row_of = np.full(n_images, -1, dtype=np.int64)
    row_of[images] = np.arange(len(images), dtype=np.int64)
    return PassTable(pass_idx=pass_idx, slots=slots, images=images, boxes=boxes, rois=roi_corners(pixel),
                     flips=np.asarray(flips).astype(np.int32), row_of=row_of, crop_values=crop_values or {},
                     image_values=image_values or {}, read_s=read_s)


class PassTablePrefetcher:
    """Reads pass tables in one background thread: `get(p)` returns pass p and starts p + 1.

    The plan of a pass is a pure function of the pass number (`make_plan`), so the next
    table can be read while the current pass trains. At most two tables are held.
    """

    def __init__(self, read: Callable[[int], PassTable], last_pass: int | None = None) -> None:
        self._read = read
        self.last_pass = last_pass
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fkd-pass-table")
        self._futures: dict[int, Future[PassTable]] = {}
        self._lock = threading.Lock()

    def prefetch(self, pass_idx: int) -> None:
        """Start reading pass `pass_idx` in the background (no-op past `last_pass`)."""
        if self.last_pass is not None and pass_idx > self.last_pass:
            return
        with self._lock:
            if pass_idx not in self._futures:
                self._futures[pass_idx] = self._pool.submit(self._read, pass_idx)

    def get(self, pass_idx: int) -> PassTable:
        """The table of `pass_idx` (waits for a prefetch in flight); prefetches the next pass."""
        with self._lock:
            future = self._futures.pop(pass_idx, None)
            for stale in [p for p in self._futures if p < pass_idx]:
                self._futures.pop(stale).cancel()
        table = future.result() if future is not None else self._read(pass_idx)
        self.prefetch(pass_idx + 1)
        return table

    def close(self) -> None:
        with self._lock:
            for f in self._futures.values():
                f.cancel()
            self._futures.clear()
        self._pool.shutdown(wait=True)


def plan_table(store: LabelStore, sizes: np.ndarray, plan: PassPlan,
               fields: Iterable[CropField] = TOPK_ONLY) -> PassTable:
    """The pass table of a rank's pass plan."""
    return read_pass_table(store, sizes, plan.slots, plan.images, plan.pass_idx, fields)

"""The pass table: one pass's boxes, flips and labels (top-K, optionally dense and gt_prob) for one rank's images.

Read from the store at the start of a pass in one sequential read (`LabelStore.read_slots`,
one run of chunks per field; never a read per image), ideally in a background thread
during the previous pass (`PassTablePrefetcher`). Afterwards every per-batch lookup is
array indexing: rows of the host table feed DALI (boxes, flips), and the labels live on
the training device (`DeviceLabels`) where a crop's top-K is gathered by image id.

Row order is the order of the images given (the pass plan's order for training), so the
images of step s are the contiguous rows [s * images_per_step, (s + 1) * images_per_step).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fkd_dali.crops.boxes import decode_boxes, roi_corners
from fkd_dali.crops.plan import PassPlan
from fkd_dali.errors import LabelStoreError
from fkd_dali.store.checks import check_written
from fkd_dali.store.label_store import LabelStore


@dataclass(frozen=True, eq=False)
class PassTable:
    """Stored fields of `slots` for `images` (rows in the order of `images`).

    Attributes:
        pass_idx: the pass this table serves (-1 for an ad-hoc slot selection).
        slots: (m,) store slots, in the order crops are cut and emitted.
        images: (n,) int64 dataset image ids, one per row.
        boxes: (n, m, 4) uint16 stored boxes (fractions of H, W; see `fkd_dali.crops.boxes`).
        rois: (n, m, 4) float32 pixel corners (y0, x0, y1, x1), what DALI's resize takes.
        flips: (n, m) int32 horizontal flips.
        index: (n, m, K) int16 top-K class ids, most probable first.
        prob: (n, m, K) float16 their probabilities.
        row_of: (n_images_total,) int64 row of each dataset image id, -1 where absent.
        read_s: seconds the store read and decoding took.
        full: (n, m, C) float16 dense values, only when read `with_full` from a "full" store
            (probabilities) or a "logits" store (the teacher's raw outputs).
        gt_prob: (n, m) float16 teacher probability of each crop's ground-truth class, only
            when read `with_gt_prob` from a store that has it.
        gt_class: (n,) int64 ground-truth class of each row's image in the teacher's classes
            (with `gt_prob`).
    """

    pass_idx: int
    slots: np.ndarray
    images: np.ndarray
    boxes: np.ndarray
    rois: np.ndarray
    flips: np.ndarray
    index: np.ndarray
    prob: np.ndarray
    row_of: np.ndarray
    read_s: float = 0.0
    full: np.ndarray | None = None
    gt_prob: np.ndarray | None = None
    gt_class: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, m = len(self.images), len(self.slots)
        for name, arr in (("boxes", self.boxes), ("rois", self.rois), ("flips", self.flips),
                          ("index", self.index), ("prob", self.prob)):
            if arr.shape[:2] != (n, m):
                raise LabelStoreError(f"pass table {name} has shape {arr.shape}, expected ({n}, {m}, ...)")
        if (self.gt_prob is None) != (self.gt_class is None) or (
                self.gt_prob is not None and (self.gt_prob.shape != (n, m) or self.gt_class.shape != (n,))):
            raise LabelStoreError(f"pass table gt_prob/gt_class must both be given, of shapes ({n}, {m}) and ({n},)")
        for arr in (self.slots, self.images, self.boxes, self.rois, self.flips, self.index, self.prob, self.row_of):
            arr.setflags(write=False)

    @property
    def m(self) -> int:
        return int(len(self.slots))

    @property
    def k(self) -> int:
        return int(self.index.shape[2])

    def rows(self, image_ids: np.ndarray) -> np.ndarray:
        """Rows of the given image ids; raises if an image is not in this table."""
        rows = self.row_of[np.asarray(image_ids, dtype=np.int64)]
        if (rows < 0).any():
            missing = np.asarray(image_ids)[rows < 0][:5].tolist()
            raise LabelStoreError(f"images {missing} are not in the pass table of pass {self.pass_idx}")
        return rows

    def to_device(self, device: torch.device) -> "DeviceLabels":
        return DeviceLabels.from_table(self, device)


@dataclass(frozen=True, eq=False)
class DeviceLabels:
    """A pass table's labels on the training device; `gather` is one index op per batch."""

    row_of: torch.Tensor  # (n_images_total,) int64
    index: torch.Tensor  # (n, m, K) int16
    prob: torch.Tensor  # (n, m, K) float16
    m: int
    full: torch.Tensor | None = None  # (n, m, C) float16
    gt_prob: torch.Tensor | None = None  # (n, m) float16
    gt_class: torch.Tensor | None = None  # (n,) int64

    @classmethod
    def from_table(cls, table: PassTable, device: torch.device) -> "DeviceLabels":
        def put(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(np.array(a)).to(device)

        return cls(row_of=put(table.row_of), index=put(table.index), prob=put(table.prob), m=table.m,
                   full=put(table.full), gt_prob=put(table.gt_prob), gt_class=put(table.gt_class))

    def gather(self, image_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b,) image ids (on the device) -> per crop (b*m, K) int64 index and float32 prob.

        Crops of one image are adjacent, in slot order, as the replay pipeline emits them.
        """
        rows = self.row_of[image_ids.to(self.row_of.device, torch.int64)]
        k = self.index.shape[2]
        return (self.index[rows].reshape(-1, k).long(), self.prob[rows].reshape(-1, k).float())

    def gather_full(self, image_ids: torch.Tensor) -> torch.Tensor | None:
        """(b*m, C) float32 dense labels of the images' crops (None without dense labels)."""
        if self.full is None:
            return None
        rows = self.row_of[image_ids.to(self.row_of.device, torch.int64)]
        return self.full[rows].reshape(-1, self.full.shape[2]).float()

    def gather_gt(self, image_ids: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(b*m,) float32 ground-truth probability and (b*m,) int64 ground-truth class of the images' crops.

        (None, None) unless the table was read `with_gt_prob`.
        """
        if self.gt_prob is None or self.gt_class is None:
            return None, None
        rows = self.row_of[image_ids.to(self.row_of.device, torch.int64)]
        return self.gt_prob[rows].reshape(-1).float(), self.gt_class[rows].repeat_interleave(self.m)


def read_pass_table(store: LabelStore, sizes: np.ndarray, slots: np.ndarray, images: np.ndarray,
                    pass_idx: int = -1, with_full: bool = False, with_gt_prob: bool = False) -> PassTable:
    """Read `slots` of every image in one sequential read and keep the rows of `images`.

    Args:
        store: an opened, complete store.
        sizes: (N, 2) image (height, width) of the whole dataset, to turn stored
            fractions back into exact pixel boxes.
        slots: the crop slots, e.g. `PassPlan.slots`.
        images: image ids wanted, e.g. `PassPlan.images`; their order is the row order.
        pass_idx: recorded in the table.
        with_full: also read the dense values (stores of label kind "full" or "logits" only).
        with_gt_prob: also read `labels/gt_prob` and each image's ground-truth class
            (stores made with `--gt-prob` or given it by `labels add-gt-prob` only).

    Raises:
        StoreDamageError: a chunk of these slots cannot be read, or holds fill values
            (a chunk file deleted after it was written); never a table of garbage.
    """
    t0 = time.perf_counter()
    slots = np.asarray(slots, dtype=np.int64)
    images = np.asarray(images, dtype=np.int64)
    if slots.size and (slots.min() < 0 or slots.max() >= store.crops_per_image):
        raise LabelStoreError(f"slots {slots.tolist()} outside [0, {store.crops_per_image}) of store {store.url}")
    if with_full and store.spec.label.kind not in ("full", "logits"):
        raise LabelStoreError(f"store {store.url} holds top-{store.spec.label.k} labels, not full ones")
    if with_gt_prob and not store.has_gt_prob:
        raise LabelStoreError(store.no_gt_prob_message())
    block = store.read_slots(slots.tolist(), with_full=with_full, with_gt_prob=with_gt_prob)
    check_written(store, block, 0, slots)  # every image, so all DDP ranks refuse the same pass
    gt_prob = gt_class = None
    if with_gt_prob:
        gt_prob, gt_class = np.ascontiguousarray(block.gt_prob[images]), store.gt_classes()[images]
    boxes = np.ascontiguousarray(block.boxes[images])
    pixel = decode_boxes(boxes, np.asarray(sizes)[images])
    row_of = np.full(store.n_images, -1, dtype=np.int64)
    row_of[images] = np.arange(len(images), dtype=np.int64)
    return PassTable(pass_idx=pass_idx, slots=slots, images=images, boxes=boxes, rois=roi_corners(pixel),
                     flips=block.flips[images].astype(np.int32), index=np.ascontiguousarray(block.index[images]),
                     prob=np.ascontiguousarray(block.prob[images]), row_of=row_of,
                     read_s=time.perf_counter() - t0,
                     full=np.ascontiguousarray(block.dense[images]) if block.dense is not None else None,
                     gt_prob=gt_prob, gt_class=gt_class)


def plan_table(store: LabelStore, sizes: np.ndarray, plan: PassPlan, with_full: bool = False,
               with_gt_prob: bool = False) -> PassTable:
    """The pass table of a rank's pass plan."""
    return read_pass_table(store, sizes, plan.slots, plan.images, plan.pass_idx, with_full, with_gt_prob)


class PassTablePrefetcher:
    """Reads pass tables in one background thread: `get(p)` returns pass p and starts p + 1.

    The plan of a pass is a pure function of the pass number (`make_plan`), so the next
    table can be read while the current pass trains. At most two tables are held.
    """

    def __init__(self, store: LabelStore, sizes: np.ndarray, make_plan: Callable[[int], PassPlan],
                 last_pass: int | None = None, with_full: bool = False, with_gt_prob: bool = False) -> None:
        self.store = store
        self.with_full = with_full
        self.with_gt_prob = with_gt_prob
        self.sizes = np.asarray(sizes)
        self.make_plan = make_plan
        self.last_pass = last_pass
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fkd-pass-table")
        self._futures: dict[int, Future[PassTable]] = {}
        self._lock = threading.Lock()

    def _read(self, pass_idx: int) -> PassTable:
        return plan_table(self.store, self.sizes, self.make_plan(pass_idx), self.with_full, self.with_gt_prob)

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

"""Feeding DALI from Python and iterating its output as torch tensors.

`BatchSource` is the external source: an epoch is whatever iterable of `FeedBatch`
was handed to it last, so one built pipeline serves every chunk (label generation)
or pass (training). `CropIterator` wraps DALI's torch iterator and turns a decoding
failure into an error that names the file. `ImageSource`/`image_feed`/`EpochRunner`
do the same for whole images (validation and vanilla pipelines). `read_encoded` is
the one place image files are read for a pipeline; `FileReader` calls it for whole
steps in background threads, ahead of the step being fed.

On a GPU this module is the host's share of the replay, so its steady state avoids
per-image Python work where it can: boxes, flips and meta go to DALI as one dense array
per batch, and file bytes land in recycled memory (`bench feed` measures the path).
"""
from __future__ import annotations

import collections
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple, Protocol, Sequence

import numpy as np
import torch
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from fkd_dali.data.index import DatasetIndex, check_complete_file, check_image_data, read_image_header
from fkd_dali.errors import CorruptImageError, PipelineError
from fkd_dali.pipelines.crops import OUTPUT_NAMES


@dataclass
class FeedBatch:
    """One pipeline batch: per image its bytes, crop corners, flips and a meta row.

    `rois`, `flips` and `meta` are either dense arrays with one row per image (the
    replay: one array per batch, which DALI takes as one buffer) or lists of per-image
    arrays (label generation); `encoded` is always a list, files differ in length.
    """

    encoded: list[np.ndarray]  # or DALI TensorCPU views of them (`FileReader(dali_tensors=True)`)
    rois: np.ndarray | list[np.ndarray]  # per image (n_crops, 4) float32 (y0, x0, y1, x1)
    flips: np.ndarray | list[np.ndarray]  # per image (n_crops,) int32
    meta: np.ndarray | list[np.ndarray]  # per image (j,) int64, carried through
    paths: list[str] = field(default_factory=list)
    jitter: np.ndarray | list[np.ndarray] | None = None  # per image (n_crops, 3) float32, for a `JitterBatchSource`

    @property
    def flipped_rois(self) -> np.ndarray | list[np.ndarray]:
        """ROIs with x0/x1 swapped where the crop is flipped: what the crop graph takes."""
        if isinstance(self.rois, np.ndarray):
            return flipped_rois(self.rois, np.asarray(self.flips))  # the whole batch in one operation
        return [flipped_rois(r, f) for r, f in zip(self.rois, self.flips)]


def flipped_rois(rois: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """(..., 4) (y0, x0, y1, x1) -> the same with x0 and x1 swapped where `flips` (...) is set (float32 copy)."""
    out = np.array(rois, dtype=np.float32, copy=True)
    f = np.asarray(flips, dtype=bool)
    out[f, 1], out[f, 3] = rois[f, 3], rois[f, 1]
    return out


class Feed(Protocol):
    """A batch for a `BatchSource`: per-image lists named by its `FIELDS`, and the files they came from."""

    @property
    def paths(self) -> list[str]: ...


class BatchSource:
    """Callable external source over the batches of the current epoch.

    Each call returns the next batch's `FIELDS` (the external source's outputs, in
    order) and remembers its paths, so that a decoding failure can be traced to a file.
    It also keeps the last `keeps` batches it handed out referenced: a pipeline that
    holds fewer batches in flight may read them without copying (`no_copy`), because
    their memory (`read_encoded`'s recycled slabs included) cannot be reused before.
    """

    FIELDS: tuple[str, ...] = ("encoded", "flipped_rois", "meta")  # of a `FeedBatch`

    def __init__(self, remember: int = 8, keeps: int = 4) -> None:
        self._batches: Iterator[Feed] = iter(())
        self.recent: collections.deque[list[str]] = collections.deque(maxlen=remember)
        self.keeps = keeps
        self._handed_out: collections.deque[tuple] = collections.deque(maxlen=max(1, keeps))

    def set_epoch(self, batches: Iterable[Feed]) -> None:
        self._batches = iter(batches)

    def __call__(self) -> tuple[list[np.ndarray], ...]:
        batch = next(self._batches)  # StopIteration ends DALI's epoch
        self.recent.append(batch.paths)
        out = tuple(getattr(batch, name) for name in self.FIELDS)
        self._handed_out.append(out)
        return out


class JitterBatchSource(BatchSource):
    """A `BatchSource` that also gives each image's colour-jitter factors (`FeedBatch.jitter`)."""

    FIELDS = BatchSource.FIELDS + ("jitter",)


class CropIterator:
    """Iterate `(crops, meta)` torch batches, one epoch per `epoch(batches)` call."""

    def __init__(self, pipe, source: BatchSource) -> None:
        self.pipe = pipe
        self.source = source
        self._it: DALIGenericIterator | None = None

    def epoch(self, batches: Iterable[Feed]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.source.set_epoch(batches)
        try:  # building the iterator or resetting it already runs (prefetches) the first batches
            if self._it is None:
                self._it = DALIGenericIterator([self.pipe], list(OUTPUT_NAMES), size=-1,
                                               last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
            else:
                self._it.reset()
        except RuntimeError as e:
            raise self._explain(e) from e
        while True:
            try:
                out = next(self._it)
            except StopIteration:
                return
            except RuntimeError as e:
                raise self._explain(e) from e
            yield out[0]["crops"], out[0]["meta"]

    def _explain(self, err: Exception) -> Exception:
        """Find the file DALI failed on among the batches in flight (strict decode of each)."""
        for paths in self.source.recent:
            for path in paths:
                try:
                    read_image_header(path, full_decode=True)
                except CorruptImageError as bad:
                    return bad
        return PipelineError(f"DALI pipeline failed: {dali_reason(err)}")


def dali_reason(err: Exception) -> str:
    """The informative part of a DALI error, in one line.

    DALI's message starts with "Critical error in pipeline:" and the Python traceback of
    the operator; the reason follows "encountered:" (e.g. "Error in CPU operator
    `nvidia.dali.fn.decoders.image` ... encountered: nvImageCodec failure: '#3'").
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    operator = next((line.rstrip(",") for line in lines if line.startswith("Error in")), "")
    if "encountered:" in lines:
        after = lines[lines.index("encountered:") + 1:]
        reason = next((line for line in after if not line.startswith("Current pipeline object")), "")
        if reason:
            return (f"{operator}: " if operator else "") + reason[:300]
    rest = [line for line in lines if not line.startswith(("Critical error", "Current pipeline object"))]
    if rest:
        return rest[0][:300]
    return type(err).__name__ + " (DALI gave no reason; rerun with --debug for the full error)"


_SLAB_BYTES = 8 << 20
_LARGE_FILE = _SLAB_BYTES // 8  # larger files get arrays of their own
_KEPT_SLABS = 8  # per thread: at most 64 MB of file memory is kept for reuse
_ALIGN = 64


class _Arena(threading.local):
    """Per-thread memory for file bytes: views carved from 8 MB slabs, a slab reused once no view is left.

    Why: a fresh ~110 KB array per file costs more than reading the file (the kernel
    maps and zeroes new pages on first touch: ~50-75 us against ~20 us for the read
    itself). A view keeps its slab alive (numpy's `base`), so a slab is handed out again
    only when no array read into it exists any more (its reference count says so) and
    nobody can observe the reuse. Up to `_KEPT_SLABS` slabs per thread are kept; beyond
    that, slabs are plain arrays that are freed with their last view. Files larger than
    `_LARGE_FILE` (an eighth of a slab) get arrays of their own.
    """

    def __init__(self) -> None:
        self.slabs: list[np.ndarray] = []
        self.current: np.ndarray | None = None
        self.used = 0

    def take(self, nbytes: int) -> np.ndarray:
        """An uninitialised uint8 array of `nbytes` that no live array shares."""
        if nbytes > _LARGE_FILE:
            return np.empty(nbytes, np.uint8)
        if self.current is None or self.used + nbytes > _SLAB_BYTES:
            self.current, self.used = self._unused_slab(), 0
        out = self.current[self.used:self.used + nbytes]
        self.used += -(-nbytes // _ALIGN) * _ALIGN
        return out

    def _unused_slab(self) -> np.ndarray:
        for slab in self.slabs:
            # references: the list, the loop variable, getrefcount's argument (+1 while current)
            if slab is not self.current and sys.getrefcount(slab) <= 3:
                return slab
        slab = np.empty(_SLAB_BYTES, np.uint8)
        if len(self.slabs) < _KEPT_SLABS:
            self.slabs.append(slab)
        return slab


_ARENA = _Arena()


def read_encoded(path: str, check: bool = False) -> np.ndarray:
    """Read an image file and reject truncated JPEG/PNG data before DALI sees it.

    The end-marker check (`check_complete_file`) costs nothing. With
    `check`, the data is also decoded strictly (`check_image_data`, 0.3-0.7x the cost of
    one full decode), which catches corrupt data inside the file: label generation does
    this once per image, the training replay does not. The bytes land in recycled
    memory (`_Arena`); the array is the caller's to keep.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            data = _ARENA.take(os.fstat(fd).st_size)
            got = 0
            while got < len(data):  # a regular file reads in one call; loop for short reads
                n = os.readv(fd, [data[got:]])
                if n == 0:
                    break  # the file shrank since fstat
                got += n
        finally:
            os.close(fd)
    except OSError as e:
        raise CorruptImageError(path, f"cannot read: {e}") from e
    if got < len(data):
        data = data[:got]
    if check:
        check_image_data(data, path)  # includes the end-marker check
    else:
        check_complete_file(data, path)
    return data


class FileReader:
    """Reads the files of whole steps in background threads, the next step while the current one is fed.

    Each thread gets one task per step (a contiguous part of its files), not one per
    file: with the GIL, a future per file costs more than the read. The files of a step
    are read with this module's `read_encoded` (a global looked up per call, so wrapping it
    in a test sees every read).
    """

    def __init__(self, index: DatasetIndex, threads: int = 1, dali_tensors: bool = False) -> None:
        """Args:
            index: the dataset (paths are `index.abspath(i)`).
            threads: reading threads.
            dali_tensors: hand out each file as a DALI `TensorCPU` sharing the array's
                memory (and holding a reference to it), made in the reading thread: DALI's
                external source then skips its per-sample checks and conversions
                (~3 us per image in the thread that feeds DALI).
        """
        self.index = index
        self.threads = max(1, threads)
        self.dali_tensors = dali_tensors
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="fkd-read")

    def _read_part(self, ids: list[int]) -> tuple[list[str], list[np.ndarray]]:
        paths = [self.index.abspath(i) for i in ids]
        data = [read_encoded(p) for p in paths]
        if self.dali_tensors:
            from nvidia.dali.tensors import TensorCPU

            data = [TensorCPU(d, "") for d in data]
        return paths, data

    def submit(self, ids: np.ndarray) -> list[Future[tuple[list[str], list[np.ndarray]]]]:
        """Start reading the files of `ids`, split in one contiguous part per thread."""
        ids_list = np.asarray(ids, dtype=np.int64).tolist()
        step = -(-len(ids_list) // self.threads) or 1
        return [self._pool.submit(self._read_part, ids_list[a:a + step]) for a in range(0, len(ids_list), step)]

    @staticmethod
    def result(parts: list[Future[tuple[list[str], list[np.ndarray]]]]) -> tuple[list[str], list[np.ndarray]]:
        """Paths and bytes of a `submit`, in the order of its ids (raises what a read raised)."""
        paths: list[str] = []
        data: list[np.ndarray] = []
        for part in parts:
            p, d = part.result()
            paths += p
            data += d
        return paths, data

    def steps(self, images: np.ndarray, blocks: Sequence[slice]) -> Iterator[tuple[list[str], list[np.ndarray]]]:
        """(paths, bytes) of each block of `images`, the next block in flight while one is used."""
        pending = self.submit(images[blocks[0]]) if blocks else []
        for n in range(len(blocks)):
            done = pending
            if n + 1 < len(blocks):
                pending = self.submit(images[blocks[n + 1]])
            yield self.result(done)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ImageFeed(NamedTuple):
    """One batch for an `ImageSource`: encoded files and an int64 meta row per image."""

    encoded: list[np.ndarray]
    meta: list[np.ndarray]
    paths: list[str]


class ImageSource(BatchSource):
    """External source (batch mode) over the `ImageFeed`s of the current epoch."""

    FIELDS = ("encoded", "meta")


def image_feed(index: DatasetIndex, ids: Sequence[int], batch_size: int) -> Iterator[ImageFeed]:
    """Batches of (bytes, [image id, class id]) for `ids`, in order; the last may be smaller."""
    ids = np.asarray(ids, dtype=np.int64)
    for a in range(0, len(ids), batch_size):
        chunk = ids[a:a + batch_size]
        paths = [index.abspath(int(i)) for i in chunk]
        yield ImageFeed([read_encoded(p) for p in paths],
                        [np.array([i, index.classes[i]], np.int64) for i in chunk], paths)


class EpochRunner:
    """Runs one DALI epoch per call over a feed; rebuilds the pipeline if an epoch was abandoned.

    DALI iterators cannot be reset mid-epoch (batches already prefetched would leak into
    the next epoch), so a consumer that stops early marks the pipeline for rebuilding.
    `build` makes the pipeline around a fresh external source made by `make_source`.
    """

    def __init__(self, build: Callable[[BatchSource], Pipeline],
                 make_source: Callable[[], BatchSource] = ImageSource) -> None:
        self._build, self._make_source = build, make_source
        self._iter: CropIterator | None = None
        self._dirty = False

    def epoch(self, feed: Iterable[Feed]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._iter is None or self._dirty:
            source = self._make_source()
            self._iter = CropIterator(self._build(source), source)
        self._dirty = True
        yield from self._iter.epoch(feed)
        self._dirty = False

    def close(self) -> None:
        self._iter = None

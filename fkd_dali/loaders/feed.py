"""Feeding DALI from Python and iterating its output as torch tensors.

`BatchSource` is the external source: an epoch is whatever iterable of `FeedBatch`
was handed to it last, so one built pipeline serves every chunk (label generation)
or pass (training). `CropIterator` wraps DALI's torch iterator and turns a decoding
failure into an error that names the file. `ImageSource`/`image_feed`/`EpochRunner`
do the same for whole images (validation and vanilla pipelines). `read_encoded` is
the one place image files are read for a pipeline.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple, Protocol, Sequence

import numpy as np
import torch
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from fkd_dali.data.index import DatasetIndex, read_image_header
from fkd_dali.errors import CorruptImageError, PipelineError
from fkd_dali.pipelines.crops import OUTPUT_NAMES


@dataclass
class FeedBatch:
    """One pipeline batch: per image its bytes, crop corners, flips and a meta row."""

    encoded: list[np.ndarray]
    rois: list[np.ndarray]  # (n_crops, 4) float32 (y0, x0, y1, x1)
    flips: list[np.ndarray]  # (n_crops,) int32
    meta: list[np.ndarray]  # (j,) int64, carried through
    paths: list[str] = field(default_factory=list)
    jitter: list[np.ndarray] | None = None  # (n_crops, 3) float32 colour-jitter factors, for a `JitterBatchSource`

    @property
    def flipped_rois(self) -> list[np.ndarray]:
        """ROIs with x0/x1 swapped where the crop is flipped: what the crop graph takes."""
        return [flipped_rois(r, f) for r, f in zip(self.rois, self.flips)]


def flipped_rois(rois: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """(n, 4) (y0, x0, y1, x1) -> the same with x0 and x1 swapped for flipped rows (float32)."""
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
    """

    FIELDS: tuple[str, ...] = ("encoded", "flipped_rois", "meta")  # of a `FeedBatch`

    def __init__(self, remember: int = 8) -> None:
        self._batches: Iterator[Feed] = iter(())
        self.recent: collections.deque[list[str]] = collections.deque(maxlen=remember)

    def set_epoch(self, batches: Iterable[Feed]) -> None:
        self._batches = iter(batches)

    def __call__(self) -> tuple[list[np.ndarray], ...]:
        batch = next(self._batches)  # StopIteration ends DALI's epoch
        self.recent.append(batch.paths)
        return tuple(getattr(batch, name) for name in self.FIELDS)


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
        """Find the file DALI failed on among the batches in flight."""
        for paths in self.source.recent:
            for path in paths:
                try:
                    read_image_header(path, full_decode=True)
                except CorruptImageError as bad:
                    return bad
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return PipelineError(f"DALI pipeline failed: {first_line}")


_TAIL_WINDOW = 64 * 1024


def read_encoded(path: str) -> np.ndarray:
    """Read an image file and reject truncated JPEG/PNG data before DALI sees it.

    libjpeg-turbo decodes a truncated JPEG into grey pixels without failing, which
    would silently poison labels; the end-of-image marker check costs nothing.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise CorruptImageError(path, f"cannot read: {e}") from e
    head = data[:8].tobytes()
    # Cameras may append data after the end marker, so look beyond the last bytes; but
    # not into the first half, where an EXIF thumbnail carries an end marker of its own.
    tail = data[-max(1024, min(_TAIL_WINDOW, len(data) // 2)):].tobytes()
    if head[:2] == b"\xff\xd8" and b"\xff\xd9" not in tail:
        raise CorruptImageError(path, "truncated JPEG (no end-of-image marker)")
    if head == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail:
        raise CorruptImageError(path, "truncated PNG (no IEND chunk)")
    if len(data) == 0:
        raise CorruptImageError(path, "empty file")
    return data


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
    """

    def __init__(self, build: Callable[[ImageSource], Pipeline]) -> None:
        self._build = build
        self._iter = None
        self._dirty = False

    def epoch(self, feed: Iterable[ImageFeed]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._iter is None or self._dirty:
            source = ImageSource()
            self._iter = CropIterator(self._build(source), source)
        self._dirty = True
        yield from self._iter.epoch(feed)
        self._dirty = False

"""The stored-crop pipeline: `decode_and_crop` fed by an external source.

Label generation (teacher resolution and normalization) and training replay
(student resolution and normalization) both build this one graph, so the teacher
and the student see the same pixels for a stored box.
"""
from __future__ import annotations

from typing import Sequence

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import Pipeline

from fkd_dali.defaults import HW_DECODER_LOAD, PREFETCH_DEPTH
from fkd_dali.pipelines.fragments import decode_and_crop

OUTPUT_NAMES = ("crops", "meta")


def crop_inputs(source, no_copy: bool = False, jitter: bool = False) -> tuple[DataNode, ...]:
    """The graph's inputs, `(encoded, rois, meta)` per image (and `factors` with `jitter`), from a batch-mode
    external source.

    The one place the feed enters DALI; benchmarks that replace the decode build on it
    too. With `no_copy` DALI reads the source's arrays in place instead of copying them
    (for 110 KB files the copy costs more than reading the file); DALI requires them
    unchanged until `prefetch_queue_depth` iterations after feeding (`zero_copy_ok`).
    With `jitter` a 4th output gives each image's (n_crops, 3) colour-jitter factors.
    """
    dtypes = [types.UINT8, types.FLOAT, types.INT64] + ([types.FLOAT] if jitter else [])
    return tuple(fn.external_source(source=source, num_outputs=len(dtypes), batch=True, dtype=dtypes,
                                    no_copy=no_copy))


def zero_copy_ok(source, prefetch: int) -> bool:
    """Whether `source` keeps what it hands out referenced long enough for `no_copy` feeding.

    A `BatchSource` keeps its last `keeps` batches; DALI may still read a batch until
    `prefetch` iterations after it was fed, so one more than that, plus one of margin.
    """
    return getattr(source, "keeps", 0) >= prefetch + 2


@pipeline_def
def _crop_graph(source, n_crops: int, size: int, interpolation: str, mean: Sequence[float],
                std: Sequence[float], gpu: bool, half: bool, hw_decoder_load: float, no_copy: bool,
                jitter: bool = False):
    encoded, rois, meta, *factors = crop_inputs(source, no_copy, jitter)
    crops = decode_and_crop(encoded, rois, n_crops, size, interpolation, mean, std, gpu, half, hw_decoder_load,
                            jitter=factors[0] if jitter else None)
    return crops, meta


def make_crop_pipeline(source, n_crops: int, size: int, interpolation: str, mean: Sequence[float],
                       std: Sequence[float], batch_size: int, num_threads: int, device_id: int | None,
                       half: bool | None = None, prefetch: int = PREFETCH_DEPTH, hw_decoder_load: float = HW_DECODER_LOAD,
                       seed: int = 0, jitter: bool = False) -> Pipeline:
    """Build (not yet started) the stored-crop pipeline.

    Args:
        source: callable returning a batch `(encoded, rois, meta)`, one entry (or array
            row) per image (at most `batch_size`), or raising StopIteration at the
            end of an epoch (a `fkd_dali.loaders.feed.BatchSource`); flipped crops have
            their ROI's x0 and x1 swapped. `meta` is an int64 row carried through unchanged
            (image id, round, ...) so outputs can be matched to inputs. Its arrays are read
            in place when the source keeps them long enough (`zero_copy_ok`), else copied.
        device_id: CUDA device, or None for the CPU-only pipeline.
        half: float16 output; defaults to True on GPU, False on CPU.
        jitter: the source also gives each image's (n_crops, 3) float32 colour-jitter
            factors (a 4th output), applied after the crop (`fragments.color_jitter`).
    """
    gpu = device_id is not None
    if half is None:
        half = gpu
    return _crop_graph(source, n_crops, size, interpolation, tuple(mean), tuple(std), gpu, half,
                       hw_decoder_load, zero_copy_ok(source, prefetch), jitter, batch_size=batch_size,
                       num_threads=num_threads, device_id=device_id, prefetch_queue_depth=prefetch, seed=seed,
                       exec_dynamic=True)

"""Vanilla pipeline: DALI's own random-resized-crop + flip with hard folder labels (no distillation).

The no-KD baseline and the "vanilla DALI" benchmark row. Image order comes from the same
crop plan as replay (one crop per image per epoch, so a pass is one epoch), fed through
an external source; crops and flips come from DALI's RNG (seeded per rank), so unlike
replay a resumed vanilla run sees the same images at the same steps but other crops.
"""
from __future__ import annotations

from typing import Sequence

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

from fkd_dali.defaults import CROP_RATIO, CROP_SCALE, FLIP_PROB, PREFETCH_DEPTH, VANILLA_INTERPOLATION
from fkd_dali.pipelines.fragments import interp_type, normalize


@pipeline_def
def _vanilla_graph(source, size: int, scale: Sequence[float], ratio: Sequence[float], interpolation: str,
                   mean: Sequence[float], std: Sequence[float], flip_prob: float, gpu: bool, half: bool):
    encoded, meta = fn.external_source(source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT64])
    image = fn.decoders.image_random_crop(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                          random_area=list(scale), random_aspect_ratio=list(ratio),
                                          num_attempts=10, adjust_orientation=False)
    image = fn.resize(image, size=(size, size), interp_type=interp_type(interpolation), antialias=True)
    image = normalize(image, fn.random.coin_flip(probability=flip_prob), mean, std, half)
    return image, meta


def make_vanilla_pipeline(source, size: int, mean: Sequence[float], std: Sequence[float], batch_size: int,
                          num_threads: int, device_id: int | None, interpolation: str = VANILLA_INTERPOLATION,
                          scale: Sequence[float] = CROP_SCALE, ratio: Sequence[float] = CROP_RATIO,
                          flip_prob: float = FLIP_PROB, half: bool | None = None, seed: int = 0) -> Pipeline:
    """Build the vanilla pipeline (outputs: images (B, 3, size, size), meta (B, 2) = image id, class)."""
    gpu = device_id is not None
    return _vanilla_graph(source, size, tuple(scale), tuple(ratio), interpolation, tuple(mean), tuple(std),
                          flip_prob, gpu, gpu if half is None else half, batch_size=batch_size,
                          num_threads=num_threads, device_id=device_id, prefetch_queue_depth=PREFETCH_DEPTH, seed=seed,
                          exec_dynamic=True)

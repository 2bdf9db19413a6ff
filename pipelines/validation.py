"""Validation pipeline: decode, resize the shorter side to size / crop_pct, centre crop, normalize.

timm's eval transform (`Resize(floor(size / crop_pct))` + `CenterCrop(size)`), in DALI.
Images come from an external source (`fkd_dali.loaders.feed.ImageSource`); the meta row
(image id, class id) rides along.
"""
from __future__ import annotations

import math
from typing import Sequence

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

from fkd_dali.defaults import PREFETCH_DEPTH
from fkd_dali.pipelines.fragments import decode, interp_type


@pipeline_def
def _validation_graph(source, size: int, resize_size: int, interpolation: str, mean: Sequence[float],
                      std: Sequence[float], gpu: bool, half: bool):
    encoded, meta = fn.external_source(source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT64])
    image = decode(encoded, gpu)
    image = fn.resize(image, resize_shorter=resize_size, interp_type=interp_type(interpolation), antialias=True)
    image = fn.crop_mirror_normalize(image, crop=(size, size), crop_pos_x=0.5, crop_pos_y=0.5,
                                     mean=[255.0 * v for v in mean], std=[255.0 * v for v in std],
                                     dtype=types.FLOAT16 if half else types.FLOAT, output_layout="CHW")
    return image, meta


def resize_size(size: int, crop_pct: float) -> int:
    """The shorter side before the centre crop, as timm computes it: floor(size / crop_pct)."""
    return int(math.floor(size / crop_pct))


def make_validation_pipeline(source, size: int, crop_pct: float, interpolation: str, mean: Sequence[float],
                             std: Sequence[float], batch_size: int, num_threads: int, device_id: int | None,
                             half: bool | None = None) -> Pipeline:
    """Build the validation pipeline (outputs: images (B, 3, size, size), meta (B, 2))."""
    gpu = device_id is not None
    return _validation_graph(source, size, resize_size(size, crop_pct), interpolation, tuple(mean), tuple(std),
                             gpu, gpu if half is None else half, batch_size=batch_size, num_threads=num_threads,
                             device_id=device_id, prefetch_queue_depth=PREFETCH_DEPTH, exec_dynamic=True)

"""Graph fragments shared by the pipelines: decode once, then cut n crops from stored boxes.

Boxes arrive as float32 pixel corners (y0, x0, y1, x1) per crop, with x0 and x1
swapped for a flipped crop, through `fn.external_source`; they never come from
DALI's RNG. EXIF orientation is
ignored (`adjust_orientation=False`) because boxes were drawn on the stored pixels.
"""
from __future__ import annotations

from typing import Sequence

from nvidia.dali import fn, types
from nvidia.dali.data_node import DataNode

from fkd_dali.defaults import HW_DECODER_LOAD
from fkd_dali.errors import ConfigError

INTERPOLATIONS = {
    "nearest": types.INTERP_NN,
    "bilinear": types.INTERP_LINEAR,
    "linear": types.INTERP_LINEAR,
    "bicubic": types.INTERP_CUBIC,
    "cubic": types.INTERP_CUBIC,
    "lanczos": types.INTERP_LANCZOS3,
}


def interp_type(name: str) -> types.DALIInterpType:
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown interpolation {name!r}; valid: {', '.join(sorted(INTERPOLATIONS))}") from None


def decode(encoded: DataNode, gpu: bool, hw_decoder_load: float = HW_DECODER_LOAD) -> DataNode:
    """Decode to RGB uint8 HWC: nvJPEG (`mixed`) on a GPU, libjpeg-turbo on the CPU."""
    if gpu:
        return fn.decoders.image(encoded, device="mixed", output_type=types.RGB, adjust_orientation=False,
                                 hw_decoder_load=hw_decoder_load)
    return fn.decoders.image(encoded, device="cpu", output_type=types.RGB, adjust_orientation=False)


def normalize(image: DataNode, mirror: DataNode | int, mean: Sequence[float], std: Sequence[float],
              half: bool, layout: str = "CHW") -> DataNode:
    """Flip, (x/255 - mean) / std, HWC -> CHW; float16 on GPU halves the copy to torch."""
    return fn.crop_mirror_normalize(
        image, mirror=mirror, mean=[255.0 * v for v in mean], std=[255.0 * v for v in std],
        dtype=types.FLOAT16 if half else types.FLOAT, output_layout=layout)


def color_jitter(crops: DataNode, factors: DataNode) -> DataNode:
    """Per-crop brightness, contrast and saturation of stacked uint8 crops (F, H, W, C), in one op.

    `factors` is an (F, 3) float32 feed per image (`fkd_dali.crops.jitter`), given to
    `fn.color_twist` per frame. DALI's formula (checked in tests/unit/test_jitter.py):
    ``b * (128 + c * (sat(x) - 128))``, clamped, with sat(x) = grey + s * (x - grey) on the
    luma grey; unlike torchvision's ColorJitter the contrast pivots on mid-grey (128), not
    on the crop's mean grey, and the order is fixed (saturation, contrast, brightness).
    """
    return fn.color_twist(crops, brightness=fn.per_frame(factors[:, 0]), contrast=fn.per_frame(factors[:, 1]),
                          saturation=fn.per_frame(factors[:, 2]))


def decode_and_crop(encoded: DataNode, rois: DataNode, n_crops: int, size: int, interpolation: str,
                    mean: Sequence[float], std: Sequence[float], gpu: bool, half: bool = False,
                    hw_decoder_load: float = HW_DECODER_LOAD, jitter: DataNode | None = None) -> DataNode:
    """Decode each image once and cut its `n_crops` stored crops.

    Args:
        encoded: encoded image bytes (uint8, one sample per image).
        rois: (n_crops, 4) float32 (y0, x0, y1, x1) pixel corners per image; x0 > x1
            means a horizontally flipped crop (`flipped_rois`): DALI's resize reads a
            reversed ROI mirrored, so no separate flip op touches the pixels.
        size: output side (square crops, like RandomResizedCrop).
        jitter: optional (n_crops, 3) colour-jitter factors per image (`color_jitter`),
            applied to the stacked crops after the resize, before normalization.

    Returns:
        One sample per image of shape (n_crops, 3, size, size): crops of one image
        stay adjacent when the batch is flattened. The crops are stacked while still
        uint8 and normalized once, which writes the float output a single time.
    """
    image = decode(encoded, gpu, hw_decoder_load)
    interp = interp_type(interpolation)
    crops = []
    for k in range(n_crops):
        roi = rois[k]
        crops.append(fn.resize(image, roi_start=roi[0:2], roi_end=roi[2:4], size=(size, size),
                               interp_type=interp, antialias=True))
    stacked = fn.stack(*crops, axis_name="F")
    if jitter is not None:
        stacked = color_jitter(stacked, jitter)
    return normalize(stacked, 0, mean, std, half, layout="FCHW")

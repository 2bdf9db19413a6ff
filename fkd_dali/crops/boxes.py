"""Crop boxes and flips for the soft-label store, drawn without any stateful RNG.

Every random number is a pure function of (seed, image id, slot, draw number),
computed by a counter-based hash (splitmix64 rounds), so a box never depends on
batch composition, process count, resume point, or DALI's RNG. The sampling follows
torchvision's `RandomResizedCrop.get_params`: up to 10 tries of (area scale,
log-uniform aspect ratio), the first that fits wins, else a centre crop clamped to
the ratio range.

Boxes are integer pixels (y, x, h, w) in the image as stored on disk (no EXIF
rotation). The store keeps them as uint16 fractions of the image height/width
(FKD's (i/H, j/W, h/H, w/W) convention, times 65535), from which `decode_boxes`
recovers the exact pixels for any side up to 65,535.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fkd_dali.defaults import CROP_RATIO, CROP_SCALE, FLIP_PROB
from fkd_dali.errors import ConfigError

ATTEMPTS = 10
_DRAWS_PER_ATTEMPT = 4  # area scale, log ratio, y offset, x offset
_FLIP_DRAW = ATTEMPTS * _DRAWS_PER_ATTEMPT
_DRAWS_PER_CROP = 64  # spacing of draw counters; leaves room for future draws
BOX_SCALE = 65535  # uint16 full scale of a stored box coordinate

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class CropDistribution:
    """The random-resized-crop distribution that label generation samples from."""

    scale: tuple[float, float] = CROP_SCALE
    ratio: tuple[float, float] = CROP_RATIO
    flip_prob: float = FLIP_PROB
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not (0 < lo <= hi <= 1):
            raise ConfigError(f"crop scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ConfigError(f"crop ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not (0 <= self.flip_prob <= 1):
            raise ConfigError(f"flip probability must be in [0, 1], got {self.flip_prob}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """One splitmix64 output step, applied elementwise to uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def counter_uniform(seed: int, image_ids: np.ndarray, slots: np.ndarray, draw: int) -> np.ndarray:
    """Uniform [0, 1) doubles, one per (image, slot), for draw number `draw`.

    Shape (len(image_ids), len(slots)). The key mixes seed and image id; the counter
    is slot * 64 + draw, so any (image, slot) can be regenerated alone.
    """
    img = np.asarray(image_ids, dtype=np.uint64)[:, None]
    slot = np.asarray(slots, dtype=np.uint64)[None, :]
    key = _splitmix64(_splitmix64(np.full(1, seed, dtype=np.uint64)) ^ img)
    with np.errstate(over="ignore"):
        counter = slot * np.uint64(_DRAWS_PER_CROP) + np.uint64(draw)
    bits = _splitmix64(key ^ _splitmix64(counter))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def sample_crops(sizes: np.ndarray, image_ids: np.ndarray, slots: np.ndarray,
                 dist: CropDistribution) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and flips for every (image, slot) pair.

    Args:
        sizes: (n, 2) original (height, width) of the images.
        image_ids: (n,) dataset indices of those images (part of the RNG key).
        slots: (s,) crop slot numbers (part of the RNG counter).
        dist: the crop distribution, including the seed.

    Returns:
        boxes (n, s, 4) int32 pixel (y, x, h, w), and flips (n, s) bool.
    """
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    height = sizes[:, 0:1].astype(np.float64)
    width = sizes[:, 1:2].astype(np.float64)
    area = height * width
    log_lo, log_hi = math.log(dist.ratio[0]), math.log(dist.ratio[1])
    shape = (len(sizes), len(slots))
    out = np.zeros(shape + (4,), dtype=np.int64)
    found = np.zeros(shape, dtype=bool)
    for attempt in range(ATTEMPTS):
        base = attempt * _DRAWS_PER_ATTEMPT
        u = [counter_uniform(dist.seed, image_ids, slots, base + d) for d in range(_DRAWS_PER_ATTEMPT)]
        target = area * (dist.scale[0] + u[0] * (dist.scale[1] - dist.scale[0]))
        aspect = np.exp(log_lo + u[1] * (log_hi - log_lo))
        w = np.rint(np.sqrt(target * aspect))
        h = np.rint(np.sqrt(target / aspect))
        ok = (~found) & (w > 0) & (w <= width) & (h > 0) & (h <= height)
        y = np.floor(u[2] * (height - h + 1))
        x = np.floor(u[3] * (width - w + 1))
        out[ok] = np.stack([y, x, h, w], axis=-1)[ok]
        found |= ok
    if not found.all():
        fallback = np.broadcast_to(_centre_boxes(sizes, dist.ratio)[:, None, :], out.shape)
        out[~found] = fallback[~found]
    flips = counter_uniform(dist.seed, image_ids, slots, _FLIP_DRAW) < dist.flip_prob
    return out.astype(np.int32), flips


def _centre_boxes(sizes: np.ndarray, ratio: tuple[float, float]) -> np.ndarray:
    """torchvision's fallback: the whole image, clamped to the aspect-ratio range, centred."""
    height = sizes[:, 0].astype(np.float64)
    width = sizes[:, 1].astype(np.float64)
    in_ratio = width / height
    w = width.copy()
    h = height.copy()
    narrow = in_ratio < ratio[0]
    wide = in_ratio > ratio[1]
    h[narrow] = np.rint(w[narrow] / ratio[0])
    w[wide] = np.rint(h[wide] * ratio[1])
    y = np.floor((height - h) / 2)
    x = np.floor((width - w) / 2)
    return np.stack([y, x, h, w], axis=-1).astype(np.int64)


def encode_boxes(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Pixel (y, x, h, w) -> uint16 fractions of (H, W, H, W), as the store keeps them.

    Any q with round(q / 65535 * D) == v decodes to pixel v, and for a side D those q
    span an interval about 65535 / D wide. We pick the one that is a multiple of the
    largest power of two below that width: the decoded pixels are unchanged, but the
    low bits of every stored value are zero, which bit-shuffle + zstd store almost for
    free (8.0 -> ~4.5 bytes per box on ImageNet-sized images).
    """
    dims = _dims(sizes, boxes.ndim)
    exact = boxes.astype(np.float64) / dims * BOX_SCALE
    step = np.exp2(np.floor(np.log2(np.maximum(BOX_SCALE / dims, 1.0)) - 1e-9))
    step = np.where(BOX_SCALE / dims > step, step, step / 2)  # strictly below the interval width
    step = np.maximum(step, 1.0)
    q = np.clip(np.rint(exact / step) * step, 0, BOX_SCALE)
    return q.astype(np.uint16)


def decode_boxes(encoded: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """uint16 fractions -> the exact integer pixel boxes they were made from."""
    dims = _dims(sizes, encoded.ndim)
    return np.rint(encoded.astype(np.float64) / BOX_SCALE * dims).astype(np.int32)


def boxes_to_fractions(encoded: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """uint16 store boxes -> float32 exact pixel fractions (FKD's (i/H, j/W, h/H, w/W))."""
    dims = _dims(sizes, encoded.ndim)
    return (decode_boxes(encoded, sizes) / dims).astype(np.float32)


def fractions_to_boxes(fractions: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Float fractions (FKD files) -> uint16 store encoding, via the nearest pixel box."""
    dims = _dims(sizes, np.ndim(fractions))
    pixels = np.rint(np.clip(np.asarray(fractions, np.float64), 0, 1) * dims).astype(np.int64)
    return encode_boxes(pixels, sizes)


def _dims(sizes: np.ndarray, ndim: int) -> np.ndarray:
    """(n, 2) sizes -> (H, W, H, W) broadcastable against boxes of `ndim` dims."""
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    dims = sizes[:, [0, 1, 0, 1]]
    return dims.reshape((len(sizes),) + (1,) * (ndim - 2) + (4,))


def roi_corners(boxes: np.ndarray) -> np.ndarray:
    """Pixel (y, x, h, w) -> float32 (y0, x0, y1, x1), the ROI form DALI's resize takes."""
    b = boxes.astype(np.float32)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)


def stream_seed(seed: int, *words: int) -> int:
    """A key for another counter-based stream: splitmix64 rounds over (seed, words...).

    `counter_uniform(stream_seed(seed, STREAM, pass_idx), ids, slots, draw)` gives
    random numbers independent of the crop boxes (which use the plain `seed`) and of
    every other stream or pass, yet still a pure function of its inputs, so a resumed
    run redraws them exactly. Callers name their stream with a constant word (e.g.
    `fkd_dali.train.mix.MIX_STREAM`) and mix the pass in, because a stored slot is
    replayed again in later cycles of the plan and must then get fresh draws.
    """
    x = _splitmix64(np.full(1, seed, dtype=np.uint64))
    for w in words:
        x = _splitmix64(x ^ np.uint64(int(w) % 2**64))  # an ad-hoc table's pass -1 wraps to 2**64 - 1
    return int(x[0])

"""Colour-jitter factors of each crop, drawn from the counter-based generator (never from DALI's RNG).

`--color-jitter S` gives every crop a brightness, a contrast and a saturation factor,
each uniform on [max(0, 1 - S), 1 + S] (torchvision's `ColorJitter(S, S, S)` ranges;
FKD and ReLabel train with S = 0.4). The draws are `counter_uniform` numbers 0, 1, 2 of
(image, slot) under the key ``stream_seed(seed, JITTER_STREAM, pass)``: a pure function
of (seed, pass, image, slot), so a resumed run jitters exactly as an uninterrupted one,
and a stored slot replayed in a later cycle of the plan (another pass) gets new factors.
The factors are applied after the crop, in the DALI graph
(`fkd_dali.pipelines.fragments.color_jitter`); the stored label stays the teacher's label
of the un-jittered crop, as in the paper.
"""
from __future__ import annotations

import numpy as np

from fkd_dali.crops.boxes import counter_uniform, stream_seed

JITTER_STREAM = 0x6A6974  # "jit": names the generator stream of colour jitter
JITTER_PARAMS = ("brightness", "contrast", "saturation")  # the order of the factors


def jitter_factors(strength: float, seed: int, pass_idx: int, image_ids: np.ndarray,
                   slots: np.ndarray) -> np.ndarray:
    """(n, m, 3) float32 (brightness, contrast, saturation) factors of every (image, slot) of a pass.

    Example: strength 0.4 draws each factor from [0.6, 1.4]; strength 1.5 from [0, 2.5].
    """
    key = stream_seed(seed, JITTER_STREAM, pass_idx)
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    u = np.stack([counter_uniform(key, image_ids, slots, d) for d in range(len(JITTER_PARAMS))], axis=-1)
    return (low + (high - low) * u).astype(np.float32)

"""Batch-level CutMix and Mixup of crops and their soft targets, on the training device.

A mix combines each crop with a partner crop of the same batch, chosen by a pairing
rule (`reversed_pairs`, timm's "batch" mode, by default), with one weight `lam` for the
whole batch: Mixup blends the pixels, ``lam * a + (1 - lam) * b``; CutMix pastes a box
of the partner into the crop, and `lam` becomes the fraction of the crop's own pixels
left (timm's corrected lambda). The target is always the same `lam`-weighted mix of the
two crops' dense targets, so it is applied after label recovery (FKD's CutMix on soft
labels; timm's Mixup does the same with one-hot targets).

Randomness: each step's decision (mix or not, CutMix or Mixup, lam, box centre) is
drawn from the counter-based generator of `fkd_dali.crops.boxes`, keyed by
``stream_seed(seed, MIX_STREAM, pass)`` with the rank as "image" and the step as
"slot". It is a pure function of (seed, pass, rank, step): a resumed run mixes exactly
as an uninterrupted one, and ranks draw independently. Semantics follow timm's `Mixup`
(`--cutmix`, `--mixup`, `--mix-prob`, `--mix-switch-prob`): with both alphas > 0, CutMix
is chosen with probability `switch_prob`; lam ~ Beta(alpha, alpha).

SelfMix (FerKD, `--selfmix ALPHA`, `--selfmix-prob P`) is CutMix with another pairing,
`same_image_pairs`: each crop takes the box from the next crop of the same image
(cyclically among the image's m adjacent crops), so the pasted region and the soft
label it brings come from the same image; the target is the same area-weighted mix of
the two crops' targets. It is built as a `BatchMixer` with ``MixSpec(cutmix_alpha=ALPHA,
prob=P)`` and that pairing, so its draws are keyed exactly like CutMix's; it cannot be
combined with `--cutmix`/`--mixup` (both would choose the partner; `TrainConfig` refuses it).

Per-sample loss weights (FerKD calibration's drop/weight modes) are mixed with the
targets by `mix_weighted_targets`, so that the loss of a mixed crop is exactly the
lam-weighted sum of the two crops' weighted losses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from fkd_dali.crops.boxes import counter_uniform, stream_seed
from fkd_dali.errors import ConfigError

MIX_STREAM = 0x6D6978  # "mix": names the generator stream of batch mixing
_DRAWS = 5  # apply?, cutmix-or-mixup, lam quantile, box centre y, box centre x


@dataclass(frozen=True)
class MixSpec:
    """What to mix (timm's flags); alphas of 0 disable that kind."""

    cutmix_alpha: float = 0.0
    mixup_alpha: float = 0.0
    prob: float = 1.0  # probability that a step's batch is mixed at all
    switch_prob: float = 0.5  # with both kinds enabled: probability of CutMix

    @property
    def enabled(self) -> bool:
        return self.cutmix_alpha > 0 or self.mixup_alpha > 0


@dataclass(frozen=True)
class MixDecision:
    """One step's mix: `lam` is the weight of each crop's own pixels and target (1.0 = unmixed).

    `box` (cutmix only) is (y0, y1, x0, x1) in pixels: the region taken from the partner.
    """

    kind: str  # "none", "mixup" or "cutmix"
    lam: float = 1.0
    box: tuple[int, int, int, int] | None = None


def beta_quantile(alpha: float, u: float) -> float:
    """The `u`-quantile of Beta(alpha, alpha): a Beta draw from one uniform (inverse CDF)."""
    from scipy.special import betaincinv

    return float(betaincinv(alpha, alpha, u))


def cutmix_box(lam: float, uy: float, ux: float, height: int, width: int) -> tuple[int, int, int, int]:
    """A box of about (1 - lam) of the area, centred on a uniform pixel, clipped to the image.

    As timm's `rand_bbox`: sides ``int(H * sqrt(1 - lam))`` and ``int(W * sqrt(1 - lam))``,
    centre ``(int(uy * H), int(ux * W))``; clipping makes the box smaller near an edge,
    which is why `decide` recomputes lam from the box's real area.
    """
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(uy * height), int(ux * width)
    y0, y1 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    x0, x1 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    return y0, y1, x0, x1


def decide(spec: MixSpec, u: Sequence[float], height: int, width: int) -> MixDecision:
    """A step's decision from its `_DRAWS` uniforms `u` (see the module docstring for their roles)."""
    if not spec.enabled or u[0] >= spec.prob:
        return MixDecision("none")
    if spec.cutmix_alpha > 0 and spec.mixup_alpha > 0:
        cut = u[1] < spec.switch_prob
    else:
        cut = spec.cutmix_alpha > 0
    lam = beta_quantile(spec.cutmix_alpha if cut else spec.mixup_alpha, u[2])
    if not cut:
        return MixDecision("mixup", lam)
    box = cutmix_box(lam, u[3], u[4], height, width)
    y0, y1, x0, x1 = box
    return MixDecision("cutmix", 1.0 - (y1 - y0) * (x1 - x0) / (height * width), box)


def reversed_pairs(batch: int) -> torch.Tensor:
    """Crop i is mixed with crop B-1-i (timm's batch mode). With several crops per image
    adjacent in the batch, partners come from other images whenever the batch holds two or more."""
    return torch.arange(batch - 1, -1, -1)


def same_image_pairs(batch: int, m: int) -> torch.Tensor:
    """SelfMix's pairing: crop r of image i (row i*m + r) is mixed with crop (r + 1) mod m of the same image.

    The loaders keep an image's m crops adjacent (rows [i*m, (i+1)*m)), so for m = 3
    and a batch of 6 the partners are [1, 2, 0, 4, 5, 3]; for m = 2, the two crops of
    an image swap boxes with each other.

    Raises:
        ConfigError: m < 2 (a crop has no other crop of its image to mix with) or a
            batch that is not whole images.
    """
    if m < 2:
        raise ConfigError(f"--selfmix mixes two crops of the same image, but each image has {m} crop per step: "
                          "use --num-crops 2 or more")
    if batch % m:
        raise ConfigError(f"a batch of {batch} crops is not whole images of {m} crops each")
    rows = torch.arange(batch)
    return rows - rows % m + (rows + 1) % m


def mix_weighted_targets(targets: torch.Tensor, weight: torch.Tensor, partner: torch.Tensor,
                         lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix (B, C) targets that carry (B,) loss weights: returns (targets', weight').

    The soft cross-entropy is linear in its target, so ``weight' * CE(targets')`` equals
    ``lam * w_i * CE(t_i) + (1 - lam) * w_j * CE(t_j)`` with
    ``weight' = lam * w_i + (1 - lam) * w_j`` and ``targets' = (lam * w_i * t_i +
    (1 - lam) * w_j * t_j) / weight'``: a dropped crop (w = 0) gives its pixels but no
    label to its partner. Rows with weight' = 0 keep the plain lam-mix (they count for
    nothing). With all weights 1 this is the plain mix.
    """
    partner = partner.to(targets.device)
    own, other = weight * lam, weight.index_select(0, partner) * (1.0 - lam)
    mixed_weight = own + other
    weighted = targets * own.unsqueeze(1) + targets.index_select(0, partner) * other.unsqueeze(1)
    plain = targets * lam + targets.index_select(0, partner) * (1.0 - lam)
    normalized = weighted / mixed_weight.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)
    return torch.where((mixed_weight > 0).unsqueeze(1), normalized, plain), mixed_weight


def mix_batch(images: torch.Tensor, targets: torch.Tensor, partner: torch.Tensor,
              decision: MixDecision) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix (B, C, H, W) crops and their (B, classes) targets with `partner` (B,) as `decision` says.

    Returns new tensors (the inputs are not modified); unmixed inputs come back as they are.
    """
    if decision.kind == "none":
        return images, targets
    lam = decision.lam
    target = targets * lam + targets.index_select(0, partner.to(targets.device)) * (1.0 - lam)
    return mix_pixels(images, partner, decision), target


def mix_pixels(images: torch.Tensor, partner: torch.Tensor, decision: MixDecision) -> torch.Tensor:
    """The pixels of `mix_batch`: (B, C, H, W) crops blended (Mixup) or with the partner's box pasted in (CutMix)."""
    if decision.kind == "none":
        return images
    partner = partner.to(images.device)
    other = images.index_select(0, partner)
    if decision.kind == "mixup":
        return images * decision.lam + other * (1.0 - decision.lam)
    y0, y1, x0, x1 = decision.box  # type: ignore[misc]
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
    return mixed


class BatchMixer:
    """Mixes each training batch as `spec` says, with draws keyed by (seed, pass, rank, step).

    Args:
        spec: the mix options.
        seed: the run's seed.
        rank: this process's rank (ranks draw independently).
        partner: the pairing rule, batch size -> (B,) partner index of each crop.
    """

    def __init__(self, spec: MixSpec, seed: int, rank: int = 0,
                 partner: Callable[[int], torch.Tensor] = reversed_pairs) -> None:
        self.spec, self.seed, self.rank, self.partner = spec, seed, rank, partner

    def uniforms(self, pass_idx: int, step: int) -> np.ndarray:
        key = stream_seed(self.seed, MIX_STREAM, pass_idx)
        return np.array([counter_uniform(key, [self.rank], [step], d)[0, 0] for d in range(_DRAWS)])

    def decision(self, pass_idx: int, step: int, height: int, width: int) -> MixDecision:
        return decide(self.spec, self.uniforms(pass_idx, step), height, width)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, pass_idx: int,
                 step: int) -> tuple[torch.Tensor, torch.Tensor]:
        decision = self.decision(pass_idx, step, images.shape[-2], images.shape[-1])
        return mix_batch(images, targets, self.partner(images.shape[0]), decision)

    def mix_weighted(self, images: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, pass_idx: int,
                     step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As `__call__` (same draws), for targets with (B,) loss weights: also returns the mixed weights."""
        decision = self.decision(pass_idx, step, images.shape[-2], images.shape[-1])
        if decision.kind == "none":
            return images, targets, weight
        partner = self.partner(images.shape[0])
        target, weight = mix_weighted_targets(targets, weight, partner, decision.lam)
        return mix_pixels(images, partner, decision), target, weight

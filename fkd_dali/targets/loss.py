"""The distillation loss: soft cross-entropy between student logits and recovered targets.

Always computed in float32, whatever the autocast dtype of the logits, so bf16/fp16
training gets the same loss values as fp32 training.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from fkd_dali.errors import ConfigError

_REDUCTIONS = ("mean", "sum", "none")


def soft_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Cross-entropy against soft targets: ``-(target * log_softmax(logits / T)).sum(1) * T**2``.

    The ``T**2`` factor (Hinton et al., 2015) keeps gradient magnitudes independent of
    T: softening the logits by 1/T shrinks the gradients by about 1/T**2, so without
    it changing T would silently rescale the learning rate. ``target`` is expected to
    be softened already (the store holds probabilities at its label temperature), so
    use the store's temperature here. For a "logits" store the run's T softens the
    stored outputs once (`softmax_targets`) and the student's logits once, here.

    Args:
        logits: (B, C) student logits, any float dtype (bf16/fp16 are upcast).
        target: (B, C) target distribution, e.g. from `recover_labels`.
        temperature: T > 0 dividing the logits.
        reduction: "mean" over the batch, "sum", or "none" for the (B,) per-sample losses.
        weight: optional (B,) per-sample weights (FerKD calibration down-weights or drops
            crops, `fkd_dali.train.calibrate`): each sample's loss is multiplied by its
            weight before the reduction, and "mean" still divides by B, not by the sum of
            the weights, so a dropped crop (weight 0) counts as a zero loss and a batch
            whose crops are all dropped gives 0, not NaN. Without it the computation is
            exactly the unweighted one.

    Returns:
        A float32 scalar, or (B,) float32 for ``reduction="none"``.

    Raises:
        ConfigError: T <= 0, unknown reduction, logits and target widths differ (the
            model's num_classes does not match the store's), or `weight` is not (B,).
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; valid: {', '.join(_REDUCTIONS)}")
    if logits.shape != target.shape:
        raise ConfigError(
            f"logits {tuple(logits.shape)} and soft targets {tuple(target.shape)} differ: "
            "the model's num_classes must equal the label store's num_classes"
        )
    if weight is not None and tuple(weight.shape) != (logits.shape[0],):
        raise ConfigError(f"per-sample loss weights must be ({logits.shape[0]},), got {tuple(weight.shape)}")
    scaled = logits.to(torch.float32)
    if temperature != 1.0:
        scaled = scaled / temperature
    loss = -(target.to(torch.float32) * F.log_softmax(scaled, dim=1)).sum(dim=1)
    if temperature != 1.0:
        loss = loss * (temperature * temperature)
    if weight is not None:
        loss = loss * weight.to(torch.float32)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class SoftTargetCrossEntropy(torch.nn.Module):
    """Soft cross-entropy against dense (B, C) targets, timm-style: `loss(logits, target)`.

    For the targets `fkd_dali.create_loader` yields (already recovered from the stored
    top-K); `temperature` softens the student's logits (with the ``T**2`` factor, see
    `soft_cross_entropy`), and should be the store's label temperature (1 by default).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean loss of (B, C) logits against (B, C) targets; `weight` (B,) weighs each sample (FerKD)."""
        return soft_cross_entropy(logits, target, self.temperature, weight=weight)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

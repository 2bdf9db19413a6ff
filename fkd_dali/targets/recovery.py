"""Recovery of dense soft-label targets from the store's top-K labels.

Owns the choice of target (hard, smoothing, marginal, full). Every kind is a pure,
batched tensor function that runs on the device of its inputs (the training device),
never a Python loop per sample, and returns float32 rows of shape (B, C).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fkd_dali.config import check_recovery
from fkd_dali.defaults import RECOVERY, RECOVERY_KINDS, SMOOTHING
from fkd_dali.errors import ConfigError, LabelStoreError
from fkd_dali.registry import Registry

# (index (B,k) int64, prob (B,k) float32, num_classes, smoothing) -> (B, C) float32.
_TopKRecovery = Callable[[torch.Tensor, torch.Tensor, int, float], torch.Tensor]

_RECOVERIES: Registry[_TopKRecovery] = Registry("label recovery kind")


def _zeros(index: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.zeros(index.shape[0], num_classes, dtype=torch.float32, device=index.device)


@_RECOVERIES.register("hard")
def _hard(index: torch.Tensor, prob: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot of the teacher's top-1 class (the teacher's argmax, not the ground truth)."""
    return _zeros(index, num_classes).scatter_(1, index[:, :1], 1.0)


@_RECOVERIES.register("smoothing")
def _smoothing(index: torch.Tensor, prob: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Label smoothing around the top-1: (1 - eps) * onehot(top1) + eps / C everywhere."""
    target = torch.full(
        (index.shape[0], num_classes), smoothing / num_classes, dtype=torch.float32, device=index.device
    )
    return target.scatter_add_(1, index[:, :1], torch.full_like(prob[:, :1], 1.0 - smoothing))


@_RECOVERIES.register("marginal_smoothing")
def _marginal_smoothing(
    index: torch.Tensor, prob: torch.Tensor, num_classes: int, smoothing: float
) -> torch.Tensor:
    """Top-k kept at their classes; the mass left, 1 - sum(top-k), spread over the other C - k."""
    others = num_classes - index.shape[1]
    # float16 probabilities can sum slightly above 1: never spread a negative remainder.
    rest = (1.0 - prob.sum(dim=1, keepdim=True)).clamp_min_(0.0)
    rest = rest / others if others > 0 else torch.zeros_like(rest)
    target = rest.expand(index.shape[0], num_classes).contiguous()
    return target.scatter_(1, index, prob)


@_RECOVERIES.register("marginal_renorm")
def _marginal_renorm(index: torch.Tensor, prob: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Top-k renormalized to sum 1, zeros elsewhere."""
    total = prob.sum(dim=1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny)
    return _zeros(index, num_classes).scatter_(1, index, prob / total)


def softmax_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) in float32: the targets of a "logits" store (a self-supervised teacher's raw outputs).

    The temperature is applied here, once, to the stored outputs; the loss applies the
    same T to the student's logits (`soft_cross_entropy`), as in Hinton et al.'s KD.

    Raises:
        ConfigError: T is not a finite number > 0.
    """
    if not (temperature > 0 and temperature < float("inf")):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature}")
    return torch.softmax(logits.to(torch.float32) / temperature, dim=1)


@_RECOVERIES.register("full")
def _full_placeholder(index: torch.Tensor, prob: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Registered so that `full` is a valid name; `recover_labels` handles it before dispatch."""
    raise ConfigError("recovery kind 'full' needs the dense `full` labels, not top-K ones")


def recover_labels(
    index: torch.Tensor,
    prob: torch.Tensor,
    num_classes: int,
    kind: str = RECOVERY,
    k: Optional[int] = None,
    smoothing: float = SMOOTHING,
    full: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Builds dense soft targets from stored top-K labels, on the inputs' device.

    Kinds (eps = `smoothing`, C = `num_classes`, p_1..p_k the kept probabilities):

    - ``hard``: one-hot of ``index[:, 0]`` (the teacher's top-1).
    - ``smoothing``: ``(1 - eps) * onehot(top1) + eps / C`` on every class (the
      standard label-smoothing form, so the top-1 gets ``1 - eps + eps / C``).
    - ``marginal_smoothing`` (FKD's recommended label): p_1..p_k at their classes and
      ``max(0, 1 - sum p) / (C - k)`` on each other class. The clamp matters because
      float16 probabilities may sum to slightly more than 1.
    - ``marginal_renorm``: ``p_i / sum p`` at the top-k classes, 0 elsewhere.
    - ``full``: the stored dense labels ``full`` as float32.

    Rows of ``index`` are not checked for the store's -1 fill value: that would cost
    a device sync per batch, and the store only hands out rows of chunks flagged done.

    Args:
        index: (B, K) integer class ids, most probable first (any int dtype).
        prob: (B, K) probabilities matching ``index`` (any float dtype).
        num_classes: C, the width of the returned rows.
        kind: one of `RECOVERY_KINDS`.
        k: keep the first k of the K stored classes (default K); used by the marginal kinds.
        smoothing: eps of the ``smoothing`` kind.
        full: (B, C) dense labels, required for ``kind="full"``.

    Returns:
        (B, C) float32 targets on ``index``'s device; every row sums to 1 (up to rounding).

    Raises:
        ConfigError: unknown kind, k < 1 or k > K, smoothing outside [0, 1], or ``full``
            missing for kind ``full``.
        LabelStoreError: ``index`` and ``prob`` do not have the same (B, K) shape.
    """
    recovery = _RECOVERIES.get(kind)
    if kind == "full":
        if full is None:
            raise ConfigError(
                "recovery kind 'full' needs dense labels: use a store with label kind 'full' "
                f"or pick another kind ({', '.join(RECOVERY_KINDS)})"
            )
        return full.to(torch.float32)
    if index.ndim != 2 or index.shape != prob.shape:
        raise LabelStoreError(
            f"top-K labels must be (B, K) index and prob of one shape, got {tuple(index.shape)} "
            f"and {tuple(prob.shape)}"
        )
    stored_k = index.shape[1]
    check_recovery(kind, k, stored_k, smoothing)
    if stored_k > num_classes:
        raise LabelStoreError(f"store has top-K={stored_k} but only num_classes={num_classes}")
    keep = stored_k if k is None else k
    return recovery(index[:, :keep].long(), prob[:, :keep].to(torch.float32), num_classes, smoothing)



@dataclass(frozen=True)
class Recovery:
    """A recovery choice (`--recovery`, `--recovery-k`, `--smoothing`), checked when made; call it on a batch's labels.

    `check(stored_k)` checks it against a store's K; calling it is `recover_labels`.
    """

    kind: str = RECOVERY
    k: int | None = None
    smoothing: float = SMOOTHING

    def __post_init__(self) -> None:
        check_recovery(self.kind, self.k, smoothing=self.smoothing)

    def check(self, stored_k: int) -> None:
        check_recovery(self.kind, self.k, stored_k, self.smoothing)

    def __call__(self, index: torch.Tensor | None, prob: torch.Tensor | None, num_classes: int,
                 dense: torch.Tensor | None = None) -> torch.Tensor:
        return recover_labels(index, prob, num_classes, self.kind, self.k, self.smoothing, dense)  # type: ignore[arg-type]

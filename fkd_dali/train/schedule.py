"""Learning-rate schedules in FKD's accounting, built on timm's scheduler classes.

Time is counted in optimizer steps: step s of pass p is update ``p * steps_per_pass + s``,
and one pass is m FKD epochs, so an epoch is ``steps_per_pass / m`` updates. The lr of a
step is a pure function of (pass, step), set before the step runs, so a resumed run gets
exactly the lr the uninterrupted run had. Warmup is linear per iteration, from
`warmup_lr` to the base lr, for every schedule.

Schedules (`SCHEDULES`):

- ``cosine``: per-iteration cosine from the base lr to `min_lr` over all passes after warmup.
- ``serrated``: FKD's per-pass schedule. FKD's reference code sets the lr once per pass
  (it steps its epoch scheduler at the first epoch of each pass and keeps that lr for the
  pass's m epochs), so after warmup the lr is the cosine evaluated at the pass's first
  step and held constant within the pass: a staircase that descends pass by pass. We
  chose this (the reference behaviour) over a cosine restarted in every pass.
- ``step``: per-iteration step decay: times `decay_rate` every `decay_epochs` epochs after warmup.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from fkd_dali.defaults import WARMUP_EPOCHS
from fkd_dali.errors import ConfigError
from fkd_dali.registry import Registry


@dataclass(frozen=True)
class ScheduleSpec:
    """The inputs of a schedule, all in FKD units (epochs; one pass = m epochs)."""

    name: str = "cosine"
    passes: int = 1
    steps_per_pass: int = 1
    m: int = 4
    warmup_epochs: float = WARMUP_EPOCHS
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    decay_epochs: float = 30.0
    decay_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.passes < 1 or self.steps_per_pass < 1 or self.m < 1:
            raise ConfigError(f"schedule needs passes, steps per pass and m >= 1, got {self}")
        if self.warmup_epochs < 0 or self.decay_epochs <= 0:
            raise ConfigError("--warmup-epochs must be >= 0 and --decay-epochs > 0")

    @property
    def total_steps(self) -> int:
        return self.passes * self.steps_per_pass

    def epochs_to_steps(self, epochs: float) -> int:
        return int(round(epochs * self.steps_per_pass / self.m))

    @property
    def warmup_steps(self) -> int:
        return min(self.epochs_to_steps(self.warmup_epochs), self.total_steps - 1)


_Builder = Callable[[torch.optim.Optimizer, ScheduleSpec], Any]
SCHEDULES: Registry[_Builder] = Registry("lr schedule")


def _cosine(optimizer: torch.optim.Optimizer, spec: ScheduleSpec) -> Any:
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(optimizer, t_initial=max(1, spec.total_steps - spec.warmup_steps), lr_min=spec.min_lr,
                             warmup_t=spec.warmup_steps, warmup_lr_init=spec.warmup_lr, warmup_prefix=True,
                             t_in_epochs=False)


SCHEDULES.add("cosine", _cosine)
SCHEDULES.add("serrated", _cosine)  # same curve, sampled once per pass (see LrSchedule.update_index)


@SCHEDULES.register("step")
def _step(optimizer: torch.optim.Optimizer, spec: ScheduleSpec) -> Any:
    from timm.scheduler import StepLRScheduler

    return StepLRScheduler(optimizer, decay_t=max(1, spec.epochs_to_steps(spec.decay_epochs)),
                           decay_rate=spec.decay_rate, warmup_t=spec.warmup_steps, warmup_lr_init=spec.warmup_lr,
                           warmup_prefix=True, t_in_epochs=False)


class LrSchedule:
    """A timm scheduler driven by (pass, step); `update(p, s)` sets the lr of that step."""

    def __init__(self, optimizer: torch.optim.Optimizer, spec: ScheduleSpec) -> None:
        self.spec = spec
        self.optimizer = optimizer
        self.scheduler = SCHEDULES.get(spec.name)(optimizer, spec)

    def update_index(self, pass_idx: int, step: int) -> int:
        """The update count the timm scheduler is evaluated at for step `step` of pass `pass_idx`."""
        t = pass_idx * self.spec.steps_per_pass + step
        if self.spec.name == "serrated" and t >= self.spec.warmup_steps:
            t = max(self.spec.warmup_steps, pass_idx * self.spec.steps_per_pass)
        return t

    def update(self, pass_idx: int, step: int) -> float:
        """Set the lr for the step about to run; returns it (the first param group's)."""
        self.scheduler.step_update(self.update_index(pass_idx, step))
        return self.lr

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def create_schedule(optimizer: torch.optim.Optimizer, spec: ScheduleSpec) -> LrSchedule:
    """Build the schedule `spec.name` (one of `SCHEDULES`) over `optimizer`.

    Raises:
        ConfigError: unknown schedule name (lists the valid ones).
    """
    return LrSchedule(optimizer, spec)

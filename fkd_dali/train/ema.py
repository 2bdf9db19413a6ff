"""Weight EMA of the student (`--model-ema`), with timm's EMA class.

timm's `ModelEmaV3` keeps a copy of the
model whose float tensors move towards the model's after every optimizer step:
``ema = decay * ema + (1 - decay) * model``; integer buffers are copied. With a step
number V3 copies the model outright at the first step (decay 0), then uses `decay`;
the step passed is the run's global step, so a resumed run updates exactly as an
uninterrupted one. The EMA copy is made from the raw model (not the DDP wrapper) after
it is on its device; every rank keeps its own, identical copy.
"""
from __future__ import annotations

import torch

from fkd_dali.train.checkpoint import load_weights


class WeightEma:
    """An EMA copy of `model` (eval mode) that `update` moves after each optimizer step."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        from timm.utils import ModelEmaV3

        self._ema = ModelEmaV3(model, decay=decay)

    @property
    def module(self) -> torch.nn.Module:
        return self._ema.module

    @torch.no_grad()
    def update(self, model: torch.nn.Module, global_step: int) -> None:
        """Move towards `model` after optimizer step number `global_step` (1 = the first step)."""
        self._ema.update(model, step=global_step)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load(self, state: dict[str, torch.Tensor], path: str, what: str) -> None:
        """Load EMA weights from a checkpoint (an error names the tensors that do not fit)."""
        load_weights(self.module, state, path, what)

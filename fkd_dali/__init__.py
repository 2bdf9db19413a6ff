"""fkd-dali: Fast Knowledge Distillation (FKD) on NVIDIA DALI.

A teacher labels many random crops of every image once; the crop boxes, flips and
top-K probabilities live in a Zarr soft-label store; training replays those crops
through a DALI pipeline into a plain PyTorch DDP loop.

The public API for your own training loop (see the README's "Your own training loop"):

    loader = fkd_dali.create_loader(data="train/", labels="labels.zarr", num_crops=4,
                                    batch_size=256, image_size=224, device="cuda")
    loss_fn = fkd_dali.SoftTargetCrossEntropy()
    for images, target in loader:
        loss = loss_fn(model(images), target)

Names are imported on first use, so `import fkd_dali` (and the CLI) stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

from fkd_dali.checkout import load_checkout_package
from fkd_dali.version import __version__

# The DALI graphs live in the repository's top-level pipelines/ folder and install as
# fkd_dali.pipelines; in a source checkout, its own folder serves (`fkd_dali.checkout`).
load_checkout_package("fkd_dali.pipelines", "pipelines")

_PUBLIC = {
    "create_loader": "fkd_dali.loaders.fkd_loader",
    "FkdLoader": "fkd_dali.loaders.fkd_loader",
    "FkdBatch": "fkd_dali.loaders.batch",
    "SoftTargetCrossEntropy": "fkd_dali.targets.loss",
    "recover_labels": "fkd_dali.targets.recovery",
    "open_store": "fkd_dali.store.opening",
    "LabelStore": "fkd_dali.store.label_store",
    "FkdError": "fkd_dali.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'fkd_dali' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

"""Evaluation: top-1/top-5 on a labelled folder (reduced across ranks) and student-teacher agreement.

Class spaces: a distilled student predicts the teacher's classes (the store's
num_classes, ImageNet-1k for the shipped teacher), while a folder numbers its classes
0..n-1. `resolve_class_map` maps folder class ids to model outputs: by name for a model
trained on folder classes (vanilla), through ImageNet WordNet ids when every folder is
one, or directly when the class counts agree.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from fkd_dali.config import EvalConfig
from fkd_dali.data.imagenet_val import validation_index
from fkd_dali.data.index import DatasetIndex
from fkd_dali.dist import distributed
from fkd_dali.errors import ConfigError
from fkd_dali.store.checks import check_dataset, index_for_store
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.opening import open_store
from fkd_dali.train.checkpoint import check_store_matches, load_checkpoint, model_from_checkpoint
from fkd_dali.train.precision import amp_context, resolve_amp

if TYPE_CHECKING:
    from fkd_dali.loaders.validation import ValidationLoader


@dataclass(frozen=True)
class EvalResult:
    top1: float  # percent
    top5: float  # percent
    images: int
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {"top1": round(self.top1, 4), "top5": round(self.top5, 4), "images": self.images,
                "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images / self.seconds, 1) if self.seconds > 0 else 0.0}


def resolve_class_map(folder_classes: Sequence[str], num_classes: int,
                      model_classes: Sequence[str] | None = None) -> np.ndarray:
    """Model output index of each folder class id.

    Args:
        folder_classes: class folder names of the evaluated folder, in id order.
        num_classes: the model's number of outputs.
        model_classes: the class names the model was trained on when they are folder
            names (vanilla training); None for a distilled model (teacher classes).

    Raises:
        ConfigError: no consistent mapping exists.
    """
    from fkd_dali.store.ground_truth import folder_class_map

    if model_classes is not None:
        pos = {name: i for i, name in enumerate(model_classes)}
        unknown = [c for c in folder_classes if c not in pos]
        if unknown:
            raise ConfigError(f"validation classes {unknown[:5]} are not among the {len(model_classes)} classes "
                              "the model was trained on; use a folder with the training class names")
        return np.array([pos[c] for c in folder_classes], dtype=np.int64)
    found = folder_class_map(folder_classes, num_classes)
    if found is not None:
        return found[1]
    raise ConfigError(
        f"cannot map the {len(folder_classes)} validation class folders to the model's {num_classes} classes: "
        "name the folders by ImageNet WordNet ids (e.g. n01440764) for a 1000-class teacher, or use a folder with "
        "exactly one sub-folder per teacher class, in the teacher's class order")


def model_data_config(model: torch.nn.Module, size: int | None = None, interpolation: str | None = None,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      crop_pct: float | None = None) -> dict[str, Any]:
    """The pixels `model` is fed: size, interpolation, mean, std, crop_pct (validation centre crop).

    Each value given here wins; the others come from timm's pretrained config of `model`.
    """
    from timm.data import resolve_data_config

    tc = resolve_data_config({}, model=model)
    return {"size": int(size or tc["input_size"][-1]), "interpolation": str(interpolation or tc["interpolation"]),
            "mean": list(mean or tc["mean"]), "std": list(std or tc["std"]),
            "crop_pct": float(crop_pct or tc.get("crop_pct", 0.875))}


def validation_data(folder: str | os.PathLike[str], dc: dict[str, Any], num_classes: int,
                    model_classes: Sequence[str] | None, batch_size: int, threads: int,
                    device: torch.device | str, rank: int = 0, world: int = 1, val_labels: str | None = None,
                    flags: tuple[str, str] = ("--val", "--val-labels")) -> tuple[ValidationLoader, np.ndarray]:
    """This rank's `ValidationLoader` over a labelled folder, and the map of its class ids to model outputs.

    Args:
        folder: root/<class>/<image> folder to evaluate on, or with `val_labels` ImageNet's flat
            validation folder (`fkd_dali.data.imagenet_val`); `flags` name both in errors.
        dc: the model's pixel contract: size, crop_pct, interpolation, mean, std.
        num_classes, model_classes: as in `resolve_class_map`.
        batch_size: images per rank and batch.
    """
    from fkd_dali.loaders.validation import ValidationLoader

    index = validation_index(folder, val_labels, *flags)
    class_map = resolve_class_map(index.class_names, num_classes, model_classes)
    loader = ValidationLoader(index, dc["size"], dc["crop_pct"], dc["interpolation"], dc["mean"], dc["std"],
                              batch_size, threads, device, rank, world)
    return loader, class_map


def _reduce(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, class_map: np.ndarray | None, device: torch.device | str,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> EvalResult:
    """Top-1 / top-5 (percent) of `model` over a `ValidationLoader`, summed over all ranks.

    Every rank must call this (the counts are all-reduced when a process group exists).
    """
    device = torch.device(device)
    cmap = torch.as_tensor(class_map, device=device) if class_map is not None else None
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    c1 = torch.zeros((), dtype=torch.int64, device=device)
    c5 = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    for images, classes, _ in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with amp_context(device, amp_dtype):
            logits = model(images if amp_dtype is not None else images.float())
        target = cmap[classes] if cmap is not None else classes
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == target[:, None]
        c1 += hit[:, 0].sum()
        c5 += hit.any(dim=1).sum()
        n += images.shape[0]
    model.train(was_training)
    total1, total5, count = _reduce([float(c1), float(c5), float(n)], device)
    seconds = time.perf_counter() - t0
    if count == 0:
        return EvalResult(0.0, 0.0, 0, seconds)
    return EvalResult(100.0 * total1 / count, 100.0 * total5 / count, int(count), seconds)


@torch.no_grad()
def teacher_agreement(model: torch.nn.Module, store: LabelStore, data: DatasetIndex | str,
                      slots: Sequence[int], size: int | None = None, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None, interpolation: str | None = None,
                      images: Sequence[int] | None = None, batch_images: int = 16, threads: int = 2,
                      device: torch.device | str = "cpu") -> float:
    """Fraction of stored crops where the student's argmax equals the teacher's stored top-1.

    The crops are the store's `slots` (e.g. held-out slots never trained on) of every
    image (or of `images`), cut by the replay pipeline at the student's resolution and
    normalization (`model_data_config`). A folder path as `data` is checked against the
    store by `index_for_store` (no header reads).
    """
    from fkd_dali.loaders.pass_table import read_pass_table
    from fkd_dali.loaders.replay import ReplayLoader
    from fkd_dali.loaders.sources import StoreCrops

    if isinstance(data, (str, os.PathLike)):
        index = index_for_store(store, data)  # checks the folder without reading image headers
    else:
        index = data
        check_dataset(store, index)
    dc = model_data_config(model, size, interpolation, mean, std)
    ids = np.arange(len(index)) if images is None else np.asarray(images, dtype=np.int64)
    loader = ReplayLoader(StoreCrops(store, index.sizes, prefetch=False), index, m=len(slots),
                          batch_size=len(slots) * batch_images, size=dc["size"], mean=dc["mean"], std=dc["std"],
                          interpolation=dc["interpolation"], device=device, threads=threads)
    table = read_pass_table(store, index.sizes, np.asarray(slots), ids)
    was_training = model.training
    model.eval()
    agree = total = 0
    try:
        for batch in loader.table_batches(table):
            pred = model(batch.images.float()).argmax(dim=1)
            agree += int((pred == batch.field("index")[:, 0]).sum())
            total += int(pred.numel())
    finally:
        model.train(was_training)
        loader.close()
    return agree / max(1, total)


def evaluate_checkpoint(cfg: EvalConfig) -> EvalResult:
    """`fkd-dali eval`: load a training checkpoint and evaluate it on `cfg.data` (DDP-aware)."""
    ckpt = load_checkpoint(cfg.checkpoint)
    if cfg.labels:
        check_store_matches(ckpt, open_store(cfg.labels, storage_options=cfg.storage_options), cfg.checkpoint,
                            command="eval")
    with distributed(cfg.device) as (env, device):
        model = model_from_checkpoint(ckpt, cfg.checkpoint, ema=cfg.use_ema).to(device)
        pixels = ckpt["data_config"] if cfg.crop_pct is None else {**ckpt["data_config"], "crop_pct": cfg.crop_pct}
        loader, cmap = validation_data(cfg.data, pixels, int(ckpt["num_classes"]),
                                       ckpt.get("model_classes"), cfg.batch_size, cfg.threads, device, env.rank,
                                       env.world, cfg.val_labels, ("--data", "--val-labels"))
        return evaluate(model, loader, cmap, device, resolve_amp(cfg.amp, device))

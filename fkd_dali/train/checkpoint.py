"""Training checkpoints: what one holds, atomic writes, and the checks before a resume or an eval.

A checkpoint records the model, optimizer, schedule and scaler state plus the resume
position (pass, steps done in that pass) and everything that must match to continue at
the same sample: arch, label store identity, dataset fingerprint, crops per image,
global batch, world size and seed (see `fkd_dali.train.loop` for why these suffice).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fkd_dali.atomic import save_torch
from fkd_dali.errors import CheckpointError
from fkd_dali.store.label_store import LabelStore

if TYPE_CHECKING:
    from fkd_dali.train.loop import TrainRun

CHECKPOINT_FORMAT = "fkd-dali-train/1"


def store_id(store: LabelStore) -> str:
    """Identity of a store's content: sha256 over its attributes (dataset, teacher, crops, creation)."""
    return hashlib.sha256(json.dumps(store.meta, sort_keys=True).encode()).hexdigest()


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint written by `fkd-dali train` (on the CPU, weights only).

    Raises:
        CheckpointError: the file is missing, unreadable or not an fkd-dali checkpoint.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} does not exist") from e
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an fkd-dali training checkpoint ({CHECKPOINT_FORMAT})")
    return ckpt


def check_store_matches(ckpt: dict[str, Any], store: LabelStore | None, path: str) -> None:
    """Raise `CheckpointError` unless the checkpoint was trained with `store` (None: vanilla)."""
    want = store_id(store) if store is not None else None
    if ckpt.get("store_fingerprint") != want:
        what = "no store (vanilla)" if ckpt.get("store_fingerprint") is None else "another label store"
        raise CheckpointError(f"checkpoint {path} was trained with {what}"
                              f"{'' if store is None else ', not ' + store.url}: resume with the --labels it used")


def check_resume(ckpt: dict[str, Any], run: TrainRun, path: str) -> None:
    """Raise `CheckpointError` unless `run` continues the checkpoint's run at the same sample."""
    cfg = run.cfg
    if ckpt["arch"] != cfg.arch:
        raise CheckpointError(f"checkpoint {path} holds a {ckpt['arch']!r} model; this run builds {cfg.arch!r}. "
                              f"Pass --arch {ckpt['arch']} or start without --resume")
    check_store_matches(ckpt, run.store, path)
    if ckpt["data_fingerprint"] != run.index.fingerprint:
        raise CheckpointError(f"checkpoint {path} was trained on another dataset than {cfg.data}")
    want = {"num_crops": run.m, "batch_size": cfg.batch_size, "world": run.env.world, "seed": cfg.seed}
    diffs = [f"{k} {ckpt[k]} (checkpoint) vs {v} (this run)" for k, v in want.items() if ckpt[k] != v]
    if diffs:
        raise CheckpointError(f"checkpoint {path} cannot continue at the same sample: " + "; ".join(diffs)
                              + ". Resume with the same --num-crops, --batch-size, --seed and number of processes")


def _load_weights(model: torch.nn.Module, ckpt: dict[str, Any], path: str) -> None:
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit model {ckpt['arch']}: {str(e)[:300]}") from e


def model_from_checkpoint(ckpt: dict[str, Any], path: str) -> torch.nn.Module:
    """The timm model of a checkpoint with its weights loaded (CPU)."""
    import timm

    model = timm.create_model(ckpt["arch"], pretrained=False, num_classes=int(ckpt["num_classes"]))
    _load_weights(model, ckpt, path)
    return model


def checkpoint_state(run: TrainRun, pass_idx: int, step: int) -> dict[str, Any]:
    """Everything needed to continue at step `step` of pass `pass_idx`."""
    cfg = run.cfg
    return {
        "format": CHECKPOINT_FORMAT, "arch": cfg.arch, "num_classes": run.num_classes,
        "mode": "vanilla" if cfg.vanilla else "distill",
        "store_fingerprint": store_id(run.store) if run.store is not None else None,
        "data_fingerprint": run.index.fingerprint,
        "model_classes": run.index.class_names if run.store is None else None,
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.schedule.state_dict(), "scaler": run.scaler.state_dict() if run.scaler else None,
        "pass": pass_idx, "step": step, "global_step": run.global_step, "seed": cfg.seed,
        "num_crops": run.m, "batch_size": cfg.batch_size, "world": run.env.world,
        "data_config": run.data_config, "config": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "torch_rng": torch.get_rng_state(),
    }


def resume_run(run: TrainRun, path: str) -> None:
    """Check the checkpoint at `path` against `run`, load its state and set the resume position."""
    ckpt = load_checkpoint(path)
    check_resume(ckpt, run, path)
    _load_weights(run.model, ckpt, path)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.schedule.load_state_dict(ckpt["scheduler"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["torch_rng"])
    run.global_step = int(ckpt["global_step"])
    run.start_pass, run.start_step = int(ckpt["pass"]), int(ckpt["step"])
    if run.start_step >= run.steps_per_pass:
        run.start_pass, run.start_step = run.start_pass + 1, 0


def save_run(run: TrainRun, pass_idx: int, step: int, keep_pass: bool = False) -> str:
    """Rank 0 writes `output/last.pth` (and `output/pass_XXX.pth` for the pass just done with `keep_pass`).

    Returns the path of `last.pth` on every rank.
    """
    out = Path(run.cfg.output)
    path = out / "last.pth"
    if run.env.is_main:
        state = checkpoint_state(run, pass_idx, step)
        save_torch(state, path)  # atomic: a killed run never leaves half a checkpoint
        if keep_pass:
            save_torch(state, out / f"pass_{pass_idx - 1:03d}.pth")
    return str(path)

"""Training checkpoints: what one holds, atomic writes, and the checks before a resume or an eval.

A checkpoint records the model, optimizer, schedule and scaler state plus the resume
position (pass, steps done in that pass) and the run's identity (`RunIdentity`):
everything that must match to continue at the same sample: arch, label store identity,
dataset fingerprint, crops per image, global batch, world size and seed (see
`fkd_dali.train.loop` for why these suffice). Functions here take plain values and
return new ones; the loop owns its state.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fkd_dali.atomic import save_torch
from fkd_dali.errors import CheckpointError
from fkd_dali.labels.teacher import state_dict_mismatch
from fkd_dali.store.label_store import LabelStore

CHECKPOINT_FORMAT = "fkd-dali-train/1"
# attributes that differ between bit-identical stores, and the gt_prob section, which `labels add-gt-prob`
# adds without changing a crop or label (a run keeps resuming on the store it started on)
_NOT_CONTENT = ("created", "writer_version", "gt_prob")
_LABELS_OF_MODE = {"distill": "STORE", "vanilla": "none", "online": "online"}


def store_id(store: LabelStore) -> str:
    """Identity of a store's content: sha256 over its attributes (dataset, teacher, crops, labels).

    The creation time and writer version are left out, so a store regenerated with the
    same options (bit-identical: boxes and labels are pure functions of them) has the
    same identity and a run can resume on it; so is the gt_prob section, so adding
    ground-truth probabilities to a store does not change its identity.
    """
    meta = {k: v for k, v in store.meta.items() if k not in _NOT_CONTENT}
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _legacy_store_id(store: LabelStore) -> str:
    """The identity written by fkd-dali 0.1.0 checkpoints (creation time included)."""
    return hashlib.sha256(json.dumps(store.meta, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    """What a checkpoint must share with a run that continues it (and what `eval` needs)."""

    arch: str
    num_classes: int
    mode: str  # "distill" (a label store), "vanilla" (folder labels) or "online" (teacher in the loop)
    store_fingerprint: str | None  # `store_id` of the label store; None for vanilla
    data_fingerprint: str
    model_classes: list[str] | None  # folder class names a vanilla model predicts
    num_crops: int
    batch_size: int  # global, in crops
    world: int
    seed: int
    data_config: dict[str, Any]  # the student's pixels: size, interpolation, mean, std, crop_pct
    config: dict[str, Any]  # the resolved TrainConfig, for the record
    teacher_fingerprint: str | None = None  # online KD: "<teacher name>:<sha256 of its weights>"


@dataclass(frozen=True)
class Position:
    """Where a run stands: `step` steps of pass `pass_idx` done, `global_step` in total."""

    pass_idx: int = 0
    step: int = 0
    global_step: int = 0

    def normalized(self, steps_per_pass: int) -> Position:
        """The same position with a finished pass rolled over to step 0 of the next one."""
        if self.step >= steps_per_pass:
            return Position(self.pass_idx + 1, 0, self.global_step)
        return self


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint written by `fkd-dali train` (on the CPU, weights only).

    Raises:
        CheckpointError: the file is missing, unreadable or not an fkd-dali checkpoint.
    """
    try:
        size = os.path.getsize(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} does not exist") from e
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path} ({e.strerror or e})") from e
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it was cut off while being written; "
                              "use another checkpoint (e.g. a pass_XXX.pth) or start without --resume")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        from fkd_dali.labels.teacher import torch_load_reason

        raise CheckpointError(f"cannot read checkpoint {path}: {torch_load_reason(path, e)}; use another "
                              "checkpoint or start without --resume") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an fkd-dali training checkpoint ({CHECKPOINT_FORMAT})")
    return ckpt


#: What to do about a checkpoint trained with another store, by the command that found it.
_STORE_REMEDY = {"resume": "resume with the --labels it used",
                 "eval": "pass the --labels store it was trained with, or leave --labels out (eval only uses it "
                         "to check the checkpoint)"}


def check_store_matches(ckpt: dict[str, Any], store: LabelStore | None, path: str, command: str = "resume") -> None:
    """Raise `CheckpointError` unless the checkpoint was trained with `store` (None: vanilla).

    `command` ("resume" or "eval") picks the remedy the message gives: eval does not resume.
    """
    have = ckpt.get("store_fingerprint")
    wanted = {None} if store is None else {store_id(store), _legacy_store_id(store)}
    if have not in wanted:
        what = "no store (vanilla)" if have is None else "another label store"
        raise CheckpointError(f"checkpoint {path} was trained with {what}"
                              f"{'' if store is None else ', not ' + store.url}: {_STORE_REMEDY[command]}")


def check_resume(ckpt: dict[str, Any], identity: RunIdentity, store: LabelStore | None, path: str) -> None:
    """Raise `CheckpointError` unless a run of `identity` continues the checkpoint's run at the same sample."""
    mode = ckpt.get("mode", identity.mode)
    if mode != identity.mode:
        raise CheckpointError(f"checkpoint {path} was trained in {mode} mode (--labels {_LABELS_OF_MODE.get(mode)}); "
                              f"this run is in {identity.mode} mode: resume with the --labels it used")
    if ckpt["arch"] != identity.arch:
        raise CheckpointError(f"checkpoint {path} holds a {ckpt['arch']!r} model; this run builds "
                              f"{identity.arch!r}. Pass --arch {ckpt['arch']} or start without --resume")
    check_store_matches(ckpt, store, path)
    if ckpt.get("teacher_fingerprint") != identity.teacher_fingerprint:
        raise CheckpointError(f"checkpoint {path} was trained online with teacher {ckpt.get('teacher_fingerprint')}, "
                              f"this run uses {identity.teacher_fingerprint}: resume with the --teacher it used")
    if ckpt["data_fingerprint"] != identity.data_fingerprint:
        raise CheckpointError(f"checkpoint {path} was trained on another dataset than this run's --data")
    want = {"num_crops": identity.num_crops, "batch_size": identity.batch_size, "world": identity.world,
            "seed": identity.seed}
    diffs = [f"{k} {ckpt[k]} (checkpoint) vs {v} (this run)" for k, v in want.items() if ckpt[k] != v]
    if diffs:
        raise CheckpointError(f"checkpoint {path} cannot continue at the same sample: " + "; ".join(diffs)
                              + ". Resume with the same --num-crops, --batch-size, --seed and number of processes")


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str, what: str) -> None:
    """`model.load_state_dict(state)`, with an error that names the tensors that do not fit."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit {what}: {state_dict_mismatch(state, model.state_dict())}") from e


def load_initial_weights(model: torch.nn.Module, path: str, what: str) -> None:
    """Load `--initial-checkpoint`: a timm state dict (bare or wrapped) or an fkd-dali checkpoint's model.

    Raises:
        CheckpointError: the file is missing or unreadable, holds no state dict, or its
            tensors do not fit `model` (the message names them).
    """
    from fkd_dali.errors import TeacherError
    from fkd_dali.labels.teacher import read_state_dict

    try:
        state = read_state_dict(path)  # an fkd-dali checkpoint's "model" is one of the wrappers it opens
    except TeacherError as e:
        raise CheckpointError(f"--initial-checkpoint: {e}") from e
    load_weights(model, state, path, what)


def model_from_checkpoint(ckpt: dict[str, Any], path: str, ema: bool = False) -> torch.nn.Module:
    """The timm model of a checkpoint with its weights loaded (CPU): the trained weights, or with
    `ema` the weight EMA a `--model-ema` run keeps beside them.

    Raises:
        CheckpointError: `ema` asked of a checkpoint without an EMA (names the flag to train with).
    """
    import timm

    weights = ckpt["model"]
    if ema:
        weights = ckpt.get("model_ema")
        if weights is None:
            raise CheckpointError(f"--use-ema: checkpoint {path} holds no weight EMA (it was trained without "
                                  "--model-ema); evaluate it without --use-ema")
    model = timm.create_model(ckpt["arch"], pretrained=False, num_classes=int(ckpt["num_classes"]))
    load_weights(model, weights, path, f"{'the weight EMA of ' if ema else ''}model {ckpt['arch']}")
    return model


def checkpoint_state(identity: RunIdentity, position: Position, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, schedule: Any, scaler: Any,
                     ema: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Everything needed to continue at `position`: identity, position, states (EMA weights too), torch RNG."""
    return {
        "format": CHECKPOINT_FORMAT, **dataclasses.asdict(identity),
        "model": model.state_dict(), "model_ema": ema, "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(), "scaler": scaler.state_dict() if scaler else None,
        "pass": position.pass_idx, "step": position.step, "global_step": position.global_step,
        "torch_rng": torch.get_rng_state(),
    }


def restore(ckpt: dict[str, Any], path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            schedule: Any, scaler: Any) -> Position:
    """Load a checked checkpoint's states into the given objects; returns its position."""
    load_weights(model, ckpt["model"], path, f"model {ckpt['arch']}")
    optimizer.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["torch_rng"])
    return Position(int(ckpt["pass"]), int(ckpt["step"]), int(ckpt["global_step"]))


def save_checkpoint(state: dict[str, Any], output: str | Path, keep_pass: int | None = None) -> str:
    """Write `state` to `output/last.pth` (and `output/pass_XXX.pth` for `keep_pass`), atomically.

    A killed run never leaves half a checkpoint: the old file stays until the new one is
    complete. Returns the path of `last.pth`.

    Raises:
        CheckpointError: the file cannot be written (disk full, --output not writable).
    """
    path = Path(output) / "last.pth"
    try:
        save_torch(state, path)
        if keep_pass is not None:
            save_torch(state, Path(output) / f"pass_{keep_pass:03d}.pth")
    except OSError as e:
        raise CheckpointError(f"saving the checkpoint failed: {e}. The previous {path.name} is intact; "
                              "free disk space (or fix --output) and resume from it") from e
    return str(path)

"""The training loop: timm student, replayed crops with stored soft labels, plain DDP.

FKD accounting: one pass over the dataset gives every image its m stored crops of that
pass, so a pass is m epochs and `--epochs E` runs ceil(E / m) passes (vanilla mode: one
crop per image, a pass is an epoch). `--batch-size` is the global batch in crops; each
of the `world` ranks runs batch / world crops = batch / (m * world) images per step.

Resume: a checkpoint records (pass, steps done in that pass); the data of a step is a
pure function of (seed, pass, rank, world, step) and the lr a pure function of (pass,
step), so `--resume` continues with exactly the next batch without decoding the steps
already done. SIGTERM/SIGINT finish the current step, write the checkpoint and stop
(all ranks agree on the stopping step through an all-reduce every few steps).

A NaN or infinite loss stops the run with `NonFiniteLossError` before any checkpoint
holds the damaged weights: each step marks the first non-finite loss on the device (no
synchronisation), and the check runs where the loss is all-reduced anyway (every
--log-interval steps and at the end of the pass's steps, before any checkpoint is
written), so every rank sees the same value and all stop together.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from fkd_dali.atomic import ensure_writable_dir, writable_dir_problem
from fkd_dali.config import TrainConfig, config_dict
from fkd_dali.crops.plan import epochs_to_passes
from fkd_dali.data.index import DatasetIndex
from fkd_dali.dist import DistEnv, StopOnSignal, all_mean, all_sum, distributed
from fkd_dali.errors import ConfigError, NonFiniteLossError
from fkd_dali.interop.relabel_maps import LabelMaps, load_label_maps
from fkd_dali.labels.teacher import Teacher
from fkd_dali.loaders.batch import FkdBatch
from fkd_dali.loaders.fkd_loader import FkdLoader
from fkd_dali.loaders.targets import TargetFn
from fkd_dali.store.label_store import LabelStore
from fkd_dali.targets.loss import SoftTargetCrossEntropy
from fkd_dali.train.calibrate import BANDS, FerKDCalibration, describe_bands, make_calibration
from fkd_dali.train.checkpoint import (
    Position,
    RunIdentity,
    check_resume,
    checkpoint_state,
    load_checkpoint,
    load_initial_weights,
    restore,
    save_checkpoint,
    store_id,
)
from fkd_dali.train.data import make_train_loader, open_training_data
from fkd_dali.train.ema import WeightEma
from fkd_dali.train.evaluate import EvalResult, evaluate, model_data_config, validation_data
from fkd_dali.train.mix import BatchMixer, MixSpec, same_image_pairs
from fkd_dali.train.online import OnlineTeacher, load_online_teacher, online_top_k
from fkd_dali.train.precision import amp_context, resolve_amp
from fkd_dali.train.relabel import RelabelTargets
from fkd_dali.train.run_log import RunLog, pass_line, write_run_config
from fkd_dali.train.schedule import LrSchedule, ScheduleSpec, create_schedule

_STOP_CHECK_EVERY = 10  # steps between the cross-rank "stop requested?" all-reduces


@dataclass
class TrainResult:
    passes: int  # passes completed
    steps: int  # optimizer steps done in total (including before a resume)
    final_loss: float
    images_per_s: float
    crops_per_s: float
    history: list[dict[str, Any]]
    interrupted: bool = False
    signal: int | None = None
    checkpoint: str | None = None
    val: dict[str, float] | None = None
    val_ema: dict[str, float] | None = None  # the weight EMA's validation (--model-ema)


def check_arch(name: str) -> None:
    """Raise `ConfigError` with the closest timm names when `name` is not a timm model."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ConfigError(f"unknown --arch {name!r}: not a timm model name (see timm.list_models()).{hint}")


# -- the run -----------------------------------------------------------------------

@dataclass
class TrainRun:
    """Everything a training run holds, built once by `build_run`."""

    cfg: TrainConfig
    env: DistEnv
    device: torch.device
    index: DatasetIndex
    store: LabelStore | None
    model: torch.nn.Module  # the raw model (state dicts, eval)
    module: torch.nn.Module  # what the step calls: DDP and/or compiled
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule
    scaler: Any
    loss: SoftTargetCrossEntropy  # at the temperature that goes with the loader's targets
    loader: FkdLoader
    amp_dtype: torch.dtype | None
    m: int
    passes: int
    steps_per_pass: int
    data_config: dict[str, Any]
    num_classes: int
    teacher: Teacher | None = None  # online KD
    label_maps: LabelMaps | None = None  # ReLabel
    mixer: BatchMixer | None = None  # --cutmix / --mixup, or --selfmix
    calibration: FerKDCalibration | None = None  # --calibrate ferkd
    ema: WeightEma | None = None  # --model-ema
    val_loader: Any = None
    class_map: np.ndarray | None = None
    global_step: int = 0
    start_pass: int = 0
    start_step: int = 0
    timed_since: float | None = None  # end of the first step run now (excludes start-up)
    timed_crops: int = 0  # global crops trained after `timed_since`
    untimed_s: float = 0.0  # validation time inside the timed span

    @property
    def crops_per_step(self) -> int:
        return self.cfg.batch_size  # global


def _num_classes(index: DatasetIndex, store: LabelStore | None, teacher: Teacher | None,
                 maps: LabelMaps | None) -> int:
    """The student's outputs: the teacher's classes (store, online teacher or label maps), else the folder's."""
    if teacher is not None:
        return teacher.num_classes
    if maps is not None:
        return maps.info.num_classes
    return len(index.class_names) if store is None else store.spec.label.num_classes


def _fresh_targets(cfg: TrainConfig, teacher: Teacher | None, maps: LabelMaps | None, dc: dict[str, Any],
                   device: torch.device, amp_dtype: torch.dtype | None) -> TargetFn | None:
    """What labels fresh crops: the teacher in the loop (online KD) or pooled label maps (ReLabel); else None."""
    if teacher is not None:
        return OnlineTeacher(teacher, dc, device, amp_dtype, cfg.recovery, online_top_k(cfg, teacher.num_classes),
                             cfg.smoothing, cfg.temperature or 1.0)
    return RelabelTargets(maps, device) if maps is not None else None


def _mixer(cfg: TrainConfig, env: DistEnv) -> BatchMixer | None:
    """The batch mixer: SelfMix (CutMix within an image; exclusive with the others), or timm's CutMix/Mixup."""
    if cfg.selfmix > 0:
        return BatchMixer(MixSpec(cutmix_alpha=cfg.selfmix, prob=cfg.selfmix_prob), cfg.seed, env.rank,
                          partner=functools.partial(same_image_pairs, m=cfg.m))
    spec = MixSpec(cfg.cutmix, cfg.mixup, cfg.mix_prob, cfg.mix_switch_prob)
    return BatchMixer(spec, cfg.seed, env.rank) if spec.enabled else None


def build_run(cfg: TrainConfig, env: DistEnv, device: torch.device) -> TrainRun:
    """Check the inputs and build model, loader, optimizer, schedule and loss (and resume)."""
    import timm
    from timm.optim import create_optimizer_v2

    if cfg.batch_size % (cfg.m * env.world):
        raise ConfigError(f"--batch-size {cfg.batch_size} (global, in crops) must be divisible by num_crops x "
                          f"processes = {cfg.m} x {env.world} = {cfg.m * env.world}")
    check_arch(cfg.arch)
    amp_dtype = resolve_amp(cfg.amp, device)
    index, store = open_training_data(cfg)
    teacher = load_online_teacher(cfg) if cfg.online else None
    maps = load_label_maps(cfg.label_maps, index.paths, index.fingerprint) if cfg.relabel else None
    num_classes = _num_classes(index, store, teacher, maps)
    torch.manual_seed(cfg.seed)
    model = timm.create_model(cfg.arch, pretrained=False, num_classes=num_classes)
    if cfg.initial_checkpoint:
        load_initial_weights(model, cfg.initial_checkpoint, f"model {cfg.arch} with {num_classes} classes")
    dc = model_data_config(model, cfg.image_size, cfg.interpolation, cfg.mean, cfg.std, cfg.crop_pct)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = WeightEma(model, cfg.model_ema_decay) if cfg.model_ema else None
    try:
        optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        momentum=cfg.momentum)
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"--opt {cfg.opt!r}: {e}") from e
    fresh_targets = _fresh_targets(cfg, teacher, maps, dc, device, amp_dtype)
    loader = make_train_loader(cfg, env, device, index, store, dc, num_classes, fresh_targets)
    passes = cfg.epochs if cfg.vanilla else epochs_to_passes(cfg.epochs, cfg.m)
    spec = ScheduleSpec(cfg.sched, passes, loader.steps_per_pass, cfg.m, cfg.warmup_epochs, cfg.warmup_lr,
                        cfg.min_lr, cfg.decay_epochs, cfg.decay_rate)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    run = TrainRun(cfg, env, device, index, store, model, model, optimizer, create_schedule(optimizer, spec), scaler,
                   SoftTargetCrossEntropy(loader.temperature), loader, amp_dtype, cfg.m, passes, loader.steps_per_pass, dc,
                   num_classes, mixer=_mixer(cfg, env), ema=ema, teacher=teacher, label_maps=maps,
                   calibration=make_calibration(cfg))
    try:
        if cfg.resume:
            _resume(run, cfg.resume)
        _wrap(run)
        if cfg.val:
            _make_val(run)
    except BaseException:
        loader.close()
        raise
    return run


def run_identity(run: TrainRun) -> RunIdentity:
    """What a checkpoint of this run records so that a resume (or `eval`) can check it."""
    cfg = run.cfg
    mode = "vanilla" if cfg.vanilla else "online" if cfg.online else "relabel" if cfg.relabel else "distill"
    return RunIdentity(arch=cfg.arch, num_classes=run.num_classes, mode=mode,
                       store_fingerprint=store_id(run.store) if run.store is not None else None,
                       data_fingerprint=run.index.fingerprint,
                       model_classes=run.index.class_names if cfg.vanilla else None,
                       num_crops=run.m, batch_size=cfg.batch_size, world=run.env.world, seed=cfg.seed,
                       data_config=run.data_config, config=config_dict(cfg),
                       teacher_fingerprint=_teacher_fingerprint(run))


def _teacher_fingerprint(run: TrainRun) -> str | None:
    """The labels' source that is not a store: the online teacher's weights, or the label maps' teacher and data."""
    if run.teacher is not None:
        return f"{run.teacher.name}:{run.teacher.checkpoint_sha256}"
    if run.label_maps is not None:
        info = run.label_maps.info
        return f"label maps of {info.teacher}:{info.teacher_sha256} (K={info.top_k}, S={info.map_size})"
    return None


def _resume(run: TrainRun, path: str) -> None:
    """Check the checkpoint at `path` against the run, load its states and set the resume position."""
    ckpt = load_checkpoint(path)
    check_resume(ckpt, run_identity(run), run.store, path)
    position = restore(ckpt, path, run.model, run.optimizer, run.schedule, run.scaler)
    position = position.normalized(run.steps_per_pass)
    if run.ema is not None:
        if ckpt.get("model_ema") is not None:
            run.ema.load(ckpt["model_ema"], path, f"the weight EMA of {ckpt['arch']}")
        else:  # EMA switched on at this resume: it starts from the restored weights, as timm does
            run.ema = WeightEma(run.model, run.cfg.model_ema_decay)
    run.start_pass, run.start_step, run.global_step = position.pass_idx, position.step, position.global_step


def _save(run: TrainRun, pass_idx: int, step: int, keep_pass: int | None = None) -> str:
    """Rank 0 writes the checkpoint of `step` steps done in pass `pass_idx`; returns its path on every rank."""
    path = str(Path(run.cfg.output) / "last.pth")
    if run.env.is_main:
        state = checkpoint_state(run_identity(run), Position(pass_idx, step, run.global_step), run.model,
                                 run.optimizer, run.schedule, run.scaler,
                                 run.ema.state_dict() if run.ema is not None else None)
        path = save_checkpoint(state, run.cfg.output, keep_pass)
    return path


def _write_config(run: TrainRun) -> None:
    if not run.env.is_main:
        return
    resolved = {"passes": run.passes, "steps_per_pass": run.steps_per_pass, "world": run.env.world,
                "crops_per_rank_step": run.cfg.batch_size // run.env.world, "num_classes": run.num_classes,
                "device": str(run.device), "amp_dtype": str(run.amp_dtype), "data_config": run.data_config,
                "store_fingerprint": store_id(run.store) if run.store else None, "start_pass": run.start_pass,
                "start_step": run.start_step}
    write_run_config(run.cfg.output, config_dict(run.cfg), resolved)


def _wrap(run: TrainRun) -> None:
    module = run.model
    if run.env.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = DDP(module, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if run.cfg.compile:
        module = torch.compile(module)
    run.module = module


def _make_val(run: TrainRun) -> None:
    cfg = run.cfg
    model_classes = run.index.class_names if cfg.vanilla else None  # vanilla: the folder's classes
    run.val_loader, run.class_map = validation_data(cfg.val, run.data_config, run.num_classes,  # type: ignore[arg-type]
                                                    model_classes, cfg.val_batch_size, cfg.threads, run.device,
                                                    run.env.rank, run.env.world, cfg.val_labels)


# -- the loop ----------------------------------------------------------------------

@dataclass
class PassStats:
    pass_idx: int
    steps_done: int  # steps of this pass completed (the resume position)
    loss: float  # mean over the steps run now
    lr: float
    seconds: float
    crops: int  # global crops trained now
    stop: bool = False  # the run must stop (signal or --max-steps) after this pass's steps_done
    bands: list[int] | None = None  # --calibrate: crops per band (easy, hard, negative), all ranks, steps run now
    agreement: float | None = None  # fraction of the crops run now whose student top-1 was the target's top-1


def _should_stop(run: TrainRun, stop: StopOnSignal, step_in_pass: int) -> bool:
    if run.cfg.max_steps is not None and run.global_step >= run.cfg.max_steps:
        return True  # deterministic: every rank reaches it at the same step
    if run.env.world == 1:
        return stop.signum is not None
    if (step_in_pass + 1) % _STOP_CHECK_EVERY and step_in_pass + 1 < run.steps_per_pass:
        return False
    return stop.agreed(run.device)


def _step_inputs(run: TrainRun, batch: FkdBatch, pass_idx: int, step: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(images, targets, loss weights or None, band counts or None) of a step: recovery, then
    calibration (--calibrate) of each crop's target, then batch mixing (of calibrated targets)."""
    images = batch.images
    if run.amp_dtype is None and images.dtype != torch.float32:
        images = images.float()
    target, weight, counts = batch.target, None, None
    if run.calibration is not None:
        calibrated = run.calibration(batch, target)
        target, weight, counts = calibrated.targets, calibrated.weight, calibrated.counts
    if run.mixer is not None:
        if weight is None:
            images, target = run.mixer(images, target, pass_idx, step)
        else:
            images, target, weight = run.mixer.mix_weighted(images, target, weight, pass_idx, step)
    if run.cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target, weight, counts


def _train_step(run: TrainRun, batch: FkdBatch, pass_idx: int, step: int
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One optimizer step on `batch` (step `step` of pass `pass_idx`: the key of its mix draws).

    Returns the detached loss, with --calibrate the (3,) crops per band (else None), and how
    many crops the student's top-1 already matched the target's top-1 (the teacher's, before
    this step's update): the "agreement" of the metrics, free to count here. All on the device.
    """
    images, target, weight, counts = _step_inputs(run, batch, pass_idx, step)
    with amp_context(run.device, run.amp_dtype):
        logits = run.module(images)
    loss = run.loss(logits, target, weight)  # weight None: unweighted, exactly
    agree = (logits.detach().argmax(dim=1) == target.argmax(dim=1)).sum()
    run.optimizer.zero_grad(set_to_none=True)
    clip = run.cfg.clip_grad
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        if clip:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
        run.optimizer.step()
    return loss.detach(), counts, agree


def _mark_nonfinite(first_bad: torch.Tensor, loss: torch.Tensor, global_step: int) -> torch.Tensor:
    """`first_bad` (global step of the first non-finite loss, -1 while none), updated on the device."""
    return torch.where((first_bad < 0) & ~torch.isfinite(loss), global_step, first_bad)


def _stop_if_nonfinite(run: TrainRun, mean_loss: float, first_bad: torch.Tensor, pass_idx: int) -> None:
    """Raise `NonFiniteLossError` when the all-reduced `mean_loss` is not finite (then on every rank).

    Called only where the loss is already synchronised, before any checkpoint is written,
    so the checkpoints on disk all predate the bad step.
    """
    if np.isfinite(mean_loss):
        return
    bad = torch.where(first_bad < 0, torch.iinfo(torch.int64).max, first_bad)
    if run.env.world > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MIN)  # every rank is here: they all saw the same mean
    last = Path(run.cfg.output) / "last.pth"
    kept = (f"the checkpoint {last} predates it and was kept: resume from it with --resume" if last.is_file()
            else "no checkpoint had been written yet")
    raise NonFiniteLossError(
        f"training stopped: the loss became {mean_loss} at global step {int(bad)} (pass {pass_idx}); {kept}, "
        "after lowering --lr, adding --clip-grad or turning --amp off; `fkd-dali labels verify` checks the labels")


def train_one_pass(run: TrainRun, pass_idx: int, start_step: int, metrics: RunLog,
                   stop: StopOnSignal) -> PassStats:
    """Train the steps [start_step, steps_per_pass) of one pass; stop early on a signal or --max-steps."""
    run.module.train()
    cfg, t_pass = run.cfg, time.perf_counter()
    step, lr = start_step, run.schedule.lr
    zero = torch.zeros((), device=run.device)
    pass_loss, log_loss, log_steps, t_log = zero.clone(), zero.clone(), 0, time.perf_counter()
    pass_agree, log_agree = zero.clone(), zero.clone()  # crops whose student top-1 is the target's top-1
    per_rank = cfg.batch_size // run.env.world
    first_bad = torch.full((), -1, dtype=torch.int64, device=run.device)
    bands = torch.zeros(len(BANDS), dtype=torch.int64, device=run.device)  # summed on the device, reduced at the end
    stopping = cfg.max_steps is not None and run.global_step >= cfg.max_steps
    batches = run.loader.pass_batches(pass_idx, start_step) if not stopping else iter(())
    for batch in batches:
        lr = run.schedule.update(pass_idx, step)
        loss, counts, agree = _train_step(run, batch, pass_idx, step)
        if counts is not None:
            bands += counts
        pass_loss += loss
        log_loss += loss
        pass_agree += agree
        log_agree += agree
        log_steps += 1
        step += 1
        run.global_step += 1
        first_bad = _mark_nonfinite(first_bad, loss, run.global_step)
        if run.ema is not None:
            run.ema.update(run.model, run.global_step)
        metrics.advance()
        if run.timed_since is None:
            run.timed_since = time.perf_counter()
        else:
            run.timed_crops += run.crops_per_step
        if run.global_step % cfg.log_interval == 0 or step == run.steps_per_pass:
            dt = max(time.perf_counter() - t_log, 1e-9)
            crops_s = log_steps * run.crops_per_step / dt
            log_mean = all_mean(log_loss, run.env.world) / log_steps
            agreement = all_mean(log_agree, run.env.world) / (log_steps * per_rank)
            metrics.write({"kind": "step", "pass": pass_idx, "step": step, "global_step": run.global_step,
                           "epoch": round((pass_idx + step / run.steps_per_pass) * run.m, 4),
                           "loss": log_mean, "lr": lr, "images_per_s": crops_s / run.m, "crops_per_s": crops_s,
                           "agreement": round(agreement, 4)})
            _stop_if_nonfinite(run, log_mean, first_bad, pass_idx)
            log_loss, log_agree, log_steps, t_log = zero.clone(), zero.clone(), 0, time.perf_counter()
        if _should_stop(run, stop, step - 1):
            stopping = True
            break
    if hasattr(batches, "close"):
        batches.close()
    done = step - start_step
    mean = all_mean(pass_loss, run.env.world) / done if done else float("nan")
    agreement = all_mean(pass_agree, run.env.world) / (done * per_rank) if done else None
    if done:
        _stop_if_nonfinite(run, mean, first_bad, pass_idx)  # steps after the last log, before a checkpoint
    band_totals = all_sum(bands, run.env.world).tolist() if run.calibration is not None else None
    return PassStats(pass_idx, step, mean, lr, time.perf_counter() - t_pass, done * run.crops_per_step, stopping,
                     band_totals, agreement)


def _validate(run: TrainRun, model: torch.nn.Module) -> EvalResult:
    return evaluate(model, run.val_loader, run.class_map, run.device, run.amp_dtype, run.cfg.channels_last)


def _stop_record(run: TrainRun, stats: PassStats, stop: StopOnSignal, ckpt: str | None) -> dict[str, Any]:
    """The metrics line of a run stopped before its end (signal or --max-steps): where, why, and the loss
    of the steps run in its last pass, so a run stopped within its first pass does not leave metrics empty."""
    reason = f"signal {stop.signum}" if stop.signum is not None else "--max-steps"
    done = stats.crops // run.crops_per_step
    return {"kind": "stop", "pass": stats.pass_idx, "step": stats.steps_done, "global_step": run.global_step,
            "epoch": round((stats.pass_idx + stats.steps_done / run.steps_per_pass) * run.m, 4),
            "loss": stats.loss if done and np.isfinite(stats.loss) else None, "lr": stats.lr,
            "steps_run": done, "reason": reason, "checkpoint": ckpt}


def _eta_s(run: TrainRun, pass_idx: int, t_start: float) -> float | None:
    """Seconds left at the end of pass `pass_idx`: the mean time of the passes run now, times those left."""
    done = pass_idx + 1 - run.start_pass
    return (time.perf_counter() - t_start) / done * (run.passes - pass_idx - 1) if done > 0 else None


def warmup_note(spec: ScheduleSpec) -> str | None:
    """The note of a warmup longer than the run: the schedule shortens it to end one step before the run does."""
    asked = spec.epochs_to_steps(spec.warmup_epochs)
    if asked <= spec.warmup_steps:
        return None
    return (f"note: --warmup-epochs {spec.warmup_epochs:g} ({asked:,} steps) is longer than this run "
            f"({spec.passes * spec.m} epochs, {spec.total_steps:,} steps): warmup shortened to {spec.warmup_steps:,} "
            "steps, so the lr reaches --lr only at the last step (lower --warmup-epochs to keep a decay phase)")


def _loop(run: TrainRun, metrics: RunLog, stop: StopOnSignal) -> TrainResult:
    history: list[dict[str, Any]] = []
    loss, ckpt, val, val_ema = float("nan"), None, None, None
    pass_idx, start = run.start_pass, run.start_step
    t_start = time.perf_counter()
    note = warmup_note(run.schedule.spec)
    if note is not None:
        metrics.note(note)
    while pass_idx < run.passes:
        stats = train_one_pass(run, pass_idx, start, metrics, stop)
        loss = stats.loss if stats.steps_done > start else loss
        if stats.steps_done < run.steps_per_pass:
            ckpt = _save(run, pass_idx, stats.steps_done)
            metrics.write(_stop_record(run, stats, stop, ckpt))
            break
        record = {"kind": "pass", "pass": pass_idx, "step": stats.steps_done, "global_step": run.global_step,
                  "epoch": (pass_idx + 1) * run.m, "loss": stats.loss, "agreement": round(stats.agreement or 0.0, 4),
                  "lr": stats.lr, "seconds": round(stats.seconds, 3),
                  "crops_per_s": stats.crops / stats.seconds if stats.seconds else 0.0}
        record["images_per_s"] = record["crops_per_s"] / run.m
        if run.cfg.skip_corrupt:  # images left out of the run so far, all ranks (each logs the files it left out)
            skipped = torch.tensor(len(run.loader.images_skipped), device=run.device)
            record["images_skipped"] = int(all_sum(skipped, run.env.world))
        if stats.bands is not None:
            record["bands"] = dict(zip(BANDS, stats.bands))
            metrics.note(f"pass {pass_idx}: FerKD bands of the crops trained now (all ranks): "
                         f"{describe_bands(stats.bands)}; hard negatives: {run.cfg.ferkd_negatives}")
        if run.val_loader is not None and ((pass_idx + 1) % run.cfg.val_every == 0 or pass_idx + 1 == run.passes):
            val = _validate(run, run.model)
            run.untimed_s += val.seconds
            record.update(val_top1=val.top1, val_top5=val.top5)
            if run.ema is not None:
                val_ema = _validate(run, run.ema.module)
                run.untimed_s += val_ema.seconds
                record.update(val_top1_ema=val_ema.top1, val_top5_ema=val_ema.top5)
        metrics.write(record)
        metrics.note(pass_line(record, run.passes, run.passes * run.m, time.perf_counter() - t_start,
                               _eta_s(run, pass_idx, t_start)))
        history.append(record)
        ckpt = _save(run, pass_idx + 1, 0, pass_idx if run.cfg.save_every_pass else None)
        pass_idx, start = pass_idx + 1, 0
        if stats.stop:
            if pass_idx < run.passes:
                metrics.write(_stop_record(run, dataclasses.replace(stats, pass_idx=pass_idx, steps_done=0, crops=0),
                                           stop, ckpt))
            break
    interrupted = stop.signum is not None
    elapsed = time.perf_counter() - run.timed_since - run.untimed_s if run.timed_since is not None else 0.0
    crops_s = run.timed_crops / elapsed if elapsed > 0 and run.timed_crops else 0.0
    return TrainResult(passes=pass_idx, steps=run.global_step, final_loss=loss, images_per_s=crops_s / run.m,
                       crops_per_s=crops_s, history=history, interrupted=interrupted, signal=stop.signum,
                       checkpoint=ckpt, val=val.as_dict() if val is not None else None,
                       val_ema=val_ema.as_dict() if val_ema is not None else None)


def fit(cfg: TrainConfig) -> TrainResult:
    """Train as configured (one process, or one rank of a torchrun job); returns a summary.

    Raises:
        FkdError subclasses for bad input: `ConfigError` (options, unknown arch, batch not
        divisible by m x world), `StoreMismatchError` / `LabelStoreError` (store not made for
        --data, incomplete), `CropPlanError` (--num-crops > crops per image),
        `CheckpointError` (resume from another model, store or layout).
    """
    with distributed(cfg.device) as (env, device), StopOnSignal() as stop:
        problem = writable_dir_problem(cfg.output)  # checked first, created only once training can start:
        if problem is not None:  # a run that fails before training leaves no empty folder behind
            raise ConfigError(f"--output {cfg.output}: cannot be written ({problem}); choose a folder that can be "
                              "written")
        run = build_run(cfg, env, device)
        try:
            ensure_writable_dir(cfg.output, f"--output {cfg.output}")
        except OSError as e:
            run.loader.close()
            raise ConfigError(f"{e}; choose a folder that can be written") from e
        _write_config(run)
        metrics = RunLog(cfg.output, env.is_main, run.passes * run.steps_per_pass, run.global_step,
                         append=bool(cfg.resume), progress=cfg.progress, tensorboard=cfg.tensorboard)
        try:
            result = _loop(run, metrics, stop)
        finally:
            metrics.close()
            run.loader.close()
        if env.world > 1:
            dist.barrier()  # nobody leaves before rank 0 has written the checkpoint
        return result

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
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from fkd_dali.crop_plan import epochs_to_passes, pass_slots
from fkd_dali.dist import DistEnv, dist_env, pick_device
from fkd_dali.errors import CheckpointError, ConfigError
from fkd_dali.evaluate import EvalResult, amp_context, evaluate, resolve_class_map
from fkd_dali.index import DatasetIndex, build_index
from fkd_dali.label_store import LabelStore, open_store
from fkd_dali.loss import SoftTargetLoss
from fkd_dali.recovery import check_recovery
from fkd_dali.replay import ReplayBatch
from fkd_dali.schedule import SCHEDULES, LrSchedule, ScheduleSpec, create_schedule

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
CHECKPOINT_FORMAT = "fkd-dali-train/1"
_STOP_CHECK_EVERY = 10  # steps between the cross-rank "stop requested?" all-reduces


@dataclass(frozen=True)
class TrainConfig:
    """Every option of `fkd-dali train`; the CLI reads its defaults from here.

    Defaults follow FKD's ImageNet recipe (m = 4 crops per image per pass, global batch
    1024 crops, SGD with lr 0.1 per 256 crops, cosine, 300 epochs) and the paper's
    recommended label (marginal smoothing of the stored top-K).
    """

    data: str
    labels: str  # store path/URL, or "none" for vanilla training with hard folder labels
    arch: str = "resnet50"
    output: str = "output"
    epochs: int = 300
    num_crops: int = 4
    batch_size: int = 1024  # global, in crops
    lr: float = 0.4
    opt: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    sched: str = "cosine"
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    decay_epochs: float = 30.0
    decay_rate: float = 0.1
    clip_grad: float | None = None
    amp: str = "auto"  # auto: bf16 on GPU, off on CPU
    channels_last: bool = False
    compile: bool = False
    image_size: int | None = None  # default: the student's pretrained input size
    interpolation: str | None = None  # default: the student's pretrained cfg
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    crop_pct: float | None = None
    recovery: str = "marginal_smoothing"
    recovery_k: int | None = None  # default: the store's K
    smoothing: float = 0.1
    temperature: float | None = None  # default: the store's label temperature
    scale: tuple[float, float] = (0.08, 1.0)  # vanilla random-resized-crop
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    val: str | None = None
    val_every: int = 1  # passes
    val_batch_size: int = 64  # images per rank
    resume: str | None = None
    seed: int = 0
    device: str = "auto"
    threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    log_interval: int = 50
    tensorboard: bool = False
    save_every_pass: bool = False  # also keep output/pass_XXX.pth
    synthetic: bool = False
    max_steps: int | None = None  # stop (with a checkpoint) after this many steps in total
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "num_crops", "batch_size", "log_interval", "threads", "val_every", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.amp not in AMP_CHOICES:
            raise ConfigError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        SCHEDULES.get(self.sched)
        check_recovery(self.recovery, self.recovery_k, smoothing=self.smoothing)
        if self.max_steps is not None and self.max_steps < 0:
            raise ConfigError("--max-steps must be >= 0")

    @property
    def vanilla(self) -> bool:
        return self.labels.lower() == "none"

    @property
    def m(self) -> int:
        return 1 if self.vanilla else self.num_crops


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


# -- setup helpers -----------------------------------------------------------------

def check_arch(name: str) -> None:
    """Raise `ConfigError` with the closest timm names when `name` is not a timm model."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ConfigError(f"unknown --arch {name!r}: not a timm model name (see timm.list_models()).{hint}")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `--amp` on `device` (None: full precision)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA GPU; use --amp bf16 or off on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def _current_env() -> DistEnv:
    if dist.is_available() and dist.is_initialized():
        env = dist_env()
        return DistEnv(dist.get_rank(), dist.get_world_size(), env.local_rank)
    return dist_env()


@contextlib.contextmanager
def distributed(device_choice: str = "auto") -> Iterator[tuple[DistEnv, torch.device]]:
    """(env, device) for this process; initializes the torchrun process group (NCCL/gloo) if needed."""
    env = _current_env()
    device = pick_device(device_choice, env.local_rank)
    owns = env.world > 1 and not dist.is_initialized()
    if owns:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield env, device
    finally:
        if owns:
            dist.destroy_process_group()


def store_id(store: LabelStore) -> str:
    """Identity of a store's content: sha256 over its attributes (dataset, teacher, crops, creation)."""
    return hashlib.sha256(json.dumps(store.meta, sort_keys=True).encode()).hexdigest()


# -- checkpoints -------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write atomically: a temp file in the same folder, then `os.replace`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict[str, Any]:
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
    want = store_id(store) if store is not None else None
    if ckpt.get("store_fingerprint") != want:
        what = "no store (vanilla)" if ckpt.get("store_fingerprint") is None else "another label store"
        raise CheckpointError(f"checkpoint {path} was trained with {what}"
                              f"{'' if store is None else ', not ' + store.url}: resume with the --labels it used")


def _check_resume(ckpt: dict[str, Any], run: "TrainRun", path: str) -> None:
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


def model_from_checkpoint(ckpt: dict[str, Any], path: str) -> torch.nn.Module:
    """The timm model of a checkpoint with its weights loaded (CPU)."""
    import timm

    model = timm.create_model(ckpt["arch"], pretrained=False, num_classes=int(ckpt["num_classes"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit model {ckpt['arch']}: {str(e)[:300]}") from e
    return model


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
    loss_fn: Callable[[torch.Tensor, ReplayBatch], torch.Tensor]
    loader: Any
    amp_dtype: torch.dtype | None
    m: int
    passes: int
    steps_per_pass: int
    data_config: dict[str, Any]
    num_classes: int
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


def _open_checked_store(cfg: TrainConfig, index: DatasetIndex) -> LabelStore:
    store = open_store(cfg.labels)
    store.check_dataset(index)
    store.check_complete()
    pass_slots(0, cfg.num_crops, store.crops_per_image)  # --num-crops <= M, with an explanation
    check_recovery(cfg.recovery, cfg.recovery_k, stored_k=store.spec.label.k, smoothing=cfg.smoothing)
    if cfg.recovery == "full" and store.spec.label.kind != "full":
        raise ConfigError(f"--recovery full needs a store with dense labels; {store.url} holds top-"
                          f"{store.spec.label.k} only: pick another --recovery or regenerate with --full")
    return store


def _data_config(cfg: TrainConfig, model: torch.nn.Module) -> dict[str, Any]:
    from timm.data import resolve_data_config

    tc = resolve_data_config({}, model=model)
    return {"size": int(cfg.image_size or tc["input_size"][-1]), "interpolation": cfg.interpolation or tc["interpolation"],
            "mean": list(cfg.mean or tc["mean"]), "std": list(cfg.std or tc["std"]),
            "crop_pct": float(cfg.crop_pct or tc.get("crop_pct", 0.875))}


def _make_loader(cfg: TrainConfig, env: DistEnv, device: torch.device, index: DatasetIndex,
                 store: LabelStore | None, dc: dict[str, Any], num_classes: int) -> Any:
    from fkd_dali.replay import ReplayLoader, SyntheticLoader
    from pipelines.vanilla import VanillaLoader

    per_rank = cfg.batch_size // env.world
    common = dict(size=dc["size"], mean=dc["mean"], std=dc["std"], interpolation=dc["interpolation"], seed=cfg.seed,
                  rank=env.rank, world=env.world, device=device, threads=cfg.threads)
    if cfg.vanilla:
        loader = VanillaLoader(index, per_rank, scale=cfg.scale, ratio=cfg.ratio, **common)
    else:
        loader = ReplayLoader(store, index, cfg.num_crops, per_rank, with_full=cfg.recovery == "full", **common)
    if loader.steps_per_pass < 1:
        raise ConfigError(f"{len(index)} images over {env.world} rank(s) do not fill one step of "
                          f"{per_rank // cfg.m} images per rank: lower --batch-size")
    if cfg.synthetic:
        steps = loader.steps_per_pass
        loader.close()
        k = None if cfg.vanilla else store.spec.label.k  # type: ignore[union-attr]
        loader = SyntheticLoader(per_rank, dc["size"], steps, num_classes, k, device, half=device.type == "cuda",
                                 seed=cfg.seed + env.rank, full=cfg.recovery == "full" and not cfg.vanilla)
    return loader


def _make_loss(cfg: TrainConfig, store: LabelStore | None, num_classes: int) -> Callable:
    if store is None:
        return lambda logits, batch: F.cross_entropy(logits.float(), batch.index)
    soft = SoftTargetLoss(num_classes, cfg.recovery, cfg.recovery_k, cfg.temperature or store.spec.label.temperature,
                          cfg.smoothing)
    return lambda logits, batch: soft(logits, batch.index, batch.prob, batch.full)


def build_run(cfg: TrainConfig, env: DistEnv, device: torch.device) -> TrainRun:
    """Check the inputs and build model, loader, optimizer, schedule and loss (and resume)."""
    import timm
    from timm.optim import create_optimizer_v2

    if cfg.batch_size % (cfg.m * env.world):
        raise ConfigError(f"--batch-size {cfg.batch_size} (global, in crops) must be divisible by num_crops x "
                          f"processes = {cfg.m} x {env.world} = {cfg.m * env.world}")
    check_arch(cfg.arch)
    amp_dtype = resolve_amp(cfg.amp, device)
    index = build_index(cfg.data)
    store = None if cfg.vanilla else _open_checked_store(cfg, index)
    num_classes = len(index.class_names) if store is None else store.spec.label.num_classes
    torch.manual_seed(cfg.seed)
    model = timm.create_model(cfg.arch, pretrained=False, num_classes=num_classes)
    dc = _data_config(cfg, model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        momentum=cfg.momentum)
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"--opt {cfg.opt!r}: {e}") from e
    loader = _make_loader(cfg, env, device, index, store, dc, num_classes)
    passes = cfg.epochs if cfg.vanilla else epochs_to_passes(cfg.epochs, cfg.m)
    spec = ScheduleSpec(cfg.sched, passes, loader.steps_per_pass, cfg.m, cfg.warmup_epochs, cfg.warmup_lr,
                        cfg.min_lr, cfg.decay_epochs, cfg.decay_rate)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    run = TrainRun(cfg, env, device, index, store, model, model, optimizer, create_schedule(optimizer, spec), scaler,
                   _make_loss(cfg, store, num_classes), loader, amp_dtype, cfg.m, passes, loader.steps_per_pass, dc,
                   num_classes)
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


def _wrap(run: TrainRun) -> None:
    module = run.model
    if run.env.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = DDP(module, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if run.cfg.compile:
        module = torch.compile(module)
    run.module = module


def _make_val(run: TrainRun) -> None:
    from pipelines.validation import ValidationLoader

    vindex = build_index(run.cfg.val)  # type: ignore[arg-type]
    model_classes = run.index.class_names if run.store is None else None
    run.class_map = resolve_class_map(vindex.class_names, run.num_classes, model_classes)
    dc = run.data_config
    run.val_loader = ValidationLoader(vindex, dc["size"], dc["crop_pct"], dc["interpolation"], dc["mean"], dc["std"],
                                      run.cfg.val_batch_size, run.cfg.threads, run.device, run.env.rank, run.env.world)


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


def _resume(run: TrainRun, path: str) -> None:
    ckpt = load_checkpoint(path)
    _check_resume(ckpt, run, path)
    try:
        run.model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit model {run.cfg.arch}: {str(e)[:300]}") from e
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.schedule.load_state_dict(ckpt["scheduler"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["torch_rng"])
    run.global_step = int(ckpt["global_step"])
    run.start_pass, run.start_step = int(ckpt["pass"]), int(ckpt["step"])
    if run.start_step >= run.steps_per_pass:
        run.start_pass, run.start_step = run.start_pass + 1, 0


# -- logging -----------------------------------------------------------------------

class _Metrics:
    """Rank 0's tqdm bar, output/metrics.jsonl and optional TensorBoard; no-ops elsewhere."""

    def __init__(self, run: TrainRun) -> None:
        self.main = run.env.is_main
        self.bar = self.file = self.tb = None
        if not self.main:
            return
        from tqdm import tqdm

        out = Path(run.cfg.output)
        self.file = open(out / "metrics.jsonl", "a" if run.cfg.resume else "w", encoding="utf-8")
        self.bar = tqdm(total=run.passes * run.steps_per_pass, initial=run.global_step, unit="step",
                        dynamic_ncols=True, disable=not run.cfg.progress, desc="train")
        if run.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                import warnings

                warnings.warn("--tensorboard: tensorboard is not installed (pip install tensorboard); skipping")

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def write(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        self.file.write(json.dumps(record) + "\n")  # type: ignore[union-attr]
        self.file.flush()  # type: ignore[union-attr]
        if self.bar is not None and record["kind"] == "step":
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                 img_s=f"{record['images_per_s']:.0f}")
        if self.tb is not None:
            for key in ("loss", "lr", "images_per_s", "val_top1", "val_top5"):
                if record.get(key) is not None:
                    self.tb.add_scalar(f"{record['kind']}/{key}", record[key], record["global_step"])

    def close(self) -> None:
        for h in (self.bar, self.file, self.tb):
            if h is not None:
                h.close()


class _StopOnSignal:
    """SIGTERM/SIGINT set `signum` (finish the step, checkpoint, stop); a second SIGINT interrupts at once.

    Repeated SIGTERMs are ignored: launchers forward the signal they got to workers that
    already received it from the process group, and that must not cancel the checkpoint.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT and self.signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


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


def _all_mean(value: torch.Tensor, world: int) -> float:
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return float(value)


def _should_stop(run: TrainRun, stop: _StopOnSignal, step_in_pass: int) -> bool:
    if run.cfg.max_steps is not None and run.global_step >= run.cfg.max_steps:
        return True  # deterministic: every rank reaches it at the same step
    if run.env.world == 1:
        return stop.signum is not None
    if (step_in_pass + 1) % _STOP_CHECK_EVERY and step_in_pass + 1 < run.steps_per_pass:
        return False
    flag = torch.tensor([stop.signum or 0], dtype=torch.int64, device=run.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and stop.signum is None:
        stop.signum = int(flag.item())
    return bool(flag.item())


def _train_step(run: TrainRun, batch: ReplayBatch) -> torch.Tensor:
    images = batch.images
    if run.amp_dtype is None and images.dtype != torch.float32:
        images = images.float()
    if run.cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with amp_context(run.device, run.amp_dtype):
        logits = run.module(images)
    loss = run.loss_fn(logits, batch)
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
    return loss.detach()


def train_one_pass(run: TrainRun, pass_idx: int, start_step: int, metrics: _Metrics,
                   stop: _StopOnSignal) -> PassStats:
    """Train the steps [start_step, steps_per_pass) of one pass; stop early on a signal or --max-steps."""
    run.module.train()
    cfg, t_pass = run.cfg, time.perf_counter()
    step, lr = start_step, run.schedule.lr
    zero = torch.zeros((), device=run.device)
    pass_loss, log_loss, log_steps, t_log = zero.clone(), zero.clone(), 0, time.perf_counter()
    stopping = cfg.max_steps is not None and run.global_step >= cfg.max_steps
    batches = run.loader.pass_batches(pass_idx, start_step) if not stopping else iter(())
    for batch in batches:
        lr = run.schedule.update(pass_idx, step)
        loss = _train_step(run, batch)
        pass_loss += loss
        log_loss += loss
        log_steps += 1
        step += 1
        run.global_step += 1
        metrics.advance()
        if run.timed_since is None:
            run.timed_since = time.perf_counter()
        else:
            run.timed_crops += run.crops_per_step
        if run.global_step % cfg.log_interval == 0 or step == run.steps_per_pass:
            dt = max(time.perf_counter() - t_log, 1e-9)
            crops_s = log_steps * run.crops_per_step / dt
            metrics.write({"kind": "step", "pass": pass_idx, "step": step, "global_step": run.global_step,
                           "epoch": round((pass_idx + step / run.steps_per_pass) * run.m, 4),
                           "loss": _all_mean(log_loss, run.env.world) / log_steps, "lr": lr,
                           "images_per_s": crops_s / run.m, "crops_per_s": crops_s})
            log_loss, log_steps, t_log = zero.clone(), 0, time.perf_counter()
        if _should_stop(run, stop, step - 1):
            stopping = True
            break
    if hasattr(batches, "close"):
        batches.close()
    done = step - start_step
    mean = _all_mean(pass_loss, run.env.world) / done if done else float("nan")
    return PassStats(pass_idx, step, mean, lr, time.perf_counter() - t_pass, done * run.crops_per_step, stopping)


def _validate(run: TrainRun) -> EvalResult:
    return evaluate(run.model, run.val_loader, run.class_map, run.device, run.amp_dtype, run.cfg.channels_last)


def _save(run: TrainRun, pass_idx: int, step: int, keep_pass: bool = False) -> str:
    out = Path(run.cfg.output)
    path = out / "last.pth"
    if run.env.is_main:
        state = checkpoint_state(run, pass_idx, step)
        save_checkpoint(path, state)
        if keep_pass:
            save_checkpoint(out / f"pass_{pass_idx - 1:03d}.pth", state)
    return str(path)


def _write_config(run: TrainRun) -> None:
    if not run.env.is_main:
        return
    resolved = {"passes": run.passes, "steps_per_pass": run.steps_per_pass, "world": run.env.world,
                "crops_per_rank_step": run.cfg.batch_size // run.env.world, "num_classes": run.num_classes,
                "device": str(run.device), "amp_dtype": str(run.amp_dtype), "data_config": run.data_config,
                "store_fingerprint": store_id(run.store) if run.store else None, "start_pass": run.start_pass,
                "start_step": run.start_step}
    text = json.dumps({"config": dataclasses.asdict(run.cfg), "resolved": resolved}, indent=2, default=str)
    (Path(run.cfg.output) / "config.json").write_text(text)


def _loop(run: TrainRun, metrics: _Metrics, stop: _StopOnSignal) -> TrainResult:
    history: list[dict[str, Any]] = []
    loss, ckpt, val = float("nan"), None, None
    pass_idx, start = run.start_pass, run.start_step
    while pass_idx < run.passes:
        stats = train_one_pass(run, pass_idx, start, metrics, stop)
        loss = stats.loss if stats.steps_done > start else loss
        if stats.steps_done < run.steps_per_pass:
            ckpt = _save(run, pass_idx, stats.steps_done)
            break
        record = {"kind": "pass", "pass": pass_idx, "step": stats.steps_done, "global_step": run.global_step,
                  "loss": stats.loss,
                  "lr": stats.lr, "seconds": round(stats.seconds, 3),
                  "crops_per_s": stats.crops / stats.seconds if stats.seconds else 0.0}
        record["images_per_s"] = record["crops_per_s"] / run.m
        if run.val_loader is not None and ((pass_idx + 1) % run.cfg.val_every == 0 or pass_idx + 1 == run.passes):
            val = _validate(run)
            run.untimed_s += val.seconds
            record.update(val_top1=val.top1, val_top5=val.top5)
        metrics.write(record)
        history.append(record)
        ckpt = _save(run, pass_idx + 1, 0, run.cfg.save_every_pass)
        pass_idx, start = pass_idx + 1, 0
        if stats.stop:
            break
    interrupted = stop.signum is not None
    elapsed = time.perf_counter() - run.timed_since - run.untimed_s if run.timed_since is not None else 0.0
    crops_s = run.timed_crops / elapsed if elapsed > 0 and run.timed_crops else 0.0
    return TrainResult(passes=pass_idx, steps=run.global_step, final_loss=loss, images_per_s=crops_s / run.m,
                       crops_per_s=crops_s, history=history, interrupted=interrupted, signal=stop.signum,
                       checkpoint=ckpt, val=val.as_dict() if val is not None else None)


def fit(cfg: TrainConfig) -> TrainResult:
    """Train as configured (one process, or one rank of a torchrun job); returns a summary.

    Raises:
        FkdError subclasses for bad input: `ConfigError` (options, unknown arch, batch not
        divisible by m x world), `StoreMismatchError` / `LabelStoreError` (store not made for
        --data, incomplete), `CropPlanError` (--num-crops > crops per image),
        `CheckpointError` (resume from another model, store or layout).
    """
    with distributed(cfg.device) as (env, device), _StopOnSignal() as stop:
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
        run = build_run(cfg, env, device)
        _write_config(run)
        metrics = _Metrics(run)
        try:
            result = _loop(run, metrics, stop)
        finally:
            metrics.close()
            run.loader.close()
        if env.world > 1:
            dist.barrier()  # nobody leaves before rank 0 has written the checkpoint
        return result

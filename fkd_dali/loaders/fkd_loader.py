"""The public loader for your own training loop: `create_loader(...)` yields (images, soft targets).

What `fkd-dali train` uses, without its CLI, the way `timm.data.create_loader` or DALI's
`DALIGenericIterator` are used: every check a store must pass before training
(`open_replay_data`), the replay loader of this process's share (rank and world taken
from `torch.distributed` when it is initialised), and label recovery on the device, so
each batch carries dense (B, C) targets ready for a soft cross-entropy
(`fkd_dali.SoftTargetCrossEntropy`).

One iteration over the loader is one pass: every image's m stored crops of that pass
(m FKD epochs). The loader moves on to the next pass by itself after a complete
iteration; `set_pass(p, step)` jumps anywhere (resume), and `position` says where it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from fkd_dali.config import check_recovery
from fkd_dali.crops.plan import pass_slots
from fkd_dali.data.index import DatasetIndex
from fkd_dali.defaults import DEVICE_CHOICES, INTERPOLATION
from fkd_dali.errors import ConfigError, LabelStoreError
from fkd_dali.store.checks import check_chunk_files
from fkd_dali.targets.recovery import recover_labels, softmax_targets
from fkd_dali.loaders.replay import ReplayLoader
from fkd_dali.store.checks import index_for_store
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.opening import open_store

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's IMAGENET_DEFAULT_MEAN/STD, the usual student normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_replay_data(data: str, labels: str | LabelStore, num_crops: int, recovery: str = "marginal_smoothing",
                     recovery_k: int | None = None, smoothing: float = 0.1,
                     with_gt_prob: bool = False, temperature: float | None = None) -> tuple[DatasetIndex, LabelStore]:
    """(index, store) for replaying `labels` over the folder `data`, after every check a training run needs.

    `with_gt_prob`: the run needs the ground-truth probabilities (e.g. calibration); the
    store must have them. `temperature`: the softmax temperature the run applies, which
    a "logits" store (raw outputs of a self-supervised teacher) needs.

    Raises:
        StoreMismatchError: the store was made for another folder (the message names the difference).
        LabelStoreError: the store is missing, damaged or incomplete.
        CropPlanError: `num_crops` exceeds the crops stored per image.
        ConfigError: the recovery choice does not fit the store (k above its K, `full` without dense labels,
            anything but `full` or no temperature on a logits store).
    """
    store = labels if isinstance(labels, LabelStore) else open_store(labels)
    if with_gt_prob and not store.has_gt_prob:
        raise LabelStoreError(store.no_gt_prob_message())
    index = index_for_store(store, data)
    store.check_complete()
    check_chunk_files(store)  # deleted chunk files; each pass table is checked again as it is read
    pass_slots(0, num_crops, store.crops_per_image)  # num_crops <= M, with an explanation
    if store.spec.label.kind == "logits":
        check_logits_recovery(store, recovery, temperature)
        return index, store
    check_recovery(recovery, recovery_k, stored_k=store.spec.label.k, smoothing=smoothing)
    if recovery == "full" and store.spec.label.kind != "full":
        raise ConfigError(f"--recovery full needs a store with dense labels; {store.url} holds top-"
                          f"{store.spec.label.k} only: pick another --recovery or regenerate with --full")
    return index, store


def check_logits_recovery(store: LabelStore, recovery: str, temperature: float | None) -> None:
    """A "logits" store trains only on softmax(stored outputs / T): `--recovery full` with a `--temperature`."""
    width = store.spec.label.num_classes
    if recovery != "full":
        raise ConfigError(f"--recovery {recovery}: store {store.url} holds a self-supervised teacher's {width} raw "
                          "outputs per crop (kind logits), whose only target is their softmax: use --recovery full "
                          "with --temperature T")
    if temperature is None:
        raise ConfigError(f"store {store.url} holds raw teacher outputs (kind logits) with no temperature applied: "
                          "choose one with --temperature T (create_loader: temperature=T); the targets are "
                          "softmax(outputs / T)")


@dataclass(frozen=True)
class FkdBatch:
    """One step of one process; unpacks as ``images, target = batch``.

    images: (B, 3, S, S) on the loader's device (float16 on a GPU, float32 on the CPU),
        crops of one image adjacent (B = images per step x m).
    target: (B, C) float32 soft targets, rows summing to 1.
    meta: (B, 2) int64 CPU tensor: per crop (dataset image id, store slot).
    gt_prob: (B,) float32 teacher probability of each crop's ground-truth class, and
    gt_class: (B,) int64 that class (in the teacher's classes); only with `with_gt_prob`.
    """

    images: torch.Tensor
    target: torch.Tensor
    meta: torch.Tensor
    gt_prob: torch.Tensor | None = None
    gt_class: torch.Tensor | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.images, self.target))


def _process_place(rank: int | None, world: int | None) -> tuple[int, int]:
    """(rank, world): given values win, then an initialised torch.distributed group, else one process."""
    import torch.distributed as dist

    if rank is not None and world is not None:
        return rank, world
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class FkdLoader:
    """Replayed crops with dense soft targets; see `create_loader`."""

    def __init__(self, replay: ReplayLoader, num_classes: int, recovery: str, recovery_k: int | None,
                 smoothing: float, logits_temperature: float | None = None) -> None:
        self.replay = replay
        self.num_classes = num_classes
        self.recovery, self.recovery_k, self.smoothing = recovery, recovery_k, smoothing
        self.logits_temperature = logits_temperature  # set for a "logits" store: targets = softmax(full / T)
        self.pass_idx, self.step = 0, 0

    def __len__(self) -> int:
        """Steps in one pass (the same on every rank)."""
        return self.replay.steps_per_pass

    @property
    def position(self) -> tuple[int, int]:
        """(pass, steps of it done): save this with your checkpoint and give it to `set_pass` to resume."""
        return self.pass_idx, self.step

    def set_pass(self, pass_idx: int, step: int = 0) -> None:
        """Make the next iteration run pass `pass_idx` from step `step` (earlier steps are not decoded)."""
        if pass_idx < 0 or not 0 <= step <= len(self):
            raise ConfigError(f"set_pass({pass_idx}, {step}): need pass >= 0 and 0 <= step <= {len(self)}")
        self.pass_idx, self.step = pass_idx, step

    def __iter__(self) -> Iterator[FkdBatch]:
        if self.step >= len(self):
            self.pass_idx, self.step = self.pass_idx + 1, 0
        for batch in self.replay.pass_batches(self.pass_idx, self.step):
            if self.logits_temperature is not None:
                target = softmax_targets(batch.full, self.logits_temperature)  # type: ignore[arg-type]
            else:
                target = recover_labels(batch.index, batch.prob, self.num_classes, self.recovery, self.recovery_k,
                                        self.smoothing, batch.full)
            self.step += 1
            yield FkdBatch(batch.images, target, batch.meta, batch.gt_prob, batch.gt_class)
        self.pass_idx, self.step = self.pass_idx + 1, 0

    def close(self) -> None:
        self.replay.close()

    def __enter__(self) -> FkdLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def create_loader(data: str, labels: str | LabelStore, num_crops: int = 4, batch_size: int = 256,
                  image_size: int = 224, device: torch.device | str = "auto",
                  recovery: str = "marginal_smoothing", recovery_k: int | None = None, smoothing: float = 0.1,
                  mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                  interpolation: str = INTERPOLATION, seed: int = 0, threads: int | None = None,
                  rank: int | None = None, world: int | None = None, with_gt_prob: bool = False,
                  temperature: float | None = None) -> FkdLoader:
    """Replay a soft-label store's crops over an image folder, as (images, dense soft targets) batches.

    Args:
        data: the ImageNet-style folder the labels were generated for.
        labels: a store path / fsspec URL, or an opened `LabelStore`.
        num_crops: m, crops of each image per step and pass.
        batch_size: crops per step in THIS process (like a DataLoader's); a multiple of m.
        image_size: output side in pixels.
        device: "auto" (this rank's GPU if any, else the CPU), "cpu", "cuda" or a torch device;
            on a GPU, decoding and resizing run there too.
        recovery, recovery_k, smoothing: how stored top-K labels become dense targets
            (see `fkd_dali.targets.recovery.recover_labels`).
        mean, std, interpolation: the student's normalisation and resize filter.
        seed: the replay order seed (a pure function of (seed, pass), so resume is exact).
        threads: DALI CPU threads (default: the cores, at most 8).
        rank, world: this process's share; default from `torch.distributed` when initialised.
        with_gt_prob: also give each crop's ground-truth probability and class
            (`FkdBatch.gt_prob`, `gt_class`); the store must have labels/gt_prob.
        temperature: for a "logits" store (a self-supervised teacher's raw outputs) only,
            and required there: the targets are softmax(outputs / temperature). Pass the
            same T to `SoftTargetCrossEntropy(temperature=T)` to soften the student alike.

    Raises:
        FkdError subclasses, as `open_replay_data`, and `ConfigError` for a batch that is not
        a multiple of m or does not fit the images of one rank.
    """
    from fkd_dali.dist import dist_env, pick_device

    index, store = open_replay_data(data, labels, num_crops, recovery, recovery_k, smoothing, with_gt_prob,
                                    temperature)
    if temperature is not None and store.spec.label.kind != "logits":
        raise ConfigError(f"temperature={temperature}: store {store.url} holds probabilities already softened at "
                          f"its temperature {store.spec.label.temperature}; the argument applies to logits stores "
                          "only (soften the student with SoftTargetCrossEntropy(temperature=...))")
    rank, world = _process_place(rank, world)
    if isinstance(device, str) and device in DEVICE_CHOICES:
        device = pick_device(device, dist_env().local_rank)
    replay = ReplayLoader(store, index, num_crops, batch_size, image_size, mean, std, interpolation, seed=seed,
                          rank=rank, world=world, device=device, threads=threads,
                          with_full=recovery == "full", with_gt_prob=with_gt_prob)
    if replay.steps_per_pass < 1:
        replay.close()
        raise ConfigError(f"{len(index)} images over {world} process(es) do not fill one step of "
                          f"{batch_size // num_crops} images: lower batch_size")
    return FkdLoader(replay, store.spec.label.num_classes, recovery, recovery_k, smoothing,
                     temperature if store.spec.label.kind == "logits" else None)

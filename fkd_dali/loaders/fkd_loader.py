"""The one loader of training crops with targets: `create_loader(...)` for your own loop, `FkdLoader` for every mode.

`fkd-dali train` and `create_loader` build the replay of a store the same way
(`open_replay_data`, then `replay_loader`): every check a store must pass before
training, the replay loader of this process's share (rank and world taken from
`torch.distributed` when it is initialised), and label recovery on the device, so each
batch carries dense (B, C) targets ready for a soft cross-entropy
(`fkd_dali.SoftTargetCrossEntropy`). The other training modes (vanilla, online KD,
ReLabel, synthetic) are the same `FkdLoader` around another batch loader and target
function.

One iteration over the loader is one pass: every image's m stored crops of that pass
(m FKD epochs). The loader moves on to the next pass by itself after a complete
iteration; `set_pass(p, step)` jumps anywhere (resume), and `position` says where it is.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import torch

from fkd_dali.crops.plan import pass_slots
from fkd_dali.data.index import DatasetIndex
from fkd_dali.defaults import DEVICE_CHOICES, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATION, RECOVERY, SMOOTHING
from fkd_dali.errors import ConfigError
from fkd_dali.loaders.batch import BatchLoader, CropBatch, FkdBatch
from fkd_dali.loaders.feed import read_encoded
from fkd_dali.loaders.guard import ImageGuard
from fkd_dali.loaders.replay import ReplayLoader
from fkd_dali.loaders.sources import StoreCrops
from fkd_dali.loaders.targets import TargetFn, store_targets
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.opening import StoreNeeds, open_checked_store
from fkd_dali.store.schema import CropField, LabelKind
from fkd_dali.targets.recovery import Recovery

_log = logging.getLogger(__name__)

def open_replay_data(data: str, labels: str | LabelStore, num_crops: int, with_gt_prob: bool = False,
                     storage_options: dict | None = None) -> tuple[DatasetIndex, LabelStore]:
    """(index, store) for replaying `labels` over the folder `data`, after every check a training run needs.

    `with_gt_prob`: the run needs the ground-truth probabilities (e.g. calibration); the
    store must have them. What the chosen recovery needs is checked by `store_targets`.
    `storage_options`: fsspec's options for a `labels` URL.

    Raises:
        StoreMismatchError: the store was made for another folder (the message names the difference).
        LabelStoreError: the store is missing, damaged or incomplete, or lacks labels/gt_prob.
        CropPlanError: `num_crops` exceeds the crops stored per image.
    """
    need = StoreNeeds(fields=frozenset({CropField.GT_PROB}) if with_gt_prob else frozenset())
    store, index = open_checked_store(labels, need, data=data, storage_options=storage_options)
    pass_slots(0, num_crops, store.crops_per_image)  # num_crops <= M, with an explanation
    return index, store  # type: ignore[return-value]


class FkdLoader:
    """Training crops with dense soft targets, pass by pass; see `create_loader`.

    Args:
        batches: the batch loader (`ReplayLoader` of a store's or fresh crops, `VanillaLoader`,
            `SyntheticLoader`).
        targets: batch -> (B, C) targets on the device.
        num_classes: C, the width of the targets (the student's outputs).
        temperature: the soft cross-entropy's temperature that goes with these targets.
    """

    def __init__(self, batches: BatchLoader, targets: TargetFn, num_classes: int, temperature: float = 1.0) -> None:
        self.batches = batches
        self.targets = targets
        self.num_classes = num_classes
        self.temperature = temperature
        self.pass_idx, self.step = 0, 0

    @property
    def device(self) -> torch.device:
        """Where images and targets are delivered (and, on a GPU, decoded)."""
        return self.batches.device

    @property
    def steps_per_pass(self) -> int:
        return self.batches.steps_per_pass

    @property
    def images_skipped(self) -> dict[int, str]:
        """Images this process left out of the run (`skip_corrupt`): image id -> why."""
        guard = getattr(self.batches, "guard", None)
        return dict(guard.dropped) if guard is not None else {}

    def __len__(self) -> int:
        """Steps in one pass (the same on every rank)."""
        return self.batches.steps_per_pass

    @property
    def position(self) -> tuple[int, int]:
        """(pass, steps of it done): save this with your checkpoint and give it to `set_pass` to resume."""
        return self.pass_idx, self.step

    def set_pass(self, pass_idx: int, step: int = 0) -> None:
        """Make the next iteration run pass `pass_idx` from step `step` (earlier steps are not decoded)."""
        if pass_idx < 0 or not 0 <= step <= len(self):
            raise ConfigError(f"set_pass({pass_idx}, {step}): need pass >= 0 and 0 <= step <= {len(self)}")
        self.pass_idx, self.step = pass_idx, step

    def batch(self, crops: CropBatch) -> FkdBatch:
        """The targets of one batch of crops."""
        fields = crops.fields
        return FkdBatch(crops.images, self.targets(crops), crops.meta, fields.get("gt_prob"), fields.get("gt_class"))

    def pass_batches(self, pass_idx: int, start_step: int = 0) -> Iterator[FkdBatch]:
        """The batches of pass `pass_idx` from step `start_step`, independent of `position` (the training loop's view)."""
        for crops in self.batches.pass_batches(pass_idx, start_step):
            yield self.batch(crops)

    def __iter__(self) -> Iterator[FkdBatch]:
        if self.step >= len(self):
            self.pass_idx, self.step = self.pass_idx + 1, 0
        for crops in self.batches.pass_batches(self.pass_idx, self.step):
            self.step += 1
            yield self.batch(crops)
        self.pass_idx, self.step = self.pass_idx + 1, 0

    def close(self) -> None:
        self.batches.close()

    def __enter__(self) -> FkdLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def replay_loader(index: DatasetIndex, store: LabelStore, num_crops: int, batch_size: int, image_size: int,
                  device: torch.device, recovery: Recovery, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD, interpolation: str = INTERPOLATION, seed: int = 0,
                  rank: int = 0, world: int = 1, threads: int | None = None, with_gt_prob: bool = False,
                  temperature: float | None = None, color_jitter: float = 0.0, read_threads: int = 1,
                  prefetch_tables: bool = True, verify_images: bool = True,
                  skip_corrupt: bool = False) -> FkdLoader:
    """The replay of an opened, checked store (`open_replay_data`) for one process: what `fkd-dali train`
    and `create_loader` both run. Arguments as `create_loader`; `batch_size` is this process's crops per step."""
    plan = store_targets(store, recovery, temperature, with_gt_prob)
    guard = image_guard(index, store, verify_images, skip_corrupt)
    source = StoreCrops(store, index.sizes, plan.fields, prefetch=prefetch_tables)
    replay = ReplayLoader(source, index, num_crops, batch_size, image_size, mean, std, interpolation, seed=seed,
                          rank=rank, world=world, device=device, threads=threads, color_jitter=color_jitter,
                          read_threads=read_threads, guard=guard)
    check_fills_a_step(replay, len(index), world)
    return FkdLoader(replay, plan.targets, store.spec.label.num_classes, plan.temperature)


def image_guard(index: DatasetIndex, store: LabelStore, verify: bool, skip: bool) -> ImageGuard:
    """The replay's check of the files against the store's digests, files with a changed mtime checked now.

    Raises:
        ImageError: a file whose modification time changed has another content (unless `skip`).
    """
    guard = ImageGuard(index, store.url, verify=verify, skip=skip)
    if verify and index.digests is None:
        _log.info("store %s records no file digests (made by an older fkd-dali): the images are not checked "
                  "against the files it was labelled on; regenerating it adds the check", store.url)
    guard.check_stale(read_encoded)
    return guard


def check_fills_a_step(loader: BatchLoader, n_images: int, world: int) -> None:
    """Refuse (closing `loader`) a dataset too small for one step of every process."""
    if loader.steps_per_pass >= 1:
        return
    loader.close()
    per_step = getattr(loader, "images_per_step", None) or getattr(loader, "batch_size", 0)
    raise ConfigError(f"{n_images} images over {world} process(es) do not fill one step of {per_step} images "
                      "per process: lower the batch size (--batch-size; batch_size of create_loader)")


def _process_place(rank: int | None, world: int | None) -> tuple[int, int]:
    """(rank, world): given values win, then an initialised torch.distributed group, else one process."""
    import torch.distributed as dist

    if rank is not None and world is not None:
        return rank, world
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def create_loader(data: str, labels: str | LabelStore, num_crops: int = 4, batch_size: int = 256,
                  image_size: int = 224, device: torch.device | str = "auto",
                  recovery: str = RECOVERY, recovery_k: int | None = None, smoothing: float = SMOOTHING,
                  mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                  interpolation: str = INTERPOLATION, seed: int = 0, threads: int | None = None,
                  rank: int | None = None, world: int | None = None, with_gt_prob: bool = False,
                  temperature: float | None = None, verify_images: bool = True,
                  skip_corrupt: bool = False) -> FkdLoader:
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
        verify_images: check each file, the first time it is read, against the crc32c the
            store recorded at labelling (stores of older releases have none); files whose
            modification time changed are checked before the first batch.
        skip_corrupt: leave an image that fails (changed, unreadable, undecodable) out of
            the run instead of raising (`loader.images_skipped` lists them).

    Returns:
        An `FkdLoader`; `loader.device`, `loader.num_classes` (the student's outputs) and
        `loader.temperature` (for `SoftTargetCrossEntropy`) say what the loop needs.

    Raises:
        FkdError subclasses, as `open_replay_data` and `store_targets`, and `ConfigError` for
        a batch that is not a multiple of m or does not fit the images of one rank.
    """
    from fkd_dali.dist import dist_env, pick_device

    index, store = open_replay_data(data, labels, num_crops, with_gt_prob)
    if temperature is not None and store.spec.label.kind is not LabelKind.LOGITS:
        raise ConfigError(f"temperature={temperature}: store {store.url} holds probabilities already softened at "
                          f"its temperature {store.spec.label.temperature}; the argument applies to logits stores "
                          "only (soften the student with SoftTargetCrossEntropy(temperature=...))")
    rank, world = _process_place(rank, world)
    if isinstance(device, str) and device in DEVICE_CHOICES:
        device = pick_device(device, dist_env().local_rank)
    return replay_loader(index, store, num_crops, batch_size, image_size, torch.device(device),
                         Recovery(recovery, recovery_k, smoothing), mean, std, interpolation, seed=seed, rank=rank,
                         world=world, threads=threads, with_gt_prob=with_gt_prob, temperature=temperature,
                         verify_images=verify_images, skip_corrupt=skip_corrupt)

"""What a training run reads: the dataset index, the checked label store and the training loader.

Every mode is one `FkdLoader` (batches + a target function): the store's replay built
exactly as `create_loader` builds it (FKD), DALI's random crops with folder classes
(vanilla), fresh crops of the replay graph labelled by the teacher in the loop (online
KD) or by pooling label maps over them (ReLabel), or the real loader's first batch
replayed as device tensors (`--synthetic`).
FKD mode takes the index from the store (`index_for_store`: the folder is only listed
and fingerprinted, no image header is read on any rank); the other modes index the folder.
"""
from __future__ import annotations

from typing import Any

import torch

from fkd_dali.config import TrainConfig
from fkd_dali.crops.boxes import CropDistribution
from fkd_dali.data.index import DatasetIndex, build_index
from fkd_dali.dist import DistEnv
from fkd_dali.errors import ConfigError
from fkd_dali.loaders.fkd_loader import FkdLoader, check_fills_a_step, open_replay_data, replay_loader
from fkd_dali.loaders.guard import ImageGuard
from fkd_dali.loaders.replay import ReplayLoader
from fkd_dali.loaders.sources import FreshCrops
from fkd_dali.loaders.targets import FolderTargets, TargetFn
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.schema import CropField, LabelKind
from fkd_dali.targets.recovery import Recovery


def open_training_data(cfg: TrainConfig) -> tuple[DatasetIndex, LabelStore | None]:
    """(index, store) of `--data` and `--labels` (store None in vanilla and online mode), after every store check.

    Raises:
        StoreMismatchError, LabelStoreError, CropPlanError, ConfigError: the store was
            made for another folder, is incomplete or damaged (`StoreDamageError`: chunk
            files missing), holds fewer than m crops per image, or lacks what `--calibrate`
            (`labels/gt_prob`) needs.
    """
    if cfg.vanilla or cfg.fresh_crops:
        return build_index(cfg.data), None
    index, store = open_replay_data(cfg.data, cfg.labels, cfg.num_crops, with_gt_prob=cfg.calibrate is not None,
                                    storage_options=cfg.storage_options)
    if store.spec.label.kind is LabelKind.LOGITS and cfg.val:
        raise ConfigError(f"--val: store {store.url} holds a self-supervised teacher's {store.spec.label.num_classes} "
                          "raw outputs, so the student's outputs are features, not classes: drop --val")
    return index, store


def make_train_loader(cfg: TrainConfig, env: DistEnv, device: torch.device, index: DatasetIndex,
                      store: LabelStore | None, dc: dict[str, Any], num_classes: int,
                      fresh_targets: TargetFn | None = None) -> FkdLoader:
    """This rank's loader of the run's mode (module docstring); `fresh_targets` labels fresh crops (online KD:
    the teacher; ReLabel: label maps pooled over each crop's box)."""
    from fkd_dali.loaders.vanilla import VanillaLoader

    per_rank = cfg.batch_size // env.world
    common = dict(seed=cfg.seed, rank=env.rank, world=env.world, threads=cfg.threads)
    pixels = dict(mean=dc["mean"], std=dc["std"], interpolation=dc["interpolation"])
    if store is not None:
        loader = replay_loader(index, store, cfg.num_crops, per_rank, dc["size"], device,
                               Recovery(cfg.recovery, cfg.recovery_k, cfg.smoothing), **pixels, **common,
                               with_gt_prob=cfg.calibrate is not None, temperature=cfg.temperature,
                               color_jitter=cfg.color_jitter, verify_images=cfg.verify_images,
                               skip_corrupt=cfg.skip_corrupt)
    elif cfg.vanilla:
        vanilla = VanillaLoader(index, per_rank, dc["size"], scale=cfg.scale, ratio=cfg.ratio, device=device,
                                **pixels, **common)
        check_fills_a_step(vanilla, len(index), env.world)
        loader = FkdLoader(vanilla, FolderTargets(num_classes), num_classes)
    else:  # fresh crops: labelled by the teacher (online KD) or by label maps (ReLabel, which needs the boxes)
        fields = {CropField.BOX} if cfg.relabel else set()
        source = FreshCrops(index.sizes, CropDistribution(tuple(cfg.scale), tuple(cfg.ratio), seed=cfg.seed), fields)
        fresh = ReplayLoader(source, index, cfg.num_crops, per_rank, dc["size"], device=device,
                             color_jitter=cfg.color_jitter, guard=ImageGuard(index, cfg.data, verify=False,
                                                                             skip=cfg.skip_corrupt),
                             **pixels, **common)
        check_fills_a_step(fresh, len(index), env.world)
        loader = FkdLoader(fresh, fresh_targets, num_classes,  # type: ignore[arg-type]
                           getattr(fresh_targets, "temperature", 1.0))
    return synthetic_loader(loader, cfg.seed + env.rank) if cfg.synthetic else loader


def synthetic_loader(loader: FkdLoader, seed: int) -> FkdLoader:
    """`loader`'s first batch of crops (its shapes and fields) replayed as device tensors every step."""
    from fkd_dali.loaders.synthetic import SyntheticLoader

    steps = loader.steps_per_pass
    first = next(iter(loader.batches.pass_batches(0)))
    loader.close()
    return FkdLoader(SyntheticLoader(first, steps, seed), loader.targets, loader.num_classes, loader.temperature)

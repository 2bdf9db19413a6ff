"""What a training run reads: the dataset index, the checked label store and the training loader.

FKD mode takes the index from the store (`index_for_store`: the folder is only listed
and fingerprinted, no image header is read on any rank); vanilla and online-KD modes
have no store and index the folder.
"""
from __future__ import annotations

from typing import Any

import torch

from fkd_dali.config import TrainConfig
from fkd_dali.data.index import DatasetIndex, build_index
from fkd_dali.dist import DistEnv
from fkd_dali.errors import ConfigError
from fkd_dali.loaders.fkd_loader import open_replay_data
from fkd_dali.store.label_store import LabelStore


def open_training_data(cfg: TrainConfig) -> tuple[DatasetIndex, LabelStore | None]:
    """(index, store) of `--data` and `--labels` (store None in vanilla and online mode), after every store check.

    Raises:
        StoreMismatchError, LabelStoreError, CropPlanError, ConfigError: the store was
            made for another folder, is incomplete or damaged (`StoreDamageError`: chunk
            files missing), holds fewer than m crops per image, or lacks what `--recovery`
            or `--calibrate` (`labels/gt_prob`) needs.
    """
    if cfg.vanilla or cfg.online:
        return build_index(cfg.data), None
    index, store = open_replay_data(cfg.data, cfg.labels, cfg.num_crops, cfg.recovery, cfg.recovery_k,
                                    cfg.smoothing, with_gt_prob=cfg.calibrate is not None,
                                    temperature=cfg.temperature)
    if store.spec.label.kind == "logits" and cfg.val:
        raise ConfigError(f"--val: store {store.url} holds a self-supervised teacher's {store.spec.label.num_classes} "
                          "raw outputs, so the student's outputs are features, not classes: drop --val")
    return index, store


def make_train_loader(cfg: TrainConfig, env: DistEnv, device: torch.device, index: DatasetIndex,
                      store: LabelStore | None, dc: dict[str, Any], num_classes: int) -> Any:
    """This rank's loader: replayed crops (FKD), random crops (vanilla), fresh crops of the replay
    graph (online KD), or device tensors (`--synthetic`)."""
    from fkd_dali.loaders.online import FreshCropLoader
    from fkd_dali.loaders.replay import ReplayLoader
    from fkd_dali.loaders.synthetic import SyntheticLoader
    from fkd_dali.loaders.vanilla import VanillaLoader

    per_rank = cfg.batch_size // env.world
    common = dict(size=dc["size"], mean=dc["mean"], std=dc["std"], interpolation=dc["interpolation"], seed=cfg.seed,
                  rank=env.rank, world=env.world, device=device, threads=cfg.threads)
    if cfg.vanilla:
        loader = VanillaLoader(index, per_rank, scale=cfg.scale, ratio=cfg.ratio, **common)
    elif cfg.online:
        loader = FreshCropLoader(index, cfg.num_crops, per_rank, scale=cfg.scale, ratio=cfg.ratio,
                                 color_jitter=cfg.color_jitter, **common)
    else:
        loader = ReplayLoader(store, index, cfg.num_crops, per_rank, color_jitter=cfg.color_jitter,
                              **replay_label_options(cfg), **common)
    if loader.steps_per_pass < 1:
        raise ConfigError(f"{len(index)} images over {env.world} rank(s) do not fill one step of "
                          f"{per_rank // cfg.m} images per rank: lower --batch-size")
    if cfg.synthetic:
        steps = loader.steps_per_pass
        loader.close()
        k = None if store is None else store.spec.label.k
        loader = SyntheticLoader(per_rank, dc["size"], steps, num_classes, k, device, half=device.type == "cuda",
                                 seed=cfg.seed + env.rank, full=cfg.recovery == "full" and store is not None)
    return loader


def replay_label_options(cfg: TrainConfig) -> dict[str, bool]:
    """What the replay loader gathers per crop besides its top-K labels: the dense labels of a
    "full" store (`--recovery full`) and, for `--calibrate`, the teacher's ground-truth probability
    and class (`labels/gt_prob`, `ReplayBatch.gt_prob`/`.gt_class`)."""
    return {"with_full": cfg.recovery == "full", "with_gt_prob": cfg.calibrate is not None}

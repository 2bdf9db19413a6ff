"""What a training run reads: the dataset index, the checked label store and the training loader.

FKD mode takes the index from the store (`index_for_store`: the folder is only listed
and fingerprinted, no image header is read on any rank); vanilla and online-KD modes
have no store and index the folder.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fkd_dali.config import check_recovery
from fkd_dali.crops.plan import pass_slots
from fkd_dali.data.index import DatasetIndex, build_index
from fkd_dali.dist import DistEnv
from fkd_dali.errors import ConfigError
from fkd_dali.store.label_store import LabelStore, index_for_store, open_store

if TYPE_CHECKING:
    from fkd_dali.config import TrainConfig


def open_training_data(cfg: TrainConfig) -> tuple[DatasetIndex, LabelStore | None]:
    """(index, store) of `--data` and `--labels` (store None in vanilla and online mode), after every store check.

    Raises:
        StoreMismatchError, LabelStoreError, CropPlanError, ConfigError: the store was
            made for another folder, is incomplete, holds fewer than m crops per image,
            or lacks what `--recovery` needs.
    """
    if cfg.vanilla or cfg.online:
        return build_index(cfg.data), None
    store = open_store(cfg.labels)
    index = index_for_store(store, cfg.data)
    store.check_complete()
    pass_slots(0, cfg.num_crops, store.crops_per_image)  # --num-crops <= M, with an explanation
    check_recovery(cfg.recovery, cfg.recovery_k, stored_k=store.spec.label.k, smoothing=cfg.smoothing)
    if cfg.recovery == "full" and store.spec.label.kind != "full":
        raise ConfigError(f"--recovery full needs a store with dense labels; {store.url} holds top-"
                          f"{store.spec.label.k} only: pick another --recovery or regenerate with --full")
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
        loader = ReplayLoader(store, index, cfg.num_crops, per_rank, with_full=cfg.recovery == "full",
                              color_jitter=cfg.color_jitter, **common)
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


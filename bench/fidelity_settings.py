"""The two settings of `bench fidelity`: what it measures on (images, store, teacher, ReLabel maps).

- photos: the bench corpus (or `--data`), a store made for it with `bench.labels`, and
  ReLabel maps at 15x15 and at the teacher's own side;
- scenes: `bench accuracy`'s train scenes and the teacher, store and label maps its
  `make_assets` builds (or reuses) under the scene folder.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fkd_dali.errors import ConfigError
from fkd_dali.interop.relabel_maps import CNN_STRIDE as STRIDE
from fkd_dali.interop.relabel_maps import MAP_SIZE

from .corpus import prepare_dataset
from .labels import write_relabel_maps, write_store_labels

if TYPE_CHECKING:
    from fkd_dali.data.index import DatasetIndex
    from fkd_dali.labels.teacher import Teacher

    from .bench_fidelity import FidelityBenchConfig


@dataclass
class Setting:
    """What one setting measures: the images, their store, the teacher, its ReLabel maps by side."""

    index: DatasetIndex
    dataset: dict  # its description for the JSON
    store: str
    store_info: dict
    teacher: Teacher
    maps: dict[int, torch.Tensor]  # map side -> (n_images, 2, K, S, S)
    slots: int  # stored crops measured per image
    notes: list[str]


def photo_setting(cfg: FidelityBenchConfig, device: torch.device) -> Setting:
    """The corpus (or `--data`), a store of M = ceil(crops / images) made for it, maps at 15x15 and native."""
    from fkd_dali.labels.teacher import load_teacher

    index, dataset = prepare_dataset(cfg.data, cfg.corpus_images, cfg.corpus_seed, cfg.assets_dir, cfg.progress)
    m = math.ceil(cfg.crops / len(index))
    fp = index.fingerprint[:8]
    info, store = write_store_labels(index, cfg.assets_dir / f"store-{fp}-M{m}-K{cfg.top_k}", cfg.teacher,
                                     cfg.checkpoint, m, cfg.top_k, cfg.seed, str(device), cfg.threads,
                                     progress=cfg.progress)
    teacher = load_teacher(cfg.teacher, cfg.checkpoint)
    native = teacher.input_size[-1] // STRIDE  # map side at the teacher's own resolution
    roots = {MAP_SIZE: cfg.assets_dir / f"relabel-maps-{fp}-K{cfg.top_k}",  # the folder `bench store` writes
             native: cfg.assets_dir / f"relabel-maps-{fp}-K{cfg.top_k}-S{native}"}
    for size, root in roots.items():
        write_relabel_maps(index, root, teacher, cfg.top_k, map_size=size, progress=cfg.progress)
    if dataset["corpus"] is not None:
        dataset["source_photos"] = dataset["n_classes"]  # one class folder per source photo
    notes = [f"images: {len(index)} JPEGs" + (f" cut from {dataset['n_classes']} source photos (bench.corpus)"
                                             if dataset["corpus"] is not None else f" of {index.root}")]
    return Setting(index, dataset, store, {**asdict(info), "crops_per_image": m}, teacher,
                   {size: read_maps(index, root) for size, root in roots.items()}, m, notes)


def scene_setting(cfg: FidelityBenchConfig, device: torch.device) -> Setting:
    """`bench accuracy`'s train split, teacher, store and label maps, made by its `make_assets` (reused when built)."""
    from fkd_dali.data.index import build_index
    from fkd_dali.interop.relabel_maps import load_label_maps
    from fkd_dali.labels.teacher import load_teacher

    from .bench_accuracy import AccuracyConfig, make_assets
    from .scenes import MANIFEST, load_scenes

    default = AccuracyConfig()
    root = Path(cfg.scenes_root) if cfg.scenes_root else default.root
    if not (root / MANIFEST).is_file():
        raise ConfigError(f"--scenes-root {root}: no scenes there; build them, their teacher, store and maps "
                          f"with `fkd-dali bench accuracy --assets {root.parent}`")
    acc = AccuracyConfig(scenes=load_scenes(root).config, assets=str(root.parent), top_k=cfg.top_k,
                         device=str(device), threads=cfg.threads)
    if acc.root != root:
        raise ConfigError(f"--scenes-root {root} is not a folder `bench accuracy` names ({acc.root.name} for its "
                          "scenes): pass the folder bench accuracy made")
    assets = make_assets(acc)
    index = build_index(assets.scenes.split_root("train"))
    classes = acc.scenes.classes
    teacher = load_teacher(assets.teacher.recipe.arch, assets.teacher.checkpoint, classes)
    maps = load_label_maps(assets.maps, index.paths, index.fingerprint)
    dataset = {"root": index.root, "n_images": len(index), "n_classes": classes, "scenes": asdict(acc.scenes),
               "fingerprint": index.fingerprint}
    store_info = {"teacher": assets.teacher.recipe.arch, "teacher_test_top1": assets.teacher.test_top1,
                  "crops_per_image": acc.crops_per_image, "top_k": acc.top_k}
    notes = [f"images: the {len(index)} train scenes of {root} ({classes} classes, {acc.scenes.size} px); teacher "
             f"{assets.teacher.recipe.arch} trained on the teacher split at {teacher.input_size[-1]} px "
             f"({assets.teacher.test_top1:.1f}% top-1 on the test split); ReLabel maps as bench accuracy's (b) uses "
             f"them: {maps.info.map_size}x{maps.info.map_size} from the whole image at {maps.info.input_size} px"]
    return Setting(index, dataset, assets.store, store_info, teacher,
                   {maps.info.map_size: maps.of_images(torch.arange(len(index)), torch.device("cpu"))},
                   math.ceil(cfg.crops / len(index)), notes)


def read_maps(index: DatasetIndex, maps_root: Path) -> torch.Tensor:
    """(n_images, 2, K, S, S): every image's label map from a folder of `<class>/<stem>.pt` files."""
    from fkd_dali.interop.relabel_maps import label_map_path, read_label_map

    return torch.stack([read_label_map(label_map_path(maps_root, index.paths[i])) for i in range(len(index))])

"""Shared fixtures: a tiny real-photo dataset and a store labelled by the real teacher.

Session-scoped because label generation with the real teacher takes seconds on CPU;
tests that modify a store must copy it first (`copy_store`).
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=UserWarning, module="zarr")
os.environ.setdefault("OMP_NUM_THREADS", "2")


def has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; skipped on CPU-only machines")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def photo_root(tmp_path_factory) -> Path:
    """7 classes x 3 real-photo JPEGs (one PNG, one CMYK, one grayscale class)."""
    from fkd_dali.data.sample_data import build_photo_dataset

    return build_photo_dataset(tmp_path_factory.mktemp("photos") / "train", images_per_class=3, seed=0)


@pytest.fixture(scope="session")
def photo_index(photo_root):
    from fkd_dali.data.index import build_index

    return build_index(photo_root)


@pytest.fixture(scope="session")
def small_store(photo_root, tmp_path_factory) -> Path:
    """M=8 crops per image, K=5, labelled by the real efficientnet_lite0 teacher."""
    from fkd_dali.config import LabelGenConfig
    from fkd_dali.labels.generate import generate_labels

    out = tmp_path_factory.mktemp("stores") / "small.zarr"
    generate_labels(LabelGenConfig(data=str(photo_root), out=str(out), crops_per_image=8, top_k=5,
                                   batch_size=64, crops_per_round=8, images_per_chunk=8, slots_per_chunk=4,
                                   threads=2, progress=False))
    return out


@pytest.fixture
def one_torch_thread():
    """2 shared cores: one intra-op torch thread beside DALI's threads runs several times faster than two."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def copy_store(tmp_path):
    def copy(src: Path) -> Path:
        dst = tmp_path / Path(src).name
        shutil.copytree(src, dst)
        return dst

    return copy


def tiny_train_config(photo_root, store, out, **kw):
    """resnet10t at 64 px, m=4, 8 crops per step (21 photos give 10 steps per pass); `kw` overrides any field."""
    from fkd_dali.config import TrainConfig

    base = dict(data=str(photo_root), labels=str(store), arch="resnet10t", output=str(out), epochs=8, num_crops=4,
                batch_size=8, lr=2e-3, opt="adamw", weight_decay=0.01, warmup_epochs=0.0, image_size=64,
                threads=2, log_interval=1, progress=False, seed=3)
    return TrainConfig(**{**base, **kw})


def random_teacher(path: Path, num_classes: int = 1000) -> Path:
    """Save the weights of a seeded random resnet10t with `num_classes` outputs (a teacher with a local file)."""
    import timm
    import torch

    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t", num_classes=num_classes).state_dict(), path)
    return path


@pytest.fixture
def captured_fit(monkeypatch):
    """`fkd-dali train` without training: the TrainConfig each call of `fit` got (the CLI's view of a run)."""
    import fkd_dali.train.loop as loop
    from fkd_dali.train.loop import TrainResult

    seen = []

    def fake_fit(cfg):
        seen.append(cfg)
        return TrainResult(passes=0, steps=0, final_loss=0.0, images_per_s=0.0, crops_per_s=0.0, history=[])

    monkeypatch.setattr(loop, "fit", fake_fit)
    return seen

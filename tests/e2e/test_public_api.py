"""The public API (`fkd_dali.create_loader`, `SoftTargetCrossEntropy`, `open_store`) and the example loop."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fkd_dali
from fkd_dali.errors import ConfigError, CropPlanError, StoreMismatchError
from fkd_dali.targets.recovery import recover_labels

REPO = Path(__file__).resolve().parents[2]


def test_create_loader_yields_the_stored_labels_as_dense_targets(photo_root, small_store, one_torch_thread):
    store = fkd_dali.open_store(str(small_store))
    with fkd_dali.create_loader(str(photo_root), str(small_store), num_crops=4, batch_size=8, image_size=32,
                                device="cpu", recovery="marginal_smoothing", threads=1) as loader:
        assert len(loader) == store.n_images // 2  # 2 images of 4 crops per step
        batches = list(loader)
        assert len(batches) == len(loader) and loader.position == (1, 0)
        labels = store.read_images(0, store.n_images)
        for batch in batches:
            images, target = batch
            assert images.shape == (8, 3, 32, 32) and target.shape == (8, 1000)
            ids, slots = batch.meta[:, 0].numpy(), batch.meta[:, 1].numpy()
            assert set(slots.tolist()) == {0, 1, 2, 3}  # pass 0 uses slots 0..3
            want = recover_labels(torch.from_numpy(labels.index[ids, slots].astype(np.int64)),
                                  torch.from_numpy(labels.prob[ids, slots].astype(np.float32)), 1000)
            torch.testing.assert_close(target, want)
            assert torch.allclose(target.sum(1), torch.ones(8), atol=1e-3)


def test_set_pass_resumes_at_the_same_batch(photo_root, small_store, one_torch_thread):
    kw = dict(num_crops=4, batch_size=8, image_size=32, device="cpu", threads=1)
    with fkd_dali.create_loader(str(photo_root), str(small_store), **kw) as loader:
        list(loader)  # pass 0
        straight = [b for _, b in zip(range(4), loader)]  # pass 1, steps 0..3
    with fkd_dali.create_loader(str(photo_root), str(small_store), **kw) as loader:
        loader.set_pass(1, 3)
        resumed = next(iter(loader))
        assert loader.position == (1, 4)
    torch.testing.assert_close(resumed.images, straight[3].images)
    torch.testing.assert_close(resumed.target, straight[3].target)
    assert torch.equal(resumed.meta, straight[3].meta)


def test_rank_and_world_split_the_images(photo_root, small_store, one_torch_thread):
    kw = dict(num_crops=4, batch_size=8, image_size=32, device="cpu", threads=1, world=2)
    seen = []
    for rank in (0, 1):
        with fkd_dali.create_loader(str(photo_root), str(small_store), rank=rank, **kw) as loader:
            seen.append({int(i) for b in loader for i in b.meta[:, 0]})
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1])


@pytest.mark.parametrize("kw, error, match", [
    ({"num_crops": 9}, CropPlanError, "stored per image M=8"),
    ({"batch_size": 6}, ConfigError, "multiple of the 4 crops per image"),
    ({"batch_size": 400}, ConfigError, "lower the batch size"),
    ({"recovery": "full"}, ConfigError, "dense labels"),
    ({"recovery_k": 6}, ConfigError, "exceeds the store's top-K=5"),
])
def test_create_loader_refuses_what_does_not_fit(photo_root, small_store, kw, error, match):
    args = dict(num_crops=4, batch_size=8, image_size=32, device="cpu", threads=1) | kw
    with pytest.raises(error, match=match):
        fkd_dali.create_loader(str(photo_root), str(small_store), **args)


def test_create_loader_checks_the_folder(tmp_path, small_store):
    from fkd_dali.data.sample_data import build_photo_dataset

    other = build_photo_dataset(tmp_path / "other", images_per_class=2, seed=3)
    with pytest.raises(StoreMismatchError, match="another dataset"):
        fkd_dali.create_loader(str(other), str(small_store), batch_size=8, device="cpu")


def test_soft_target_cross_entropy_matches_the_formula():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    target = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.25, 0.75]])
    for t in (1.0, 2.0):
        logp = torch.log_softmax(logits / t, dim=1)
        want = (-(target * logp).sum(1) * t * t).mean()
        torch.testing.assert_close(fkd_dali.SoftTargetCrossEntropy(t)(logits, target), want)
    with pytest.raises(ConfigError):
        fkd_dali.SoftTargetCrossEntropy(0.0)


@pytest.mark.slow
def test_example_loop_trains_on_cpu(photo_root, small_store, tmp_path):
    out = tmp_path / "own.pth"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "examples" / "train_own_loop.py"), "--data", str(photo_root),
                           "--labels", str(small_store), "--arch", "resnet10t", "--passes", "2", "--batch-size", "8",
                           "--image-size", "32", "--device", "cpu", "--lr", "0.01", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("pass ")]
    assert [line.split(":")[0] for line in lines] == ["pass 0", "pass 1"]
    assert all(np.isfinite(float(line.split()[-1])) for line in lines)
    saved = torch.load(out, weights_only=True)
    assert tuple(saved["position"]) == (2, 0) and "fc.weight" in saved["model"]


def test_fkd_dali_train_and_create_loader_run_one_replay_path(photo_root, small_store, tmp_path, one_torch_thread):
    """The loader `fkd-dali train` builds and `create_loader` give the same crops, targets and order."""
    from fkd_dali.dist import DistEnv
    from fkd_dali.train.loop import build_run

    from ..conftest import tiny_train_config

    cfg = tiny_train_config(photo_root, small_store, tmp_path / "run", recovery_k=3, threads=1)
    run = build_run(cfg, DistEnv(0, 1, 0), torch.device("cpu"))
    dc = run.data_config
    public = fkd_dali.create_loader(str(photo_root), str(small_store), num_crops=cfg.num_crops,
                                    batch_size=cfg.batch_size, image_size=dc["size"], device="cpu",
                                    recovery_k=3, mean=dc["mean"], std=dc["std"], interpolation=dc["interpolation"],
                                    seed=cfg.seed, threads=1)
    try:
        assert type(run.loader) is type(public) and len(run.loader) == len(public)
        assert run.loader.temperature == public.temperature and run.loader.num_classes == public.num_classes
        public.set_pass(1, 2)
        trained = run.loader.pass_batches(1, 2)
        for ours, theirs in zip(trained, public):
            assert torch.equal(ours.meta, theirs.meta)
            assert torch.equal(ours.images, theirs.images)
            assert torch.equal(ours.target, theirs.target)
    finally:
        run.loader.close()
        public.close()

"""Online KD (`--labels online`) on CPU: fresh counter-based crops through the replay graph, the teacher's
labels recovered like stored ones, training, an exact resume, and the errors that name their flag."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fkd_dali.config import TrainConfig
from fkd_dali.crops.boxes import CropDistribution, roi_corners, sample_crops
from fkd_dali.errors import CheckpointError, ConfigError, TeacherError
from fkd_dali.labels.teacher import load_teacher
from fkd_dali.loaders.replay import ReplayLoader
from fkd_dali.loaders.sources import FreshCrops, StoreCrops
from fkd_dali.store.opening import open_store
from fkd_dali.train.checkpoint import load_checkpoint
from fkd_dali.train.loop import fit
from fkd_dali.train.online import OnlineTeacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def cfg(photo_root, out, **kw) -> TrainConfig:
    base = dict(data=str(photo_root), labels="online", teacher="efficientnet_lite0", arch="resnet10t",
                output=str(out), epochs=8, num_crops=4, batch_size=8, lr=2e-3, opt="adamw", warmup_epochs=0.0,
                image_size=64, threads=2, log_interval=1, progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def fresh(photo_index, **kw) -> ReplayLoader:
    return ReplayLoader(FreshCrops(photo_index.sizes, CropDistribution(seed=5)), photo_index, m=2, batch_size=4,
                        size=32, mean=MEAN, std=STD, seed=5, threads=1, **kw)


def test_fresh_crops_are_the_counter_based_boxes_of_each_pass(photo_index):
    loader = fresh(photo_index)
    try:
        for p in (0, 1, 7):
            table = loader.table(p)
            assert table.slots.tolist() == [2 * p, 2 * p + 1]  # never wrapping: fresh crops every pass
            boxes, flips = sample_crops(photo_index.sizes[table.images], table.images, table.slots,
                                        CropDistribution(seed=5))
            assert np.array_equal(table.rois, roi_corners(boxes)) and np.array_equal(table.flips, flips)
        assert not np.array_equal(loader.table(0).rois, loader.table(1).rois)
        first = [b.images.clone() for b in loader.pass_batches(1)]
        assert len(first) == loader.steps_per_pass == len(photo_index) // 2
        assert all(b.fields == {} for b in loader.pass_batches(1, start_step=8))  # no labels: the teacher gives them
        resumed = [b.images for b in loader.pass_batches(1, start_step=3)]
        assert all(torch.equal(a, b) for a, b in zip(first[3:], resumed)) and len(resumed) == len(first) - 3
    finally:
        loader.close()


def test_teacher_pixels_undo_the_students_normalization_and_apply_the_teachers():
    teacher = load_teacher("efficientnet_lite0")
    same_size = {"size": teacher.input_size[-1], "mean": MEAN, "std": STD}
    online = OnlineTeacher(teacher, same_size, torch.device("cpu"), None, "marginal_smoothing", 5, 0.1, 1.0)
    pixels = torch.rand(2, 3, 224, 224)  # in [0, 1]
    student = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    expected = (pixels - torch.tensor(teacher.mean).view(1, 3, 1, 1)) / torch.tensor(teacher.std).view(1, 3, 1, 1)
    assert torch.allclose(online.teacher_pixels(student), expected, atol=1e-5)
    small = OnlineTeacher(teacher, {**same_size, "size": 112}, torch.device("cpu"), None, "hard", 5, 0.1, 1.0)
    flat = torch.full((1, 3, 112, 112), 0.25)  # a constant image stays constant when resized
    out = small.teacher_pixels((flat - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    assert out.shape == (1, 3, 224, 224)
    want = (0.25 - torch.tensor(teacher.mean)) / torch.tensor(teacher.std)
    assert torch.allclose(out[0, :, 100, 50], want, atol=1e-5)


def test_online_labels_of_stored_crops_reproduce_the_stored_labels(photo_index, small_store):
    """At the teacher's own size and normalization the online teacher sees label generation's pixels:
    its top-5 on replayed crops is the store's top-5 (probabilities up to float16 storage)."""
    teacher = load_teacher("efficientnet_lite0")
    store = open_store(str(small_store))
    replay = ReplayLoader(StoreCrops(store, photo_index.sizes), photo_index, m=4, batch_size=8, size=224,
                          mean=teacher.mean, std=teacher.std, interpolation=teacher.interpolation, seed=0, threads=2)
    dc = {"size": 224, "mean": teacher.mean, "std": teacher.std}
    online = OnlineTeacher(teacher, dc, torch.device("cpu"), None, "marginal_renorm", 5, 0.1, 1.0)
    try:
        batch = next(iter(replay.pass_batches(0)))
    finally:
        replay.close()
    probs = online.probabilities(batch.images)
    top_p, top_i = probs.topk(5, dim=1)
    index, prob = batch.field("index"), batch.field("prob")
    assert torch.equal(top_i[:, 0], index[:, 0])
    assert (top_i == index).float().mean() > 0.95  # near-ties among low ranks may swap
    assert torch.allclose(top_p, prob, atol=2e-3)
    target = online(batch)
    assert torch.allclose(target.gather(1, top_i), top_p / top_p.sum(1, keepdim=True), atol=1e-6)


def test_online_kd_trains_checkpoints_and_resumes_exactly(photo_root, tmp_path, capsys):
    from fkd_dali.cli import main

    rc = main(["train", "--data", str(photo_root), "--labels", "online", "--teacher", "efficientnet_lite0",
               "--arch", "resnet10t", "--epochs", "8", "-m", "4", "-b", "8", "--image-size", "64", "--opt", "adamw",
               "--lr", "0.002", "--warmup-epochs", "0", "-j", "2", "--seed", "3", "--max-steps", "2", "--no-progress",
               "--output", str(tmp_path / "a")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    ckpt = load_checkpoint(str(tmp_path / "a" / "last.pth"))
    assert ckpt["mode"] == "online" and ckpt["num_classes"] == 1000 and ckpt["store_fingerprint"] is None
    assert ckpt["teacher_fingerprint"].startswith("efficientnet_lite0:5793442")
    resumed = fit(cfg(photo_root, tmp_path / "a", max_steps=3, resume=str(tmp_path / "a" / "last.pth")))
    straight = fit(cfg(photo_root, tmp_path / "b", max_steps=3))
    a, b = load_checkpoint(resumed.checkpoint)["model"], load_checkpoint(straight.checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_online_checkpoint_cannot_resume_with_stored_labels(photo_root, small_store, tmp_path):
    first = fit(cfg(photo_root, tmp_path / "a", max_steps=1))
    stored = dataclasses.replace(cfg(photo_root, tmp_path / "b"), labels=str(small_store), teacher=None,
                                 resume=first.checkpoint)
    with pytest.raises(CheckpointError, match=r"trained in online mode \(--labels online\); this run is in distill"):
        fit(stored)


@pytest.mark.parametrize("kw, match", [
    ({"teacher": None}, "--labels online needs --teacher"),
    ({"labels": "none"}, "--teacher only applies to --labels online"),
    ({"labels": "none", "teacher": None, "teacher_checkpoint": "t.pth"}, "--teacher-checkpoint only applies"),
])
def test_online_flags_are_checked_when_the_config_is_built(photo_root, tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        cfg(photo_root, tmp_path, **kw)


def test_unknown_online_teacher(photo_root, tmp_path):
    with pytest.raises(TeacherError, match="--teacher resnet50 needs --teacher-checkpoint"):
        fit(cfg(photo_root, tmp_path, teacher="resnet50"))


def test_online_top_k_fits_a_teacher_with_few_classes(photo_root, tmp_path):
    """A teacher of 4 classes: K defaults to 4 (not label generation's 5), an explicit larger K is one line."""
    from fkd_dali.train.online import online_top_k

    assert online_top_k(cfg(photo_root, tmp_path), 4) == 4
    assert online_top_k(cfg(photo_root, tmp_path), 1000) == 5
    assert online_top_k(cfg(photo_root, tmp_path, recovery_k=3), 4) == 3
    with pytest.raises(ConfigError, match="--recovery-k 6 exceeds the teacher's 4 classes"):
        online_top_k(cfg(photo_root, tmp_path, recovery_k=6), 4)

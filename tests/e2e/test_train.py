"""Training end to end on CPU: a tiny student learns the real teacher's labels, resume is exact,
SIGTERM checkpoints, vanilla / synthetic modes, eval, and every user error names its cause.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from fkd_dali.errors import CheckpointError, ConfigError, CropPlanError, LabelStoreError, StoreMismatchError
from fkd_dali.store.opening import open_store
from fkd_dali.store.schema import CHECKSUM_KEY, attrs_checksum
from fkd_dali.train.checkpoint import load_checkpoint, model_from_checkpoint
from fkd_dali.train.evaluate import resolve_class_map, teacher_agreement
from fkd_dali.train.loop import fit

from ..conftest import tiny_train_config

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


cfg = tiny_train_config


def test_a_tiny_student_learns_the_teachers_labels_on_held_out_crops(photo_root, small_store, tmp_path):
    """resnet10t at 96 px, m=2, 3 passes (slots 0-5 of M=8); slots 6 and 7 are never trained on."""
    result = fit(cfg(photo_root, small_store, tmp_path, num_crops=2, epochs=6, batch_size=4, image_size=96))
    losses = [h["loss"] for h in result.history]
    assert result.passes == 3 and result.steps == 3 * 10
    assert min(losses[1:]) < losses[0] - 1.0, f"loss did not go down: {losses}"
    store = open_store(str(small_store))
    student = model_from_checkpoint(load_checkpoint(result.checkpoint), result.checkpoint)
    agreement = teacher_agreement(student, store, photo_root, slots=[6, 7], size=96)
    import timm

    torch.manual_seed(0)
    untrained = timm.create_model("resnet10t", num_classes=1000)
    chance = teacher_agreement(untrained, store, photo_root, slots=[6, 7], size=96)
    assert agreement > 0.3 and agreement > 10 * chance, (agreement, chance)


def _record_batches(monkeypatch) -> list:
    from fkd_dali.loaders.replay import ReplayLoader

    seen: list = []
    real = ReplayLoader.pass_batches

    def recording(self, pass_idx, start_step=0):
        for step, batch in enumerate(real(self, pass_idx, start_step), start=start_step):
            seen.append((pass_idx, step, batch.meta.clone(), batch.field("index").clone(), batch.images.clone()))
            yield batch

    monkeypatch.setattr(ReplayLoader, "pass_batches", recording)
    return seen


def test_kill_and_resume_reproduces_the_next_batches_and_weights(photo_root, small_store, tmp_path, monkeypatch):
    seen = _record_batches(monkeypatch)
    stopped = fit(cfg(photo_root, small_store, tmp_path / "a", max_steps=3))
    assert stopped.steps == 3 and stopped.checkpoint
    ckpt = load_checkpoint(stopped.checkpoint)
    assert (ckpt["pass"], ckpt["step"], ckpt["global_step"]) == (0, 3, 3)
    del seen[:]
    resumed = fit(cfg(photo_root, small_store, tmp_path / "a", max_steps=5, resume=stopped.checkpoint))
    after_resume = list(seen)
    del seen[:]
    straight = fit(cfg(photo_root, small_store, tmp_path / "b", max_steps=5))
    assert resumed.steps == straight.steps == 5
    assert [(p, s) for p, s, *_ in after_resume] == [(0, 3), (0, 4)]
    for (p, s, meta, index, images), (p2, s2, meta2, index2, images2) in zip(after_resume, seen[3:5]):
        assert (p, s) == (p2, s2)
        assert torch.equal(meta, meta2) and torch.equal(index, index2) and torch.equal(images, images2)
    a = load_checkpoint(resumed.checkpoint)["model"]
    b = load_checkpoint(straight.checkpoint)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_outputs_config_metrics_and_checkpoint_contents(photo_root, small_store, tmp_path):
    result = fit(cfg(photo_root, small_store, tmp_path, epochs=4, log_interval=4, val=str(photo_root),
                     save_every_pass=True, sched="serrated"))
    assert result.passes == 1 and result.steps == 10 and result.images_per_s > 0
    conf = json.loads((tmp_path / "config.json").read_text())
    assert conf["config"]["arch"] == "resnet10t" and conf["resolved"]["steps_per_pass"] == 10
    assert conf["resolved"]["data_config"]["size"] == 64
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["kind"] == "step"]
    passes = [x for x in lines if x["kind"] == "pass"]
    assert [x["global_step"] for x in steps] == [4, 8, 10]
    assert {"loss", "lr", "images_per_s", "crops_per_s", "pass", "step"} <= set(steps[0])
    assert len(passes) == 1 and 0 <= passes[0]["val_top1"] <= passes[0]["val_top5"] <= 100
    ckpt = load_checkpoint(str(tmp_path / "last.pth"))
    assert (ckpt["pass"], ckpt["step"], ckpt["arch"], ckpt["num_crops"]) == (1, 0, "resnet10t", 4)
    assert {"model", "optimizer", "scheduler", "scaler", "seed", "store_fingerprint", "config"} <= set(ckpt)
    assert (tmp_path / "pass_000.pth").is_file()
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files


def test_vanilla_training_and_eval_cli(photo_root, tmp_path, capsys):
    from fkd_dali.cli import main

    result = fit(cfg(photo_root, "none", tmp_path, epochs=2, batch_size=8, val=str(photo_root)))
    assert result.passes == 2 and result.steps == 2 * 2  # 21 images // 8 per step
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["num_classes"] == 7 and ckpt["store_fingerprint"] is None and ckpt["mode"] == "vanilla"
    assert main(["eval", "--data", str(photo_root), "--checkpoint", result.checkpoint, "-j", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["images"] == 21 and 0 <= out["top1"] <= out["top5"] <= 100
    # --crop-pct (timm's flag) replaces the crop the run validated with, and only that
    from fkd_dali.train.evaluate import evaluate, model_from_checkpoint, validation_data

    model = model_from_checkpoint(ckpt, result.checkpoint)
    for pct in (ckpt["data_config"]["crop_pct"], 0.5):
        loader, cmap = validation_data(str(photo_root), {**ckpt["data_config"], "crop_pct": pct}, 7, None, 64, 2,
                                       "cpu")
        expected = evaluate(model, loader, cmap, "cpu")
        assert main(["eval", "--data", str(photo_root), "--checkpoint", result.checkpoint, "--crop-pct", str(pct)]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (out["top1"], out["top5"]) == pytest.approx((expected.top1, expected.top5), abs=1e-3), pct
    assert main(["eval", "--data", str(photo_root), "--checkpoint", result.checkpoint, "--crop-pct", "1.5"]) == 2
    assert "--crop-pct must be in (0, 1]" in capsys.readouterr().err


def test_eval_of_a_distilled_checkpoint_maps_wordnet_folders_to_imagenet(photo_root, small_store, tmp_path, capsys):
    from fkd_dali.cli import main

    result = fit(cfg(photo_root, small_store, tmp_path, max_steps=1))
    rc = main(["eval", "--data", str(photo_root), "--checkpoint", result.checkpoint, "--labels", str(small_store)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["images"] == 21


def test_synthetic_mode_runs_the_same_loop_without_data(photo_root, small_store, tmp_path):
    with pytest.warns(UserWarning, match="tensorboard"):
        result = fit(cfg(photo_root, small_store, tmp_path, synthetic=True, max_steps=3, tensorboard=True))
    assert result.steps == 3 and result.crops_per_s > 0


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_resume_continues(photo_root, small_store, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "fkd_dali", "train", "--data", str(photo_root), "--labels", str(small_store),
            "--arch", "resnet10t", "--epochs", "400", "-m", "4", "-b", "8", "--image-size", "64", "--opt", "adamw",
            "--lr", "0.002", "--warmup-epochs", "0", "-j", "2", "--log-interval", "1", "--no-progress",
            "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["interrupted"] is True
    ckpt = load_checkpoint(str(out / "last.pth"))
    done = ckpt["global_step"]
    assert done >= 2 and ckpt["pass"] * 10 + ckpt["step"] == done
    resume = args + ["--resume", str(out / "last.pth"), "--max-steps", str(done + 2)]
    finished = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert json.loads(finished.stdout.strip().splitlines()[-1])["steps"] == done + 2


# -- bad input -------------------------------------------------------------------------

def test_store_made_for_another_folder(photo_root, small_store, tmp_path):
    from fkd_dali.data.sample_data import build_photo_dataset

    other = build_photo_dataset(tmp_path / "other", images_per_class=2, seed=1)
    with pytest.raises(StoreMismatchError, match="another dataset"):
        fit(cfg(other, small_store, tmp_path / "out"))


def test_incomplete_store(photo_root, small_store, copy_store, tmp_path):
    broken = copy_store(small_store)
    zarr.open_group(str(broken), mode="r+")["progress/done"][1] = False
    with pytest.raises(LabelStoreError, match="incomplete"):
        fit(cfg(photo_root, broken, tmp_path / "out"))


def test_more_crops_per_pass_than_stored(photo_root, small_store, tmp_path):
    with pytest.raises(CropPlanError, match="--num-crops"):
        fit(cfg(photo_root, small_store, tmp_path, num_crops=9, batch_size=18))


@pytest.mark.parametrize("batch, m", [(10, 4), (6, 4), (3, 2)])
def test_batch_not_divisible_by_m_times_world(photo_root, small_store, tmp_path, batch, m):
    with pytest.raises(ConfigError, match="divisible by num_crops x processes"):
        fit(cfg(photo_root, small_store, tmp_path, batch_size=batch, num_crops=m))


def test_unknown_arch_lists_close_timm_names(photo_root, small_store, tmp_path):
    with pytest.raises(ConfigError, match="resnet10t"):
        fit(cfg(photo_root, small_store, tmp_path, arch="resnet10x"))


def test_fp16_needs_a_gpu(photo_root, small_store, tmp_path):
    with pytest.raises(ConfigError, match="fp16"):
        fit(cfg(photo_root, small_store, tmp_path, amp="fp16", device="cpu"))


@pytest.mark.parametrize("kw", [{"amp": "fp8"}, {"sched": "cosin"}, {"recovery": "soft"}, {"batch_size": 0}])
def test_bad_options_fail_when_the_config_is_built(photo_root, small_store, tmp_path, kw):
    with pytest.raises(ConfigError):
        cfg(photo_root, small_store, tmp_path, **kw)


def test_resume_from_another_model_or_store(photo_root, small_store, copy_store, tmp_path):
    first = fit(cfg(photo_root, small_store, tmp_path / "a", max_steps=1))
    with pytest.raises(CheckpointError, match="resnet10t"):
        fit(cfg(photo_root, small_store, tmp_path / "b", arch="mobilenetv3_small_050", resume=first.checkpoint))
    other = copy_store(small_store)
    group = zarr.open_group(str(other), mode="r+")
    meta = dict(group.attrs["fkd_dali"])
    meta["created"] = "2000-01-01T00:00:00+00:00"  # the same store regenerated later: same content
    meta["writer_version"] = "0.0.9"
    group.attrs.update({"fkd_dali": meta, CHECKSUM_KEY: attrs_checksum(meta)})
    again = fit(cfg(photo_root, other, tmp_path / "c", max_steps=2, resume=first.checkpoint))
    assert again.steps == 2
    meta["teacher"] = {**meta["teacher"], "checkpoint_sha256": "0" * 64}  # relabelled by another teacher
    group.attrs.update({"fkd_dali": meta, CHECKSUM_KEY: attrs_checksum(meta)})
    with pytest.raises(CheckpointError, match="another label store"):
        fit(cfg(photo_root, other, tmp_path / "c2", resume=first.checkpoint))
    with pytest.raises(CheckpointError, match="batch_size"):
        fit(cfg(photo_root, small_store, tmp_path / "d", batch_size=16, resume=first.checkpoint))
    with pytest.raises(CheckpointError, match="not an fkd-dali"):
        torch.save({"model": {}}, tmp_path / "foreign.pth")
        fit(cfg(photo_root, small_store, tmp_path / "e", resume=str(tmp_path / "foreign.pth")))


def test_cli_reports_user_errors_with_status_2(photo_root, small_store, tmp_path, capsys):
    from fkd_dali.cli import main

    rc = main(["train", "--data", str(photo_root), "--labels", str(small_store), "--arch", "resnet10t",
               "-m", "4", "-b", "10", "--output", str(tmp_path)])
    assert rc == 2
    assert "divisible" in capsys.readouterr().err


@pytest.mark.parametrize("names, num_classes, model_classes, expected", [
    (["n02123045", "n07920052"], 1000, None, [281, 967]),
    (["a", "b", "c"], 3, None, [0, 1, 2]),
    (["b", "c"], 3, ["a", "b", "c"], [1, 2]),
])
def test_class_maps(names, num_classes, model_classes, expected):
    assert resolve_class_map(names, num_classes, model_classes).tolist() == expected


@pytest.mark.parametrize("names, num_classes, model_classes", [
    (["a", "b"], 1000, None), (["n02123045", "n07920052"], 5, None), (["z"], 3, ["a", "b", "c"])])
def test_class_map_errors(names, num_classes, model_classes):
    with pytest.raises(ConfigError):
        resolve_class_map(names, num_classes, model_classes)


def _full_store(index, url: str):
    """A store with dense labels (kind "full", 7 classes) and random content."""
    from fkd_dali.crops.boxes import CropDistribution, encode_boxes, sample_crops
    from fkd_dali.store.opening import create_store
    from fkd_dali.store.schema import CropLabels, LabelSpec, StoreLayout, StoreSpec, TeacherSpec

    spec = StoreSpec(crops_per_image=4, crop=CropDistribution(), label=LabelSpec(kind="full", k=2, num_classes=7),
                     teacher=TeacherSpec("fake", "fake", "0" * 64, (3, 32, 32), "bilinear", (0.5,) * 3, (0.5,) * 3),
                     layout=StoreLayout(images_per_chunk=32, slots_per_chunk=4))
    store = create_store(url, index, spec)
    n = len(index)
    full = np.random.default_rng(0).dirichlet(np.ones(7), size=(n, 4)).astype(np.float16)
    top = np.argsort(-full.astype(np.float32), axis=2)[..., :2]
    boxes, flips = sample_crops(index.sizes, np.arange(n), np.arange(4), spec.crop)
    store.write_chunk(0, CropLabels(encode_boxes(boxes, index.sizes), flips, top.astype(np.int16),
                                    np.take_along_axis(full, top, 2), full))
    return store


def test_full_recovery_trains_on_dense_labels(photo_root, photo_index, small_store, tmp_path):
    store = _full_store(photo_index, str(tmp_path / "full.zarr"))
    result = fit(cfg(photo_root, store.url, tmp_path / "out", recovery="full", max_steps=2))
    assert result.steps == 2 and np.isfinite(result.final_loss)
    with pytest.raises(ConfigError, match="--recovery full needs a store with dense labels"):
        fit(cfg(photo_root, small_store, tmp_path / "out2", recovery="full"))


@pytest.mark.gpu
def test_gpu_bf16_channels_last_training(photo_root, small_store, tmp_path):
    result = fit(cfg(photo_root, small_store, tmp_path, amp="bf16", channels_last=True, device="cuda",
                     batch_size=16, image_size=96, epochs=8))
    assert result.steps == 2 * 5 and np.isfinite(result.final_loss)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]

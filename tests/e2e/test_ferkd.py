"""FerKD in the training loop on CPU: `fkd-dali train --selfmix` and `--calibrate ferkd` train and
resume exactly, and the loop's calibration counts the crops of each band over a pass, as the
store's `labels/gt_prob` (added by `labels add-gt-prob`) says."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fkd_dali.cli import main
from fkd_dali.config import TrainConfig
from fkd_dali.train.checkpoint import load_checkpoint
from fkd_dali.train.loop import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")
M = 4


def train_args(photo_root, store, out, *extra: str) -> list[str]:
    """resnet10t at 64 px, m=4, 8 crops (2 images) per step: 21 images give 10 steps per pass."""
    return ["train", "--data", str(photo_root), "--labels", str(store), "--arch", "resnet10t", "--output", str(out),
            "--epochs", "8", "-m", str(M), "-b", "8", "--lr", "2e-3", "--opt", "adamw", "--weight-decay", "0.01",
            "--warmup-epochs", "0", "--image-size", "64", "-j", "2", "--log-interval", "1", "--no-progress",
            "--seed", "3", *extra]


def _record_selfmix(monkeypatch) -> list:
    """(pass, step, image ids of the batch's rows, decision, partner rows) of every mix the loop applies."""
    from fkd_dali.loaders.replay import ReplayLoader
    from fkd_dali.train.mix import BatchMixer

    seen: list = []
    ids: dict = {}
    real_batches, real_mix = ReplayLoader.pass_batches, BatchMixer.__call__

    def recording(self, pass_idx, start_step=0):
        for step, batch in enumerate(real_batches(self, pass_idx, start_step), start=start_step):
            ids[(pass_idx, step)] = batch.meta[:, 0].clone()
            yield batch

    def mixing(self, images, targets, pass_idx, step):
        decision = self.decision(pass_idx, step, images.shape[-2], images.shape[-1])
        seen.append((pass_idx, step, ids[(pass_idx, step)], decision, self.partner(images.shape[0])))
        return real_mix(self, images, targets, pass_idx, step)

    monkeypatch.setattr(ReplayLoader, "pass_batches", recording)
    monkeypatch.setattr(BatchMixer, "__call__", mixing)
    return seen


def test_selfmix_trains_and_resumes_exactly(photo_root, small_store, tmp_path, monkeypatch, capsys):
    seen = _record_selfmix(monkeypatch)
    assert main(train_args(photo_root, small_store, tmp_path / "a", "--selfmix", "1.0", "--max-steps", "3")) == 0
    stopped = tmp_path / "a" / "last.pth"
    assert load_checkpoint(str(stopped))["step"] == 3
    assert main(train_args(photo_root, small_store, tmp_path / "a", "--selfmix", "1.0", "--max-steps", "6",
                           "--resume", str(stopped))) == 0
    resumed = list(seen)
    del seen[:]
    assert main(train_args(photo_root, small_store, tmp_path / "b", "--selfmix", "1.0", "--max-steps", "6")) == 0
    capsys.readouterr()
    assert [(p, s) for p, s, *_ in resumed] == [(0, s) for s in range(6)]
    for (p, s, ids, decision, _), (p2, s2, ids2, decision2, _) in zip(resumed[3:], seen[3:]):
        assert (p, s) == (p2, s2) and torch.equal(ids, ids2) and decision == decision2
    for _, _, ids, decision, partner in seen:
        assert decision.kind == "cutmix" and decision.lam < 1.0  # --selfmix-prob 1: every step mixes
        assert partner.tolist() == [1, 2, 3, 0, 5, 6, 7, 4]
        assert torch.equal(ids, ids[partner])  # each crop's partner is a crop of the same image
    a = load_checkpoint(str(tmp_path / "a" / "last.pth"))["model"]
    b = load_checkpoint(str(tmp_path / "b" / "last.pth"))["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def gt_store(photo_root, small_store, tmp_path_factory):
    """The session's small store (real teacher, M=8) with labels/gt_prob added by `labels add-gt-prob`."""
    out = tmp_path_factory.mktemp("ferkd") / "gt.zarr"
    shutil.copytree(small_store, out)
    assert main(["labels", "add-gt-prob", str(out), "--data", str(photo_root), "-b", "64", "--crops-per-round", "8",
                 "-j", "2", "--no-progress"]) == 0
    return out


def _record_meta(monkeypatch) -> list:
    """The (image id, slot) rows of every replayed batch, in training order."""
    from fkd_dali.loaders.replay import ReplayLoader

    real_batches = ReplayLoader.pass_batches
    metas: list = []

    def recording(self, pass_idx, start_step=0):
        for batch in real_batches(self, pass_idx, start_step):
            assert {"gt_prob", "gt_class"} <= set(batch.fields)  # --calibrate asks the loader for them
            metas.append(batch.meta.clone())
            yield batch

    monkeypatch.setattr(ReplayLoader, "pass_batches", recording)
    return metas


def test_calibration_counts_the_bands_of_a_pass_from_the_store(photo_root, gt_store, tmp_path, monkeypatch, capsys):
    from fkd_dali.store.opening import open_store

    metas = _record_meta(monkeypatch)
    base = dict(data=str(photo_root), labels=str(gt_store), arch="resnet10t", output=str(tmp_path), epochs=4,
                num_crops=M, batch_size=8, lr=2e-3, opt="adamw", warmup_epochs=0.0, image_size=64, threads=2,
                log_interval=5, progress=False, seed=3, calibrate="ferkd", ferkd_negatives="drop", selfmix=1.0)
    result = fit(TrainConfig(**base))
    assert result.passes == 1 and np.isfinite(result.final_loss)
    store = open_store(str(gt_store))
    gt_prob = store.read_images(0, store.n_images).gt_prob.astype(np.float32)
    rows = torch.cat(metas).numpy()
    p = gt_prob[rows[:, 0], rows[:, 1]]
    expected = [int((p >= 0.5).sum()), int(((p >= 0.1) & (p < 0.5)).sum()), int((p < 0.1).sum())]
    assert sum(expected) == 10 * 8
    record = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["kind"] == "pass" and record["bands"] == dict(zip(("easy", "hard", "negative"), expected))
    err = capsys.readouterr().err
    assert f"pass 0: FerKD bands of the crops trained now (all ranks): easy {expected[0]} (" in err
    assert "hard negatives: drop" in err


def test_calibrate_and_selfmix_train_and_resume_exactly(photo_root, gt_store, tmp_path, capsys):
    """The issue's check: `train --calibrate ferkd --selfmix 1.0` on a store with gt_prob resumes to the same weights."""
    extra = ("--calibrate", "ferkd", "--selfmix", "1.0")
    assert main(train_args(photo_root, gt_store, tmp_path / "a", *extra, "--max-steps", "13")) == 0
    stopped = tmp_path / "a" / "last.pth"
    assert load_checkpoint(str(stopped))["global_step"] == 13
    assert main(train_args(photo_root, gt_store, tmp_path / "a", *extra, "--max-steps", "16",
                           "--resume", str(stopped))) == 0
    assert main(train_args(photo_root, gt_store, tmp_path / "b", *extra, "--max-steps", "16")) == 0
    assert "FerKD bands" in capsys.readouterr().err
    a = load_checkpoint(str(tmp_path / "a" / "last.pth"))
    b = load_checkpoint(str(tmp_path / "b" / "last.pth"))
    assert a["global_step"] == b["global_step"] == 16
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


def test_calibrate_refuses_a_store_without_gt_prob_in_one_line(photo_root, small_store, tmp_path, capsys):
    code = main(train_args(photo_root, small_store, tmp_path, "--calibrate", "ferkd"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "add-gt-prob" in err
    assert not (tmp_path / "last.pth").exists()

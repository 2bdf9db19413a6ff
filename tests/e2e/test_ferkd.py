"""FerKD in the training loop on CPU: `fkd-dali train --selfmix` trains and resumes exactly, and the
loop's calibration counts crops per band over a pass (its batches given ground-truth probabilities
by hand until the store branch delivers `labels/gt_prob`)."""
from __future__ import annotations

import dataclasses
import json

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


def _gt_prob(ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """A made-up teacher ground-truth probability per crop: 0.05, 0.15, ..., 0.95 by (image, slot)."""
    return ((7 * ids + 3 * slots) % 10).to(torch.float32) / 10 + 0.05


def test_calibration_counts_the_bands_of_a_pass(photo_root, small_store, tmp_path, monkeypatch, capsys):
    """Stand-in for the store's labels/gt_prob: the replayed batches get gt_prob and gt_class by hand."""
    from fkd_dali.loaders.replay import ReplayLoader

    real_batches = ReplayLoader.pass_batches
    metas: list = []

    def with_gt(self, pass_idx, start_step=0):
        for batch in real_batches(self, pass_idx, start_step):
            metas.append(batch.meta.clone())
            yield dataclasses.replace(batch, gt_prob=_gt_prob(batch.meta[:, 0], batch.meta[:, 1]),
                                      gt_class=batch.index[:, 0].clone())

    monkeypatch.setattr(ReplayLoader, "pass_batches", with_gt)
    base = dict(data=str(photo_root), labels=str(small_store), arch="resnet10t", output=str(tmp_path), epochs=4,
                num_crops=M, batch_size=8, lr=2e-3, opt="adamw", warmup_epochs=0.0, image_size=64, threads=2,
                log_interval=5, progress=False, seed=3, calibrate="ferkd", ferkd_negatives="drop", selfmix=1.0)
    result = fit(TrainConfig(**base))
    assert result.passes == 1 and np.isfinite(result.final_loss)
    p = torch.cat([_gt_prob(m[:, 0], m[:, 1]) for m in metas])
    expected = [int((p >= 0.5).sum()), int(((p >= 0.1) & (p < 0.5)).sum()), int((p < 0.1).sum())]
    assert sum(expected) == 10 * 8 and min(expected) > 0
    record = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["kind"] == "pass" and record["bands"] == dict(zip(("easy", "hard", "negative"), expected))
    err = capsys.readouterr().err
    assert f"pass 0: FerKD bands of the crops trained now (all ranks): easy {expected[0]} (" in err
    assert "hard negatives: drop" in err

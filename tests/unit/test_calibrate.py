"""Tests of fkd_dali.train.calibrate (FerKD calibration): bands, calibrated targets and loss weights
against hand-computed rows for each hard-negative mode, band counts, and the step's order
(recovery -> calibration -> mixing) with per-sample weights carried through the mixer and the loss."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fkd_dali.config import TrainConfig
from fkd_dali.errors import ConfigError, LabelStoreError
from fkd_dali.loaders.batch import FkdBatch
from fkd_dali.targets.loss import soft_cross_entropy
from fkd_dali.train.calibrate import (
    FerKDCalibration,
    FerKDSpec,
    band_counts,
    calibrate_ferkd,
    crop_bands,
    describe_bands,
    make_calibration,
    soft_ground_truth,
)
from fkd_dali.train.mix import BatchMixer, MixDecision, MixSpec, mix_weighted_targets, reversed_pairs

# Five crops, C = 4; T_e = 0.5, T_n = 0.1. Rows 3 and 4 sit exactly on a threshold.
TARGETS = torch.tensor([
    [0.1, 0.1, 0.7, 0.1],  # gt 2, p 0.7: easy positive
    [0.4, 0.2, 0.3, 0.1],  # gt 2, p 0.3: hard positive
    [0.85, 0.05, 0.05, 0.05],  # gt 2, p 0.05: hard negative
    [0.0, 0.5, 0.0, 0.5],  # gt 0, p 0.1 = T_n: hard positive (only p < T_n is negative)
    [0.25, 0.25, 0.25, 0.25],  # gt 1, p 0.5 = T_e: easy positive
])
GT_PROB = torch.tensor([0.7, 0.3, 0.05, 0.1, 0.5])
GT_CLASS = torch.tensor([2, 2, 2, 0, 1])


def spec(negatives: str = "soft-gt", weight: float = 0.5, smoothing: float = 0.1) -> FerKDSpec:
    return FerKDSpec(easy=0.5, negative=0.1, negatives=negatives, negative_weight=weight, smoothing=smoothing)


def test_bands_and_counts():
    bands = crop_bands(GT_PROB, 0.5, 0.1)
    assert bands.tolist() == [0, 1, 2, 1, 0]  # easy, hard, negative, hard, easy
    assert band_counts(bands).tolist() == [2, 2, 1]
    assert band_counts(crop_bands(torch.tensor([0.0, 0.01, 0.99]), 0.5, 0.1)).tolist() == [1, 0, 2]
    assert describe_bands([2, 2, 1]) == "easy 2 (40.0%), hard 2 (40.0%), negative 1 (20.0%)"


def test_soft_gt_replaces_only_the_hard_negatives_target():
    out = calibrate_ferkd(TARGETS, GT_PROB, GT_CLASS, spec("soft-gt"))
    # row 2: (1 - 0.1) * onehot(2) + 0.1 / 4 = [0.025, 0.025, 0.925, 0.025]
    expected = TARGETS.clone()
    expected[2] = torch.tensor([0.025, 0.025, 0.925, 0.025])
    assert torch.allclose(out.targets, expected)
    assert torch.equal(out.targets[[0, 1, 3, 4]], TARGETS[[0, 1, 3, 4]])  # the others are untouched, bit for bit
    assert out.weight is None  # soft-gt keeps the plain loss
    assert out.counts.tolist() == [2, 2, 1]
    assert TARGETS[2].tolist() == pytest.approx([0.85, 0.05, 0.05, 0.05])  # inputs not modified


@pytest.mark.parametrize("mode, weight, expected", [
    ("drop", 0.5, [1.0, 1.0, 0.0, 1.0, 1.0]),
    ("weight", 0.5, [1.0, 1.0, 0.5, 1.0, 1.0]),
    ("weight", 0.2, [1.0, 1.0, 0.2, 1.0, 1.0]),
])
def test_drop_and_weight_keep_targets_and_weight_the_negatives(mode, weight, expected):
    out = calibrate_ferkd(TARGETS, GT_PROB, GT_CLASS, spec(mode, weight))
    assert torch.equal(out.targets, TARGETS)
    assert out.weight.dtype == torch.float32 and out.weight.tolist() == pytest.approx(expected)
    assert out.counts.tolist() == [2, 2, 1]


def test_soft_ground_truth_with_other_smoothing():
    rows = soft_ground_truth(torch.tensor([0, 3]), 4, 0.4)  # 0.6 + 0.1 on the class, 0.1 elsewhere
    assert torch.allclose(rows, torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]]))


def test_thresholds_equal_make_no_hard_positives():
    out = calibrate_ferkd(TARGETS, GT_PROB, GT_CLASS, FerKDSpec(0.3, 0.3, "drop", 0.5, 0.1))
    assert out.counts.tolist() == [3, 0, 2]  # p >= 0.3: 0.7, 0.3, 0.5; below: 0.05, 0.1


def test_bad_inputs_are_refused():
    with pytest.raises(ConfigError, match="--ferkd-negative"):
        FerKDSpec(0.2, 0.3, "drop", 0.5, 0.1)
    with pytest.raises(ConfigError, match="soft-gt"):
        FerKDSpec(0.5, 0.1, "dropp", 0.5, 0.1)
    with pytest.raises(LabelStoreError, match="one ground-truth probability and class per crop"):
        calibrate_ferkd(TARGETS, GT_PROB[:3], GT_CLASS, spec())


def _batch(gt: bool) -> FkdBatch:
    meta = torch.zeros(5, 2, dtype=torch.int64)
    return FkdBatch(torch.zeros(5, 3, 2, 2), TARGETS, meta, gt_prob=GT_PROB if gt else None,
                    gt_class=GT_CLASS if gt else None)


def test_calibration_of_a_batch_needs_the_stores_gt_prob():
    calibration = FerKDCalibration(spec())
    assert calibration(_batch(True), TARGETS).counts.tolist() == [2, 2, 1]
    with pytest.raises(LabelStoreError, match="labels add-gt-prob"):
        calibration(_batch(False), TARGETS)


def test_make_calibration_from_the_config():
    assert make_calibration(TrainConfig(data="d", labels="s")) is None
    made = make_calibration(TrainConfig(data="d", labels="s", calibrate="ferkd", ferkd_easy=0.6,
                                        ferkd_negative=0.2, ferkd_negatives="weight", ferkd_negative_weight=0.3,
                                        ferkd_smoothing=0.2))
    assert made.spec == FerKDSpec(0.6, 0.2, "weight", 0.3, 0.2)


# -- per-sample weights through the mixer and the loss ----------------------------------------

def test_weighted_loss_hand_values_and_the_unweighted_path_is_unchanged():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    per = soft_cross_entropy(logits, target, reduction="none")  # [log(1 + e^-2), log(1 + e) - 0.5]
    assert per.tolist() == pytest.approx([0.126928, 0.813262], abs=1e-6)
    weight = torch.tensor([0.0, 0.5])
    assert float(soft_cross_entropy(logits, target, weight=weight)) == pytest.approx(0.5 * 0.813262 / 2, abs=1e-6)
    assert float(soft_cross_entropy(logits, target, reduction="sum", weight=weight)) == pytest.approx(0.406631,
                                                                                                      abs=1e-6)
    assert float(soft_cross_entropy(logits, target, weight=torch.zeros(2))) == 0.0  # all dropped: 0, not NaN
    plain = soft_cross_entropy(logits, target, 2.0)
    assert torch.equal(plain, soft_cross_entropy(logits, target, 2.0, weight=torch.ones(2)))
    explicit = -(target * torch.log_softmax(logits / 2.0, 1)).sum(1) * 4.0
    assert torch.equal(plain, explicit.mean())  # no weight: exactly the unweighted formula
    with pytest.raises(ConfigError, match="per-sample loss weights"):
        soft_cross_entropy(logits, target, weight=torch.ones(3))


def test_mix_weighted_targets_hand_values():
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8]])
    weight = torch.tensor([0.0, 1.0, 0.0, 0.0])
    partner = reversed_pairs(4)  # 0<->3, 1<->2
    mixed, w = mix_weighted_targets(targets, weight, partner, 0.75)
    # row 0 (w 0) with row 3 (w 0): weight 0, the plain mix 0.75 * t0 + 0.25 * t3
    # row 1 (w 1) with row 2 (w 0): weight 0.75, target t1 (the dropped partner brings no label)
    # row 2 (w 0) with row 1 (w 1): weight 0.25, target t1
    assert w.tolist() == pytest.approx([0.0, 0.75, 0.25, 0.0])
    assert torch.allclose(mixed, torch.tensor([[0.8, 0.2], [0.0, 1.0], [0.0, 1.0], [0.4, 0.6]]))


def test_mixed_weighted_loss_is_the_lam_sum_of_the_two_weighted_losses():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=gen)
    targets = torch.softmax(torch.randn(6, 5, generator=gen), 1)
    weight = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.3, 0.0])
    partner, lam = reversed_pairs(6), 0.6
    mixed, w = mix_weighted_targets(targets, weight, partner, lam)
    per = soft_cross_entropy(logits, mixed, reduction="none") * w
    own = soft_cross_entropy(logits, targets, reduction="none") * weight * lam
    other = soft_cross_entropy(logits, targets[partner], reduction="none") * weight[partner] * (1 - lam)
    assert torch.allclose(per, own + other, atol=1e-6)
    plain_t, plain_w = mix_weighted_targets(targets, torch.ones(6), partner, lam)  # all weights 1: the plain mix
    assert torch.allclose(plain_t, targets * lam + targets[partner] * (1 - lam)) and torch.allclose(plain_w,
                                                                                                  torch.ones(6))


def _step_run(calibration, mixer):
    return SimpleNamespace(amp_dtype=None, calibration=calibration, mixer=mixer,
                           cfg=SimpleNamespace(channels_last=False))


def test_a_step_calibrates_before_it_mixes():
    from fkd_dali.train.loop import _step_inputs

    images = torch.arange(4 * 1 * 2 * 2, dtype=torch.float32).reshape(4, 1, 2, 2)
    batch = FkdBatch(images, TARGETS[:4], torch.zeros(4, 2, dtype=torch.int64), gt_prob=GT_PROB[:4],
                     gt_class=GT_CLASS[:4])
    mixer = BatchMixer(MixSpec(mixup_alpha=1.0), seed=0)
    decision = MixDecision("mixup", 0.75)
    mixer.decision = lambda *a: decision  # a fixed lam for the hand computation
    _, target, weight, counts = _step_inputs(_step_run(FerKDCalibration(spec("soft-gt")), mixer), batch, 0, 0)
    calibrated = TARGETS[:4].clone()
    calibrated[2] = torch.tensor([0.025, 0.025, 0.925, 0.025])
    # row 1 mixes with row 2 (reversed pairs): its partner's target is the calibrated one
    assert torch.allclose(target, calibrated * 0.75 + calibrated.flip(0) * 0.25)
    assert weight is None and counts.tolist() == [1, 2, 1]
    _, target, weight, _ = _step_inputs(_step_run(FerKDCalibration(spec("drop")), mixer), batch, 0, 0)
    assert weight.tolist() == pytest.approx([1.0, 0.75, 0.25, 1.0])  # rows 1 and 2 share the dropped crop
    assert torch.allclose(target[1], TARGETS[1]) and torch.allclose(target[2], TARGETS[1])


@pytest.mark.gpu
def test_calibration_weighted_mix_and_loss_never_synchronise_with_the_host():
    """The per-step path on CUDA under torch's sync debug mode "error": a host read-back would raise."""
    device = torch.device("cuda")
    targets, gt_prob, gt_class = TARGETS.to(device), GT_PROB.to(device), GT_CLASS.to(device)
    logits = torch.randn(5, 4, device=device, requires_grad=True)
    partner = reversed_pairs(5).to(device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for mode in ("soft-gt", "drop", "weight"):
            out = calibrate_ferkd(targets, gt_prob, gt_class, spec(mode))
            weight = out.weight if out.weight is not None else torch.ones(5, device=device)
            mixed, w = mix_weighted_targets(out.targets, weight, partner, 0.7)
            soft_cross_entropy(logits, mixed, weight=w).backward()
            total = out.counts.clone()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert total.tolist() == [2, 2, 1]

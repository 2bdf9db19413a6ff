"""Tests of fkd_dali.train.mix: CutMix/Mixup pixels and soft targets against hand computations,
the timm-style decision rules, and draws that are a pure function of (seed, pass, rank, step)."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from fkd_dali.config import TrainConfig
from fkd_dali.errors import ConfigError
from fkd_dali.train.mix import (
    BatchMixer,
    MixDecision,
    MixSpec,
    beta_quantile,
    cutmix_box,
    decide,
    mix_batch,
    reversed_pairs,
    same_image_pairs,
)

# Two "crops" of 1 channel, 2 x 4 pixels; their partners under reversed_pairs are each other.
A = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
B = [[10.0, 20.0, 30.0, 40.0], [50.0, 60.0, 70.0, 80.0]]
IMAGES = torch.tensor([[A], [B]])  # (2, 1, 2, 4)
TARGETS = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.4, 0.6]])


def test_mixup_blends_pixels_and_targets_with_lam():
    mixed, target = mix_batch(IMAGES, TARGETS, reversed_pairs(2), MixDecision("mixup", 0.75))
    # crop 0: 0.75 * A + 0.25 * B, e.g. pixel (0, 0): 0.75 * 1 + 0.25 * 10 = 3.25
    assert mixed[0, 0].tolist() == [[3.25, 6.5, 9.75, 13.0], [16.25, 19.5, 22.75, 26.0]]
    # crop 1: 0.75 * B + 0.25 * A, e.g. 0.75 * 10 + 0.25 * 1 = 7.75
    assert mixed[1, 0].tolist() == [[7.75, 15.5, 23.25, 31.0], [38.75, 46.5, 54.25, 62.0]]
    assert torch.allclose(target, torch.tensor([[0.525, 0.25, 0.225], [0.175, 0.35, 0.475]]))
    assert torch.equal(IMAGES[0, 0], torch.tensor(A))  # the inputs are not modified


def test_cutmix_pastes_the_partners_box_and_weights_targets_by_area():
    # box rows 1..2 (row 1), columns 1..3: 2 of the 8 pixels come from the partner -> lam = 0.75
    mixed, target = mix_batch(IMAGES, TARGETS, reversed_pairs(2), MixDecision("cutmix", 0.75, (1, 2, 1, 3)))
    assert mixed[0, 0].tolist() == [[1.0, 2.0, 3.0, 4.0], [5.0, 60.0, 70.0, 8.0]]
    assert mixed[1, 0].tolist() == [[10.0, 20.0, 30.0, 40.0], [50.0, 6.0, 7.0, 80.0]]
    assert torch.allclose(target, torch.tensor([[0.525, 0.25, 0.225], [0.175, 0.35, 0.475]]))
    assert target.sum(1).tolist() == pytest.approx([1.0, 1.0])


def test_no_mix_returns_the_inputs():
    images, target = mix_batch(IMAGES, TARGETS, reversed_pairs(2), MixDecision("none"))
    assert images is IMAGES and target is TARGETS


def test_reversed_pairs_is_timms_batch_flip():
    assert reversed_pairs(5).tolist() == [4, 3, 2, 1, 0]


@pytest.mark.parametrize("lam, uy, ux, h, w, box", [
    (0.75, 0.5, 0.25, 8, 8, (2, 6, 0, 4)),  # sides 8 * 0.5 = 4, centre (4, 2)
    (0.75, 0.0, 0.99, 8, 8, (0, 2, 5, 8)),  # centre (0, 7): clipped at the top and right edges
    (0.0, 0.5, 0.5, 6, 10, (0, 6, 0, 10)),  # lam 0: the whole image
    (1.0, 0.5, 0.5, 6, 10, (3, 3, 5, 5)),  # lam 1: an empty box
])
def test_cutmix_box(lam, uy, ux, h, w, box):
    assert cutmix_box(lam, uy, ux, h, w) == box


def test_beta_quantile_hand_values():
    assert beta_quantile(1.0, 0.3) == pytest.approx(0.3)  # Beta(1, 1) is uniform
    assert beta_quantile(0.2, 0.5) == pytest.approx(0.5)  # the median of a symmetric Beta
    assert beta_quantile(2.0, 0.15625) == pytest.approx(0.25)  # Beta(2, 2) CDF 3x^2 - 2x^3 at 0.25


@pytest.mark.parametrize("spec, u, expected", [
    (MixSpec(cutmix_alpha=1.0), [0.9, 0.0, 0.5, 0.5, 0.5], "cutmix"),
    (MixSpec(cutmix_alpha=1.0, prob=0.5), [0.5, 0.0, 0.5, 0.5, 0.5], "none"),  # u0 >= prob
    (MixSpec(mixup_alpha=1.0), [0.1, 0.0, 0.5, 0.5, 0.5], "mixup"),
    (MixSpec(cutmix_alpha=1.0, mixup_alpha=1.0, switch_prob=0.3), [0.1, 0.29, 0.5, 0.5, 0.5], "cutmix"),
    (MixSpec(cutmix_alpha=1.0, mixup_alpha=1.0, switch_prob=0.3), [0.1, 0.31, 0.5, 0.5, 0.5], "mixup"),
    (MixSpec(), [0.0, 0.0, 0.5, 0.5, 0.5], "none"),  # nothing enabled
])
def test_decide_follows_timms_rules(spec, u, expected):
    assert decide(spec, u, 8, 8).kind == expected


def test_decide_corrects_lam_to_the_clipped_box_area():
    d = decide(MixSpec(cutmix_alpha=1.0), [0.0, 0.0, 0.75, 0.0, 0.0], 8, 8)  # Beta(1,1): lam 0.75
    assert d.box == (0, 2, 0, 2)  # centre (0, 0), sides 4: clipped to 2 x 2
    assert d.lam == pytest.approx(1 - 4 / 64)


def test_mixer_draws_are_a_pure_function_of_seed_pass_rank_step():
    spec = MixSpec(cutmix_alpha=1.0, mixup_alpha=0.2, prob=0.5)
    a, b = BatchMixer(spec, seed=7), BatchMixer(spec, seed=7)
    assert a.decision(3, 11, 32, 32) == b.decision(3, 11, 32, 32)
    draws = {tuple(a.uniforms(p, s)) for p in range(3) for s in range(20)}
    assert len(draws) == 60  # every (pass, step) draws afresh
    assert not np.array_equal(a.uniforms(0, 0), BatchMixer(spec, seed=7, rank=1).uniforms(0, 0))
    assert not np.array_equal(a.uniforms(0, 0), BatchMixer(spec, seed=8).uniforms(0, 0))
    kinds = [a.decision(0, s, 32, 32).kind for s in range(2000)]
    # prob 0.5, then CutMix or Mixup with switch prob 0.5
    assert 0.45 < kinds.count("none") / 2000 < 0.55
    assert 0.2 < kinds.count("cutmix") / 2000 < 0.3


def test_mixer_mixes_a_batch_and_keeps_targets_distributions():
    spec = MixSpec(cutmix_alpha=1.0, mixup_alpha=1.0)
    mixer = BatchMixer(spec, seed=0)
    images = torch.randn(8, 3, 16, 16)
    targets = torch.softmax(torch.randn(8, 10), 1)
    for step in range(4):
        d = mixer.decision(0, step, 16, 16)
        mixed, target = mixer(images, targets, 0, step)
        expected = targets * d.lam + targets.flip(0) * (1 - d.lam)
        assert torch.allclose(target, expected) and torch.allclose(target.sum(1), torch.ones(8))
        assert mixed.shape == images.shape


@pytest.mark.parametrize("kw, flag", [
    ({"cutmix": -1.0}, "--cutmix"), ({"mixup": -0.1}, "--mixup"), ({"mixup": float("nan")}, "--mixup"),
    ({"mix_prob": 1.5}, "--mix-prob"), ({"mix_switch_prob": -0.1}, "--mix-switch-prob"),
    ({"model_ema_decay": 1.0}, "--model-ema-decay"), ({"model_ema_decay": 0.0}, "--model-ema-decay"),
])
def test_bad_recipe_values_name_the_flag(kw, flag):
    with pytest.raises(ConfigError, match=flag):
        TrainConfig(data="d", labels="s", **kw)


# -- SelfMix: CutMix between crops of the same image ----------------------------------------------

@pytest.mark.parametrize("batch, m, expected", [
    (6, 3, [1, 2, 0, 4, 5, 3]),  # each crop takes the next crop of its image, cyclically
    (4, 2, [1, 0, 3, 2]),  # two crops of an image swap boxes
    (4, 4, [1, 2, 3, 0]),
])
def test_same_image_pairs(batch, m, expected):
    assert same_image_pairs(batch, m).tolist() == expected


@pytest.mark.parametrize("batch, m, match", [(4, 1, "--num-crops 2 or more"), (5, 2, "not whole images")])
def test_same_image_pairs_refuses_what_has_no_partner(batch, m, match):
    with pytest.raises(ConfigError, match=match):
        same_image_pairs(batch, m)


def test_selfmix_pastes_the_same_images_next_crop_and_mixes_targets_by_area():
    # two images x two crops, 1 channel, 2 x 4 pixels: crop value = 100 * image + 10 * crop + pixel
    images = torch.tensor([[[[100.0 * i + 10.0 * c + p for p in range(4)], [100.0 * i + 10.0 * c + 4 + p
                                                                                for p in range(4)]]]
                           for i in range(2) for c in range(2)])
    targets = torch.tensor([[0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0], [0.0, 0.5, 0.5]])
    # box rows 0..1, columns 0..2: 2 of the 8 pixels from the partner -> lam = 0.75
    mixed, target = mix_batch(images, targets, same_image_pairs(4, 2), MixDecision("cutmix", 0.75, (0, 1, 0, 2)))
    assert mixed[0, 0].tolist() == [[10.0, 11.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]  # from crop 1 of image 0
    assert mixed[1, 0].tolist() == [[0.0, 1.0, 12.0, 13.0], [14.0, 15.0, 16.0, 17.0]]  # from crop 0 of image 0
    assert mixed[2, 0].tolist() == [[110.0, 111.0, 102.0, 103.0], [104.0, 105.0, 106.0, 107.0]]
    assert mixed[3, 0].tolist() == [[100.0, 101.0, 112.0, 113.0], [114.0, 115.0, 116.0, 117.0]]
    # crop 0: 0.75 * [0.6, 0.4, 0] + 0.25 * [0.2, 0.8, 0]; crop 2: 0.75 * [0, 0, 1] + 0.25 * [0, 0.5, 0.5]
    assert torch.allclose(target, torch.tensor([[0.5, 0.5, 0.0], [0.3, 0.7, 0.0], [0.0, 0.125, 0.875],
                                                [0.0, 0.375, 0.625]]))


def test_selfmix_mixer_keeps_labels_within_each_image():
    m, n_images = 4, 3
    mixer = BatchMixer(MixSpec(cutmix_alpha=1.0), seed=5, partner=functools.partial(same_image_pairs, m=m))
    images = torch.randn(m * n_images, 3, 16, 16)
    targets = torch.eye(n_images).repeat_interleave(m, dim=0)  # every crop of image i: onehot(i)
    mixed_any = False
    for step in range(6):
        mixed, target = mixer(images, targets, 0, step)
        assert torch.equal(target, targets)  # the partner is always of the same image: its label is the same
        mixed_any |= not torch.equal(mixed, images)
    assert mixed_any


def test_selfmix_draws_are_cutmixs_and_a_pure_function_of_seed_pass_rank_step():
    pairs = functools.partial(same_image_pairs, m=2)
    selfmix = BatchMixer(MixSpec(cutmix_alpha=1.0, prob=0.5), seed=7, partner=pairs)
    again = BatchMixer(MixSpec(cutmix_alpha=1.0, prob=0.5), seed=7, rank=0, partner=pairs)  # e.g. after --resume
    cutmix = BatchMixer(MixSpec(cutmix_alpha=1.0, prob=0.5), seed=7)
    images, targets = torch.randn(8, 3, 8, 8), torch.softmax(torch.randn(8, 5), 1)
    for p, s in [(0, 0), (2, 9), (5, 31)]:
        assert selfmix.decision(p, s, 8, 8) == again.decision(p, s, 8, 8) == cutmix.decision(p, s, 8, 8)
        a, b = selfmix(images, targets, p, s), again(images, targets, p, s)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    kinds = [selfmix.decision(0, s, 8, 8).kind for s in range(1000)]
    assert set(kinds) == {"none", "cutmix"} and 0.45 < kinds.count("none") / 1000 < 0.55  # --selfmix-prob 0.5


def test_the_run_builds_selfmix_as_cutmix_with_same_image_pairs():
    from fkd_dali.dist import DistEnv
    from fkd_dali.train.loop import _mixer

    mixer = _mixer(TrainConfig(data="d", labels="s", num_crops=3, selfmix=0.8, selfmix_prob=0.3), DistEnv(rank=1))
    assert mixer.spec == MixSpec(cutmix_alpha=0.8, prob=0.3) and (mixer.seed, mixer.rank) == (0, 1)
    assert mixer.partner(6).tolist() == [1, 2, 0, 4, 5, 3]
    assert _mixer(TrainConfig(data="d", labels="s"), DistEnv()) is None

"""The label-fidelity metrics of `bench fidelity` against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from bench.bench_fidelity import KL_FLOOR, confident_crops, label_agreement, summarize

# Oracle over 7 classes: top-5 = classes 0..4, class 5 and 6 small.
P = torch.tensor([[0.4, 0.2, 0.15, 0.1, 0.06, 0.05, 0.04]])


def test_identical_label_scores_perfectly():
    m = label_agreement(P, P)
    assert m["kl"].item() == pytest.approx(0.0, abs=1e-12) and m["kl_reverse"].item() == pytest.approx(0.0, abs=1e-12)
    assert m["top1_agreement"].item() == 1.0 and m["top5_overlap"].item() == 1.0


def test_one_hot_label_hand_values():
    q = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0]])
    m = label_agreement(P, q)
    # KL(p || q) = sum p log p - p0 log 1 - sum_{c>0} p_c log(floor)
    p = P[0].double()
    expected = float((p * p.log()).sum() - (1 - p[0]) * math.log(KL_FLOOR))
    assert m["kl"].item() == pytest.approx(expected)
    assert m["kl_reverse"].item() == pytest.approx(-math.log(0.4))  # 1 * log(1 / 0.4)
    assert m["top1_agreement"].item() == 1.0
    assert m["top5_overlap"].item() == pytest.approx(0.2)  # the six zeros tie: only class 0 counts


def test_top5_overlap_counts_classes_and_ties_against_the_label():
    # label's five largest: 0, 1, 2, 5, 6 -> shares 0, 1, 2 with the oracle's top-5
    q = torch.tensor([[0.3, 0.2, 0.2, 0.0, 0.0, 0.15, 0.15]])
    assert label_agreement(P, q)["top5_overlap"].item() == pytest.approx(0.6)
    # classes 3..6 tie at the 4th-7th place: none of them counts
    tied = torch.tensor([[0.5, 0.1, 0.1, 0.075, 0.075, 0.075, 0.075]])
    assert label_agreement(P, tied)["top5_overlap"].item() == pytest.approx(0.6)


def test_top1_disagreement_and_reverse_kl():
    q = torch.tensor([[0.1, 0.6, 0.1, 0.05, 0.05, 0.05, 0.05]])
    m = label_agreement(P, q)
    assert m["top1_agreement"].item() == 0.0
    p = P[0].double()
    qq = q[0].double()
    assert m["kl_reverse"].item() == pytest.approx(float((qq * (qq / p).log()).sum()))


def test_summarize_splits_by_flip_and_confidence_and_reports_percent():
    per_crop = {"kl": torch.tensor([1.0, 3.0, 5.0]), "kl_reverse": torch.tensor([0.0, 0.0, 3.0]),
                "top1_agreement": torch.tensor([1.0, 0.0, 1.0]), "top5_overlap": torch.tensor([1.0, 0.4, 0.2])}
    out = summarize(per_crop, torch.tensor([False, True, True]), torch.tensor([True, False, True]))
    assert out["all"] == {"crops": 3, "kl": 3.0, "kl_reverse": 1.0, "top1_agreement": pytest.approx(200 / 3),
                          "top5_overlap": pytest.approx(160 / 3)}
    assert out["unflipped"]["crops"] == 1 and out["unflipped"]["kl"] == 1.0
    assert out["flipped"]["top1_agreement"] == 50.0 and out["flipped"]["top5_overlap"] == pytest.approx(30.0)
    # crops 0 and 2: KL (1 + 5) / 2, reverse (0 + 3) / 2, both top-1 agree, overlap (1 + 0.2) / 2
    assert out["confident"] == {"crops": 2, "kl": 3.0, "kl_reverse": 1.5, "top1_agreement": 100.0,
                                "top5_overlap": pytest.approx(60.0)}


def test_a_group_without_crops_reports_nan():
    per_crop = {name: torch.tensor([1.0, 0.0]) for name in ("kl", "kl_reverse", "top1_agreement", "top5_overlap")}
    out = summarize(per_crop, torch.tensor([False, False]), torch.tensor([False, False]))
    assert out["confident"]["crops"] == 0 and out["flipped"]["crops"] == 0
    assert all(math.isnan(out["confident"][m]) for m in ("kl", "kl_reverse", "top1_agreement", "top5_overlap"))


def test_confident_crops_by_hand():
    oracle = torch.tensor([[0.5, 0.3, 0.2],  # exactly at the threshold: confident
                           [0.49, 0.3, 0.21],
                           [0.1, 0.1, 0.8],
                           [1 / 3, 1 / 3, 1 / 3]])
    assert confident_crops(oracle, 0.5).tolist() == [True, False, True, False]
    assert confident_crops(oracle, 0.3).tolist() == [True, True, True, True]
    assert confident_crops(oracle, 0.9).tolist() == [False, False, False, False]


def test_confident_subset_of_a_tiny_case_by_hand():
    """Two crops: a confident one where a one-hot label agrees, an unconfident one where it does not."""
    oracle = torch.tensor([[0.8, 0.1, 0.05, 0.02, 0.02, 0.01], [0.3, 0.35, 0.2, 0.05, 0.05, 0.05]])
    label = torch.tensor([[1.0, 0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0]])
    out = summarize(label_agreement(oracle, label), torch.tensor([False, True]), confident_crops(oracle, 0.5))
    assert out["confident"]["crops"] == 1 and out["confident"]["top1_agreement"] == 100.0
    assert out["all"]["top1_agreement"] == 50.0
    p = oracle[0].double()
    assert out["confident"]["kl"] == pytest.approx(float((p * p.log()).sum() - (1 - p[0]) * math.log(KL_FLOOR)))
    assert out["confident"]["kl_reverse"] == pytest.approx(-math.log(0.8))
    assert out["confident"]["top5_overlap"] == pytest.approx(20.0)


def test_fewer_than_six_classes():
    """With C <= 5 classes every class is in both top-5s: overlap 100%, the other metrics as usual."""
    p = torch.tensor([[0.5, 0.3, 0.2]])
    m = label_agreement(p, torch.tensor([[0.2, 0.7, 0.1]]))
    assert m["top5_overlap"].item() == 1.0 and m["top1_agreement"].item() == 0.0

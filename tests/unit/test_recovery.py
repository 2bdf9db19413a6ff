"""Tests of fkd_dali.targets.recovery against hand-computed targets."""
from __future__ import annotations

import pytest
import torch

from fkd_dali.errors import ConfigError, LabelStoreError
from fkd_dali.targets.recovery import RECOVERY_KINDS, recover_labels

# The worked example: C=6, K=3, top classes [2, 0, 5] with probabilities [0.5, 0.2, 0.1].
C = 6
INDEX = [2, 0, 5]
PROB = [0.5, 0.2, 0.1]

CASES = [
    # (kind, k, smoothing, expected row), all computed by hand.
    ("hard", None, 0.1, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
    ("hard", 1, 0.1, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
    # eps/C = 0.1/6 everywhere, plus 0.9 on the top-1.
    ("smoothing", None, 0.1, [1 / 60, 1 / 60, 0.9 + 1 / 60, 1 / 60, 1 / 60, 1 / 60]),
    ("smoothing", None, 0.3, [0.05, 0.05, 0.75, 0.05, 0.05, 0.05]),
    ("smoothing", None, 0.0, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
    # k=3: rest 1 - 0.8 = 0.2 over 3 classes -> 0.0666667 each.
    ("marginal_smoothing", None, 0.1, [0.2, 0.0666667, 0.5, 0.0666667, 0.0666667, 0.1]),
    ("marginal_smoothing", 3, 0.1, [0.2, 0.0666667, 0.5, 0.0666667, 0.0666667, 0.1]),
    # k=2: rest 1 - 0.7 = 0.3 over 4 classes -> 0.075 each (class 5 loses its 0.1).
    ("marginal_smoothing", 2, 0.1, [0.2, 0.075, 0.5, 0.075, 0.075, 0.075]),
    # k=1: rest 0.5 over 5 classes -> 0.1 each.
    ("marginal_smoothing", 1, 0.1, [0.1, 0.1, 0.5, 0.1, 0.1, 0.1]),
    # k=3: divide by 0.8.
    ("marginal_renorm", None, 0.1, [0.25, 0.0, 0.625, 0.0, 0.0, 0.125]),
    # k=2: divide by 0.7.
    ("marginal_renorm", 2, 0.1, [0.2857143, 0.0, 0.7142857, 0.0, 0.0, 0.0]),
    ("marginal_renorm", 1, 0.1, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
]


@pytest.mark.parametrize("kind, k, smoothing, expected", CASES)
def test_matches_hand_computed_row(kind: str, k: int | None, smoothing: float, expected: list[float]) -> None:
    index = torch.tensor([INDEX])
    prob = torch.tensor([PROB])
    target = recover_labels(index, prob, C, kind=kind, k=k, smoothing=smoothing)
    assert target.dtype == torch.float32
    assert target.shape == (1, C)
    torch.testing.assert_close(target, torch.tensor([expected]), atol=1e-6, rtol=0)
    torch.testing.assert_close(target.sum(1), torch.ones(1), atol=1e-6, rtol=0)


def test_default_kind_is_marginal_smoothing() -> None:
    target = recover_labels(torch.tensor([INDEX]), torch.tensor([PROB]), C)
    torch.testing.assert_close(target, torch.tensor([[0.2, 0.2 / 3, 0.5, 0.2 / 3, 0.2 / 3, 0.1]]))


def test_full_returns_dense_labels_as_float32() -> None:
    full = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0, 0.0]], dtype=torch.float16)
    target = recover_labels(torch.tensor([INDEX]), torch.tensor([PROB]), C, kind="full", full=full)
    assert target.dtype == torch.float32
    torch.testing.assert_close(target, full.float())


@pytest.mark.parametrize("kind", [k for k in RECOVERY_KINDS if k != "full"])
def test_batch_rows_are_independent_and_sum_to_one(kind: str) -> None:
    # Store dtypes (int16 ids, float16 probabilities) must be accepted as they are.
    index = torch.tensor([[2, 0, 5], [1, 3, 4], [5, 4, 3], [0, 1, 2]], dtype=torch.int16)
    prob = torch.tensor(
        [[0.5, 0.2, 0.1], [0.9, 0.05, 0.01], [0.34, 0.33, 0.32], [0.4, 0.3, 0.3]], dtype=torch.float16
    )
    batch = recover_labels(index, prob, C, kind=kind, k=2)
    assert batch.shape == (4, C)
    assert batch.dtype == torch.float32
    torch.testing.assert_close(batch.sum(1), torch.ones(4), atol=1e-3, rtol=0)
    assert bool((batch >= 0).all())
    for row in range(4):
        single = recover_labels(index[row : row + 1], prob[row : row + 1], C, kind=kind, k=2)
        torch.testing.assert_close(batch[row : row + 1], single)


def test_marginal_smoothing_clamps_float16_sums_above_one() -> None:
    prob = torch.tensor([[0.6, 0.3, 0.11]], dtype=torch.float16)  # sums to ~1.01
    target = recover_labels(torch.tensor([INDEX]), prob, C, kind="marginal_smoothing")
    assert target[0, [1, 3, 4]].tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(target[0, [2, 0, 5]], prob[0].float())


def test_marginal_smoothing_when_top_k_covers_every_class() -> None:
    index = torch.tensor([[1, 0, 2]])
    prob = torch.tensor([[0.5, 0.3, 0.2]])
    target = recover_labels(index, prob, 3, kind="marginal_smoothing")
    torch.testing.assert_close(target, torch.tensor([[0.3, 0.5, 0.2]]))


def test_output_stays_on_input_device() -> None:
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    index = torch.tensor([INDEX], device=device)
    prob = torch.tensor([PROB], device=device)
    for kind in ("hard", "smoothing", "marginal_smoothing", "marginal_renorm"):
        assert recover_labels(index, prob, C, kind=kind).device == index.device


@pytest.mark.parametrize(
    "kind, k, smoothing, message",
    [
        ("marginal", None, 0.1, "marginal_smoothing"),  # the message lists the valid names
        ("soft", None, 0.1, "valid"),
        ("marginal_smoothing", 0, 0.1, "k must be >= 1"),
        ("marginal_smoothing", -1, 0.1, "k must be >= 1"),
        ("marginal_smoothing", 4, 0.1, "exceeds the store's top-K=3"),
        ("marginal_renorm", 5, 0.1, "exceeds"),
        ("smoothing", None, 1.5, "smoothing"),
    ],
)
def test_bad_choices_raise_config_error(kind: str, k: int | None, smoothing: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        recover_labels(torch.tensor([INDEX]), torch.tensor([PROB]), C, kind=kind, k=k, smoothing=smoothing)


def test_full_without_dense_labels_raises() -> None:
    with pytest.raises(ConfigError, match="full"):
        recover_labels(torch.tensor([INDEX]), torch.tensor([PROB]), C, kind="full")


def test_mismatched_shapes_raise_label_store_error() -> None:
    with pytest.raises(LabelStoreError):
        recover_labels(torch.tensor([INDEX]), torch.tensor([[0.5, 0.2]]), C)


def test_kinds_are_the_documented_ones() -> None:
    assert RECOVERY_KINDS == ("hard", "smoothing", "marginal_smoothing", "marginal_renorm", "full")

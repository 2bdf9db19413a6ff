"""Tests of fkd_dali.targets.loss against dense references."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fkd_dali.errors import ConfigError
from fkd_dali.targets.loss import SoftTargetCrossEntropy, soft_cross_entropy
from fkd_dali.targets.recovery import Recovery, recover_labels


def _batch(seed: int = 0, b: int = 5, c: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=gen) * 3
    target = torch.softmax(torch.randn(b, c, generator=gen), dim=1)
    return logits, target


def _loop_reference(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> list[float]:
    """Per-sample -sum_c t_c * log softmax(z / T)_c * T^2, written out with math.*."""
    losses = []
    for z_row, t_row in zip(logits.tolist(), target.tolist()):
        z = [v / temperature for v in z_row]
        log_norm = math.log(sum(math.exp(v) for v in z))
        losses.append(-sum(t * (v - log_norm) for t, v in zip(t_row, z)) * temperature**2)
    return losses


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_matches_explicit_loop(temperature: float) -> None:
    logits, target = _batch()
    expected = _loop_reference(logits, target, temperature)
    per_sample = soft_cross_entropy(logits, target, temperature, reduction="none")
    torch.testing.assert_close(per_sample, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    mean = soft_cross_entropy(logits, target, temperature)
    assert mean.shape == ()
    assert mean.item() == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    total = soft_cross_entropy(logits, target, temperature, reduction="sum")
    assert total.item() == pytest.approx(sum(expected), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_matches_torch_cross_entropy_with_probability_targets(temperature: float) -> None:
    logits, target = _batch(seed=1)
    expected = F.cross_entropy(logits / temperature, target) * temperature**2
    torch.testing.assert_close(soft_cross_entropy(logits, target, temperature), expected)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_equals_kl_divergence_plus_target_entropy(temperature: float) -> None:
    logits, target = _batch(seed=2)
    log_q = F.log_softmax(logits / temperature, dim=1)
    kl = F.kl_div(log_q, target, reduction="batchmean")
    entropy = -(target * target.log()).sum(1).mean()
    expected = (kl + entropy) * temperature**2
    torch.testing.assert_close(soft_cross_entropy(logits, target, temperature), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_give_float32_loss(dtype: torch.dtype) -> None:
    logits, target = _batch(seed=3)
    low = logits.to(dtype)
    loss = soft_cross_entropy(low, target.to(dtype))
    assert loss.dtype == torch.float32
    # Same value as fp32 on the already-rounded logits and targets.
    expected = soft_cross_entropy(low.float(), target.to(dtype).float())
    torch.testing.assert_close(loss, expected)


def test_gradient_flows_to_logits() -> None:
    logits, target = _batch(seed=4)
    logits.requires_grad_(True)
    soft_cross_entropy(logits, target).backward()
    # d/dz of soft CE is (softmax(z) - t) / B for the mean reduction.
    expected = (torch.softmax(logits.detach(), 1) - target) / logits.shape[0]
    torch.testing.assert_close(logits.grad, expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"reduction": "avg"}, "mean"),
    ],
)
def test_bad_options_raise(kwargs: dict[str, object], message: str) -> None:
    logits, target = _batch()
    with pytest.raises(ConfigError, match=message):
        soft_cross_entropy(logits, target, **kwargs)  # type: ignore[arg-type]


def test_width_mismatch_raises() -> None:
    logits, _ = _batch(c=7)
    _, target = _batch(c=6)
    with pytest.raises(ConfigError, match="num_classes"):
        soft_cross_entropy(logits, target)


@pytest.mark.parametrize(
    "kind, k, temperature",
    [("marginal_smoothing", None, 1.0), ("marginal_smoothing", 2, 2.0), ("hard", None, 1.0),
     ("marginal_renorm", 1, 3.0), ("smoothing", None, 1.0)],
)
def test_recovery_then_the_one_loss_is_the_cross_entropy_of_the_recovered_label(kind: str, k: int | None,
                                                                                temperature: float) -> None:
    logits, _ = _batch(seed=5, b=4, c=6)
    index = torch.tensor([[2, 0, 5], [1, 3, 4], [5, 4, 3], [0, 1, 2]], dtype=torch.int16)
    prob = torch.tensor([[0.5, 0.2, 0.1], [0.9, 0.05, 0.01], [0.34, 0.33, 0.32], [0.4, 0.3, 0.3]])
    target = Recovery(kind, k, smoothing=0.2)(index, prob, 6)
    torch.testing.assert_close(target, recover_labels(index, prob, 6, kind=kind, k=k, smoothing=0.2))
    expected = F.cross_entropy(logits / temperature, target) * temperature**2
    torch.testing.assert_close(SoftTargetCrossEntropy(temperature)(logits, target), expected)


def test_the_one_loss_weighs_samples() -> None:
    logits, full = _batch(seed=6, b=3, c=6)
    weight = torch.tensor([1.0, 0.0, 0.5])
    per = F.cross_entropy(logits, full, reduction="none")
    torch.testing.assert_close(SoftTargetCrossEntropy()(logits, full, weight), (per * weight).mean())
    torch.testing.assert_close(Recovery("full")(None, None, 6, full), full)


@pytest.mark.parametrize("kwargs", [{"kind": "nope"}, {"k": 0}, {"smoothing": -0.1}])
def test_recovery_is_checked_when_made(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Recovery(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="exceeds the store's top-K=3"):
        Recovery(k=4).check(stored_k=3)
    with pytest.raises(ConfigError):
        SoftTargetCrossEntropy(temperature=0.0)

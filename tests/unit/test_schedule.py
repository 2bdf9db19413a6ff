"""Tests of fkd_dali.train.schedule: warmup, cosine, FKD's serrated (per-pass) cosine, step, resume purity."""
from __future__ import annotations

import math

import pytest
import torch

from fkd_dali.errors import ConfigError
from fkd_dali.train.schedule import SCHEDULES, ScheduleSpec, create_schedule

BASE_LR = 0.4


def make(name: str, **kw):
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=BASE_LR)
    spec = ScheduleSpec(name=name, **{"passes": 10, "steps_per_pass": 20, "m": 4, "warmup_epochs": 2.0,
                                      "warmup_lr": 1e-4, "min_lr": 1e-3, **kw})
    return create_schedule(opt, spec)


def curve(sched) -> list[list[float]]:
    return [[sched.update(p, s) for s in range(sched.spec.steps_per_pass)] for p in range(sched.spec.passes)]


def test_registry_names():
    assert SCHEDULES.names() == ["cosine", "serrated", "step"]


@pytest.mark.parametrize("name", ["cosine", "serrated", "step"])
def test_linear_warmup_per_iteration(name):
    sched = make(name)
    warm = sched.spec.warmup_steps
    assert warm == 10  # 2 epochs = half a pass of 20 steps at m = 4
    lrs = [sched.update(0, s) for s in range(warm + 1)]
    assert lrs[0] == pytest.approx(1e-4)
    assert all(b > a for a, b in zip(lrs, lrs[1:]))
    assert lrs[warm] == pytest.approx(BASE_LR)


def test_cosine_decays_per_iteration_to_min_lr():
    lrs = sum(curve(make("cosine")), [])
    after = lrs[10:]
    assert all(b <= a for a, b in zip(after, after[1:]))
    assert len(set(lrs[20:40])) == 20  # changes every step
    total = len(lrs) - 10
    mid = 10 + total // 2
    assert lrs[mid] == pytest.approx(1e-3 + (BASE_LR - 1e-3) * 0.5 * (1 + math.cos(math.pi * (total // 2) / total)))
    assert lrs[-1] == pytest.approx(1e-3, abs=5e-4)


def test_serrated_holds_the_lr_within_each_pass_and_follows_the_cosine_between_passes():
    serrated, cosine = curve(make("serrated")), curve(make("cosine"))
    for p in range(1, 10):  # after the warmup (which ends in pass 0)
        assert len(set(serrated[p])) == 1, f"lr changes inside pass {p}"
        assert serrated[p][0] == pytest.approx(cosine[p][0])
        assert serrated[p][0] < serrated[p - 1][-1]
    assert serrated[0][10:] == [pytest.approx(BASE_LR)] * 10  # rest of the warmup pass: the peak
    assert serrated[0][:11] == pytest.approx(cosine[0][:11])  # warmup is per iteration for both


def test_step_decays_every_decay_epochs():
    sched = make("step", decay_epochs=8.0, decay_rate=0.5, warmup_epochs=0.0)
    lrs = sum(curve(sched), [])
    # 8 epochs = 2 passes = 40 steps
    assert lrs[0] == pytest.approx(BASE_LR)
    assert lrs[39] == pytest.approx(BASE_LR)
    assert lrs[40] == pytest.approx(BASE_LR * 0.5)
    assert lrs[80] == pytest.approx(BASE_LR * 0.25)


@pytest.mark.parametrize("name", ["cosine", "serrated", "step"])
def test_lr_is_a_pure_function_of_pass_and_step(name):
    """A resumed run evaluates the schedule at (pass, step) directly and gets the same lr."""
    full = curve(make(name))
    fresh = make(name)
    state = make(name).state_dict()
    fresh.load_state_dict(state)
    for p, s in [(7, 3), (0, 0), (3, 19), (9, 19), (1, 5)]:
        assert fresh.update(p, s) == pytest.approx(full[p][s])


def test_unknown_schedule_names_the_valid_ones():
    with pytest.raises(ConfigError, match="cosine, serrated, step.*'cosine'"):
        make("cosin")


@pytest.mark.parametrize("kw", [{"passes": 0}, {"steps_per_pass": 0}, {"warmup_epochs": -1.0}, {"decay_epochs": 0}])
def test_bad_specs_are_refused(kw):
    with pytest.raises(ConfigError):
        ScheduleSpec(**kw)


def test_warmup_longer_than_training_is_clamped():
    sched = make("cosine", passes=1, steps_per_pass=4, warmup_epochs=100.0)
    lrs = [sched.update(0, s) for s in range(4)]
    assert lrs[-1] == pytest.approx(BASE_LR)

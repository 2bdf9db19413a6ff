"""Checkpoints: identity checks before a resume, weight-fit errors, positions, atomic saves, store identity."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from fkd_dali.errors import CheckpointError
from fkd_dali.train.checkpoint import (
    CHECKPOINT_FORMAT,
    Position,
    RunIdentity,
    check_resume,
    check_store_matches,
    checkpoint_state,
    load_checkpoint,
    load_weights,
    restore,
    save_checkpoint,
    store_id,
)


class _Store:
    """Just what `store_id` and the checks read of a LabelStore."""

    def __init__(self, meta: dict, url: str = "s.zarr") -> None:
        self.meta, self.url = meta, url


META = {"schema_version": 1, "dataset": {"fingerprint": "abc"}, "teacher": {"checkpoint_sha256": "11"},
        "created": "2026-01-01T00:00:00+00:00", "writer_version": "0.1.0"}


def identity(**kw) -> RunIdentity:
    base = dict(arch="resnet10t", num_classes=10, mode="distill", store_fingerprint=store_id(_Store(META)),
                data_fingerprint="data", model_classes=None, num_crops=4, batch_size=32, world=1, seed=0,
                data_config={"size": 32}, config={"lr": 0.1})
    return RunIdentity(**{**base, **kw})


def tiny_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    return model, opt, sched


def test_store_id_ignores_creation_time_and_writer_but_not_content():
    same = {**META, "created": "2030-05-05T00:00:00+00:00", "writer_version": "9.9"}
    other = {**META, "teacher": {"checkpoint_sha256": "22"}}
    assert store_id(_Store(META)) == store_id(_Store(same))
    assert store_id(_Store(META)) != store_id(_Store(other))


def test_store_match_accepts_the_legacy_identity_and_names_the_store():
    import hashlib
    import json

    legacy = hashlib.sha256(json.dumps(META, sort_keys=True).encode()).hexdigest()
    check_store_matches({"store_fingerprint": legacy}, _Store(META), "c.pth")
    with pytest.raises(CheckpointError, match="another label store, not s.zarr"):
        check_store_matches({"store_fingerprint": "x"}, _Store(META), "c.pth")
    with pytest.raises(CheckpointError, match="no store"):
        check_store_matches({"store_fingerprint": None}, _Store(META), "c.pth")


def test_store_mismatch_found_by_eval_says_what_eval_needs():
    with pytest.raises(CheckpointError, match="resume with the --labels it used"):
        check_store_matches({"store_fingerprint": "x"}, _Store(META), "c.pth")
    with pytest.raises(CheckpointError) as e:
        check_store_matches({"store_fingerprint": "x"}, _Store(META), "c.pth", command="eval")
    assert "resume" not in str(e.value) and "pass the --labels store it was trained with" in str(e.value)


@pytest.mark.parametrize("change, match", [
    ({"arch": "resnet18"}, "holds a 'resnet10t' model"),
    ({"data_fingerprint": "other"}, "another dataset"),
    ({"batch_size": 64}, "batch_size 32 \\(checkpoint\\) vs 64"),
    ({"world": 2}, "world 1 \\(checkpoint\\) vs 2"),
    ({"seed": 5}, "seed 0 \\(checkpoint\\) vs 5"),
    ({"num_crops": 2}, "num_crops 4"),
])
def test_check_resume_names_what_differs(change, match):
    model, opt, sched = tiny_state()
    ckpt = checkpoint_state(identity(), Position(1, 2, 12), model, opt, sched, None)
    check_resume(ckpt, identity(), _Store(META), "c.pth")  # the same run continues
    with pytest.raises(CheckpointError, match=match):
        check_resume(ckpt, identity(**change), _Store(META), "c.pth")


def test_save_restore_round_trip_and_keep_pass(tmp_path):
    model, opt, sched = tiny_state()
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    state = checkpoint_state(identity(), Position(3, 7, 47), model, opt, sched, None)
    path = save_checkpoint(state, tmp_path, keep_pass=2)
    assert path == str(tmp_path / "last.pth") and (tmp_path / "pass_002.pth").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "pass_002.pth"]  # no temp files left
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["arch"] == "resnet10t"
    fresh, fresh_opt, fresh_sched = tiny_state()
    position = restore(ckpt, path, fresh, fresh_opt, fresh_sched, None)
    assert position == Position(3, 7, 47)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert fresh_sched.last_epoch == 1
    assert torch.equal(fresh_opt.state_dict()["state"][0]["momentum_buffer"],
                       opt.state_dict()["state"][0]["momentum_buffer"])


def test_position_rolls_a_finished_pass_over():
    assert Position(2, 10, 30).normalized(10) == Position(3, 0, 30)
    assert Position(2, 9, 29).normalized(10) == Position(2, 9, 29)


def test_load_weights_names_the_tensors_that_do_not_fit():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    state = dict(model.state_dict())
    state["0.weight"] = torch.zeros(5, 3)
    state.pop("1.bias")
    state["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing \['1.bias'\].*unexpected \['extra'\].*0.weight \(5, 3\)"):
        load_weights(model, state, "w.pth", "the student")


@pytest.mark.parametrize("content, match", [
    (b"", "is empty \\(0 bytes\\)"),
    (b"not a zip", "cannot read checkpoint"),
])
def test_unreadable_checkpoints_are_checkpoint_errors(tmp_path, content, match):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pth"))
    torch.save({"model": {}}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="not an fkd-dali training checkpoint"):
        load_checkpoint(str(tmp_path / "foreign.pth"))


def test_identity_fields_are_all_recorded():
    model, opt, sched = tiny_state()
    state = checkpoint_state(identity(), Position(), model, opt, sched, None)
    assert {f.name for f in dataclasses.fields(RunIdentity)} <= set(state)

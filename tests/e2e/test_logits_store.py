"""Self-supervised teachers (FKD §3.4): a store of kind "logits" keeps all D raw outputs per crop, training
takes softmax(outputs / T) at the T it chooses, and the store tools handle the kind or refuse it in one line.

The teacher is a random resnet10t with a 128-wide head (a stand-in for an SSL projection head: what is
tested is where the numbers go, not what they mean), at a 64-pixel input to stay fast on 2 cores.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import zarr

from fkd_dali.cli import main as cli_main
from fkd_dali.config import TrainConfig
from fkd_dali.errors import ConfigError
from fkd_dali.store.checks import read_written
from fkd_dali.store.opening import open_store
from fkd_dali.train.checkpoint import load_checkpoint
from fkd_dali.train.loop import fit

D = 128
GEN = ["-M", "8", "-K", "5", "--input-size", "64", "--batch-size", "32", "--images-per-chunk", "8",
       "--slots-per-chunk", "4", "--threads", "2", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ssl_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=D)
    with torch.no_grad():  # a sharper head than the random init's (outputs of a few units, like real logits)
        model.fc.weight.mul_(20.0)
    path = tmp_path_factory.mktemp("ssl") / "resnet10t_d128.pth"
    torch.save(model.state_dict(), path)
    return path


def teacher_args(ssl_ckpt) -> list[str]:
    return ["--teacher", "resnet10t", "--checkpoint", str(ssl_ckpt), "--num-classes", str(D)]


@pytest.fixture(scope="module")
def logits_store(photo_root, ssl_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("logits") / "ssl.zarr"
    assert cli_main(["labels", "generate", "--data", str(photo_root), "--out", str(out), "--logits",
                     *teacher_args(ssl_ckpt), *GEN]) == 0
    return out


def softmax(x: np.ndarray, t: float) -> np.ndarray:
    z = x.astype(np.float64) / t
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


# -- generation ------------------------------------------------------------------------------------

def test_a_logits_store_holds_the_teachers_raw_outputs(logits_store, photo_root, ssl_ckpt, tmp_path):
    store = open_store(str(logits_store))
    meta = store.meta
    assert meta["schema_version"] == 2  # releases reading only v1 refuse it instead of misreading it
    assert meta["label"] == {"kind": "logits", "k": 5, "num_classes": D, "temperature": None}
    g = zarr.open_group(str(logits_store), mode="r")
    arr = g["labels/logits"]
    assert arr.shape == (21, 8, D) and arr.dtype == np.float16 and arr.chunks == (8, 4, D)
    assert np.isnan(arr.fill_value) and "labels/full" not in g
    labels = read_written(store, 0, store.n_images)
    assert labels.full is None and labels.logits.shape == (21, 8, D)

    # the same teacher, same crops, as a --full store at temperature 1: its softmax is the softmax of the
    # stored outputs (up to their float16 rounding: <= 2**-11 relative per output, a few % of a probability
    # at outputs of ~5), and the top-K preview is that store's top-K exactly
    full_url = tmp_path / "full.zarr"
    assert cli_main(["labels", "generate", "--data", str(photo_root), "--out", str(full_url), "--full",
                     *teacher_args(ssl_ckpt), *GEN]) == 0
    full = open_store(str(full_url)).read_images(0, 21)
    np.testing.assert_allclose(softmax(labels.logits.astype(np.float32), 1.0), full.full.astype(np.float32),
                               rtol=0.03, atol=2e-4)
    np.testing.assert_array_equal(labels.index, full.index)
    np.testing.assert_array_equal(labels.prob.view(np.uint16), full.prob.view(np.uint16))
    logits = labels.logits.astype(np.float32)
    assert (logits < 0).mean() > 0.2 and logits.max() > 2.0  # raw outputs, not probabilities
    assert full.full.astype(np.float32).max() > 10 / D  # far from uniform: the comparison means something


@pytest.mark.parametrize("extra, words", [
    (["--full"], "drop --full"),
    (["--temperature", "2"], "choose the temperature at training time"),
    (["--gt-prob"], "drop --gt-prob"),
    (["--top-k", "200"], "--top-k 200 exceeds the teacher's 128 outputs"),
])
def test_options_that_make_no_sense_with_logits_are_refused_in_one_line(photo_root, ssl_ckpt, tmp_path, capsys,
                                                                        extra, words):
    out = tmp_path / "x.zarr"
    code = cli_main(["labels", "generate", "--data", str(photo_root), "--out", str(out), "--logits",
                     *teacher_args(ssl_ckpt), *GEN, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and words in err, err
    assert not out.exists()


# -- training --------------------------------------------------------------------------------------

def cfg(photo_root, store, out, **kw) -> TrainConfig:
    base = dict(data=str(photo_root), labels=str(store), arch="resnet10t", output=str(out), epochs=8, num_crops=4,
                batch_size=8, lr=2e-3, opt="adamw", weight_decay=0.01, warmup_epochs=0.0, image_size=64,
                threads=2, log_interval=1, progress=False, seed=3, recovery="full", temperature=0.2)
    base.update(kw)
    return TrainConfig(**base)


def _record(monkeypatch) -> list:
    """(meta, target, temperature) of every loss the loop computes."""
    from fkd_dali.loaders.replay import ReplayLoader

    seen: list = []
    metas: list = []
    import fkd_dali.targets.loss as loss_module

    real_batches, real_loss = ReplayLoader.pass_batches, loss_module.soft_cross_entropy

    def batches(self, pass_idx, start_step=0):
        for batch in real_batches(self, pass_idx, start_step):
            metas.append(batch.meta.clone())
            yield batch

    def loss(logits, target, temperature=1.0, reduction="mean", weight=None):
        seen.append((metas[-1], target.detach().clone(), temperature, logits.shape))
        return real_loss(logits, target, temperature, reduction, weight)

    monkeypatch.setattr(ReplayLoader, "pass_batches", batches)
    monkeypatch.setattr(loss_module, "soft_cross_entropy", loss)
    return seen


def test_a_128_wide_student_trains_on_softmax_of_the_stored_outputs_and_resumes_exactly(
        photo_root, logits_store, tmp_path, monkeypatch):
    seen = _record(monkeypatch)
    stopped = fit(cfg(photo_root, logits_store, tmp_path / "a", max_steps=3))
    resumed = fit(cfg(photo_root, logits_store, tmp_path / "a", max_steps=5, resume=stopped.checkpoint))
    after_resume = seen[3:]
    del seen[:]
    straight = fit(cfg(photo_root, logits_store, tmp_path / "b", max_steps=5))
    assert resumed.steps == straight.steps == 5 and np.isfinite(straight.final_loss)

    # every target row is softmax(stored outputs / 0.2) of its (image, slot); the loss softens the student at 0.2
    stored = open_store(str(logits_store)).read_images(0, 21).logits.astype(np.float32)
    for meta, target, temperature, shape in seen:
        ids, slots = meta[:, 0].numpy(), meta[:, 1].numpy()
        np.testing.assert_allclose(target.numpy(), softmax(stored[ids, slots], 0.2), rtol=1e-5, atol=1e-6)
        assert temperature == 0.2 and tuple(shape) == (8, D)
    for (meta, target, *_), (meta2, target2, *_) in zip(after_resume, seen[3:5]):
        assert torch.equal(meta, meta2) and torch.equal(target, target2)

    a, b = (load_checkpoint(r.checkpoint)["model"] for r in (resumed, straight))
    assert a["fc.weight"].shape == (D, 512)  # the student's head has the teacher's width
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("kw, words", [
    (dict(recovery="marginal_smoothing"), "--recovery marginal_smoothing"),
    (dict(temperature=None), "--temperature T"),
    (dict(val="VAL"), "--val"),
])
def test_a_logits_store_refuses_what_does_not_apply(photo_root, logits_store, tmp_path, kw, words):
    if kw.get("val"):
        kw["val"] = str(photo_root)
    with pytest.raises(ConfigError) as e:
        fit(cfg(photo_root, logits_store, tmp_path, **kw))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_create_loader_softens_the_stored_outputs_at_the_given_temperature(photo_root, logits_store, small_store):
    import fkd_dali

    stored = open_store(str(logits_store)).read_images(0, 21).logits.astype(np.float32)
    with fkd_dali.create_loader(str(photo_root), str(logits_store), num_crops=2, batch_size=8, image_size=32,
                                device="cpu", threads=1, recovery="full", temperature=0.5) as loader:
        batches = list(loader)
    assert len(batches) == 5
    for batch in batches:
        ids, slots = batch.meta[:, 0].numpy(), batch.meta[:, 1].numpy()
        assert batch.target.shape == (8, D)
        np.testing.assert_allclose(batch.target.numpy(), softmax(stored[ids, slots], 0.5), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="--temperature T"):
        fkd_dali.create_loader(str(photo_root), str(logits_store), num_crops=2, batch_size=8, recovery="full")
    with pytest.raises(ConfigError, match="logits stores only"):
        fkd_dali.create_loader(str(photo_root), str(small_store), num_crops=2, batch_size=8, temperature=0.5)


# -- store tools -----------------------------------------------------------------------------------

def test_info_shows_the_width_and_verify_checks_the_outputs(logits_store, tmp_path, capsys):
    from fkd_dali.store.tools import store_info, verify_store

    assert cli_main(["labels", "info", str(logits_store)]) == 0
    text = capsys.readouterr().out
    assert f"logits: width D={D}" in text and "no temperature" in text
    assert store_info(str(logits_store))["label"]["width"] == D
    assert verify_store(str(logits_store)).ok

    url = tmp_path / "bad.zarr"
    shutil.copytree(logits_store, url)
    g = zarr.open_group(str(url), mode="r+")
    g["labels/logits"][2, 5, 7] = np.float16(np.inf)  # a crop whose stored output overflowed
    report = verify_store(str(url))
    problem = report.problem("logits_nonfinite")
    assert problem is not None and problem.count == 1 and problem.examples[0][1] == 5
    assert report.damaged_chunks == [0]


def test_show_captions_the_largest_raw_outputs(logits_store, photo_root, tmp_path):
    from fkd_dali.store.tools import render_crops, top_values

    store = open_store(str(logits_store))
    labels = store.read_images(4, 5)
    top = top_values(labels, 0, 3)
    values = labels.logits[0, 3].astype(np.float32)
    assert [c for c, _ in top] == list(np.argsort(-values, kind="stable")[:3])
    assert [v for _, v in top] == sorted(values, reverse=True)[:3]
    out = render_crops(str(logits_store), 4, tmp_path / "show.png", str(photo_root), max_crops=2)
    assert out.is_file() and out.stat().st_size > 1000


def test_export_fkd_merge_and_add_gt_prob_refuse_logits_stores_in_one_line(logits_store, small_store, photo_root,
                                                                          tmp_path, capsys):
    assert cli_main(["labels", "export-fkd", str(logits_store), "--out", str(tmp_path / "fkd")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "kind logits" in err and "export-fkd" in err
    assert cli_main(["labels", "merge", str(logits_store), str(small_store), "--out", str(tmp_path / "m.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "kind logits" in err and "merge" in err
    assert not (tmp_path / "m.zarr").exists()
    assert cli_main(["labels", "add-gt-prob", str(logits_store), "--data", str(photo_root)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "kind logits" in err and "ground-truth" in err


def test_repair_recomputes_a_logits_store_bit_for_bit(logits_store, photo_root, ssl_ckpt, tmp_path, capsys):
    url = tmp_path / "damaged.zarr"
    shutil.copytree(logits_store, url)
    (url / "labels" / "logits" / "c" / "1" / "0" / "0").unlink()
    code = cli_main(["labels", "repair", str(url), "--data", str(photo_root), "--checkpoint", str(ssl_ckpt),
                     "--batch-size", "32", "--threads", "2", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["damaged_chunks"] == [1]
    a, b = (open_store(str(u)).read_images(0, 21) for u in (logits_store, url))
    np.testing.assert_array_equal(a.logits.view(np.uint16), b.logits.view(np.uint16))
    np.testing.assert_array_equal(a.index, b.index)

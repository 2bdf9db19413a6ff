"""The paper's training recipes end to end on CPU: colour jitter in the replay graph, CutMix/Mixup on
soft labels, weight EMA, fine-tuning from pretrained weights, and an exact resume with all of them on."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fkd_dali.cli import main as cli_main
from fkd_dali.errors import CheckpointError
from fkd_dali.train.checkpoint import load_checkpoint
from fkd_dali.train.loop import fit

from ..conftest import tiny_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


cfg = tiny_train_config


def _record(monkeypatch) -> tuple[list, list]:
    """Record every replayed batch and every mix decision the loop applies."""
    from fkd_dali.loaders.replay import ReplayLoader
    from fkd_dali.train.mix import BatchMixer

    batches: list = []
    decisions: list = []
    real_batches, real_mix = ReplayLoader.pass_batches, BatchMixer.__call__

    def recording(self, pass_idx, start_step=0):
        for step, batch in enumerate(real_batches(self, pass_idx, start_step), start=start_step):
            batches.append((pass_idx, step, batch.meta.clone(), batch.images.clone()))
            yield batch

    def mixing(self, images, targets, pass_idx, step):
        decisions.append((pass_idx, step, self.decision(pass_idx, step, images.shape[-2], images.shape[-1])))
        return real_mix(self, images, targets, pass_idx, step)

    monkeypatch.setattr(ReplayLoader, "pass_batches", recording)
    monkeypatch.setattr(BatchMixer, "__call__", mixing)
    return batches, decisions


def _timm_style_weights(path, arch="resnet10t", num_classes=1000, seed=123) -> dict[str, torch.Tensor]:
    """A timm training checkpoint: {"state_dict": ...} with DDP's "module." prefixes."""
    import timm

    torch.manual_seed(seed)
    state = timm.create_model(arch, num_classes=num_classes).state_dict()
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    return state


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_kill_and_resume_with_jitter_cutmix_mixup_ema_and_initial_weights_is_exact(photo_root, small_store,
                                                                                  tmp_path, monkeypatch):
    batches, decisions = _record(monkeypatch)
    init = tmp_path / "pretrained.pth"
    _timm_style_weights(init)
    recipe = dict(color_jitter=0.4, cutmix=1.0, mixup=0.2, model_ema=True, model_ema_decay=0.9,
                  initial_checkpoint=str(init))
    stopped = fit(cfg(photo_root, small_store, tmp_path / "a", max_steps=3, **recipe))
    assert (load_checkpoint(stopped.checkpoint)["step"], stopped.steps) == (3, 3)
    del batches[:], decisions[:]
    resumed = fit(cfg(photo_root, small_store, tmp_path / "a", max_steps=6, resume=stopped.checkpoint, **recipe))
    after_resume, mixes_after_resume = list(batches), list(decisions)
    del batches[:], decisions[:]
    straight = fit(cfg(photo_root, small_store, tmp_path / "b", max_steps=6, **recipe))
    assert [(p, s) for p, s, *_ in after_resume] == [(0, 3), (0, 4), (0, 5)]
    for (p, s, meta, images), (p2, s2, meta2, images2) in zip(after_resume, batches[3:6]):
        assert (p, s) == (p2, s2) and torch.equal(meta, meta2) and torch.equal(images, images2)
    assert mixes_after_resume == decisions[3:6]
    assert {d.kind for *_, d in decisions} <= {"cutmix", "mixup"} and len(decisions) == 6  # mix_prob 1: every step
    a, b = load_checkpoint(resumed.checkpoint), load_checkpoint(straight.checkpoint)
    _assert_same_tensors(a["model"], b["model"])
    _assert_same_tensors(a["model_ema"], b["model_ema"])
    assert not torch.equal(a["model_ema"]["fc.weight"], a["model"]["fc.weight"])


def test_color_jitter_in_the_replay_graph_follows_the_counter_based_factors(photo_index, small_store):
    """Jittered crops = DALI's colour twist, with `jitter_factors`, of the same un-jittered uint8 crops."""
    from fkd_dali.crops.jitter import jitter_factors
    from fkd_dali.loaders.replay import ReplayLoader
    from fkd_dali.loaders.sources import StoreCrops
    from fkd_dali.store.opening import open_store

    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.25, 0.2, 0.3])
    store = open_store(str(small_store))

    def first_batch(strength: float):
        loader = ReplayLoader(StoreCrops(store, photo_index.sizes), photo_index, m=4, batch_size=8, size=32,
                              mean=mean, std=std, seed=2, threads=1, color_jitter=strength)
        try:
            batch = next(iter(loader.pass_batches(1)))
            return batch, loader.table(1)
        finally:
            loader.close()

    plain, table = first_batch(0.0)
    jittered, _ = first_batch(0.4)
    assert torch.equal(plain.meta, jittered.meta) and torch.equal(plain.field("index"), jittered.field("index"))  # same labels

    def pixels(images):  # normalized NCHW -> uint8-valued NHWC
        return images.numpy().transpose(0, 2, 3, 1) * std * 255 + mean * 255

    before, after = pixels(plain.images), pixels(jittered.images)
    assert np.abs(before - np.rint(before)).max() < 1e-3  # normalization of integer pixels
    ids = plain.meta[::4, 0].numpy()
    factors = jitter_factors(0.4, 2, 1, ids, table.slots).reshape(-1, 3)
    b, c, s = (factors[:, i].reshape(-1, 1, 1, 1) for i in range(3))
    x = np.rint(before)
    grey = (x * np.array([0.299, 0.587, 0.114])).sum(-1, keepdims=True)
    expected = np.clip(np.rint(b * (128 + c * (grey + s * (x - grey) - 128))), 0, 255)
    assert np.abs(after - expected).max() <= 1.0 + 1e-3
    assert np.abs(after - before).mean() > 3


def test_ema_follows_timms_update_rule(photo_root, small_store, tmp_path):
    """Step 1 copies the model; step 2 gives 0.9 * ema + 0.1 * model (decay 0.9)."""
    one = fit(cfg(photo_root, small_store, tmp_path, model_ema=True, model_ema_decay=0.9, max_steps=1))
    c1 = load_checkpoint(one.checkpoint)
    _assert_same_tensors(c1["model_ema"], c1["model"])
    two = fit(cfg(photo_root, small_store, tmp_path, model_ema=True, model_ema_decay=0.9, max_steps=2,
                  resume=one.checkpoint))
    c2 = load_checkpoint(two.checkpoint)
    for key, ema in c2["model_ema"].items():
        if ema.is_floating_point():
            assert torch.allclose(ema, 0.9 * c1["model"][key] + 0.1 * c2["model"][key], atol=1e-6), key
        else:
            assert torch.equal(ema, c2["model"][key]), key  # integer buffers are copied


def test_ema_is_validated_each_pass(photo_root, small_store, tmp_path, capsys):
    result = fit(cfg(photo_root, small_store, tmp_path, epochs=4, batch_size=16, model_ema=True,
                     val=str(photo_root)))
    assert result.val_ema is not None and result.val_ema["images"] == 21
    passes = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "pass"]
    assert {"val_top1", "val_top1_ema", "val_top5_ema"} <= set(passes[-1])
    # `fkd-dali eval` on the final checkpoint: the model by default, its EMA with --use-ema (timm's flag)
    for flags, key in (([], "val_top1"), (["--use-ema"], "val_top1_ema")):
        assert cli_main(["eval", "--data", str(photo_root), "--checkpoint", result.checkpoint, "-b", "16", "-j", "2",
                         *flags]) == 0
        line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert line["weights"] == ("ema" if flags else "model") and line["images"] == 21
        assert line["top1"] == pytest.approx(passes[-1][key], abs=1e-3)


def test_eval_use_ema_without_an_ema_is_one_line(photo_root, small_store, tmp_path, capsys):
    result = fit(cfg(photo_root, small_store, tmp_path, max_steps=1))
    code = cli_main(["eval", "--data", str(photo_root), "--checkpoint", result.checkpoint, "--use-ema"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--use-ema" in err and "--model-ema" in err


def test_initial_checkpoint_from_timm_and_from_fkd_dali(photo_root, small_store, tmp_path):
    """lr 0: the trained parameters stay exactly the initial ones (BN statistics still move)."""
    init = tmp_path / "pretrained.pth"
    state = _timm_style_weights(init)
    import timm

    params = {k for k, _ in timm.create_model("resnet10t").named_parameters()}
    first = fit(cfg(photo_root, small_store, tmp_path / "a", lr=0.0, max_steps=1, initial_checkpoint=str(init)))
    trained = load_checkpoint(first.checkpoint)["model"]
    assert all(torch.equal(trained[k], state[k]) for k in params)
    again = fit(cfg(photo_root, small_store, tmp_path / "b", lr=0.0, max_steps=1,
                    initial_checkpoint=first.checkpoint))  # an fkd-dali checkpoint's model
    assert all(torch.equal(load_checkpoint(again.checkpoint)["model"][k], state[k]) for k in params)


def test_initial_checkpoint_that_does_not_fit_names_the_tensors(photo_root, small_store, tmp_path):
    wrong = tmp_path / "ten-classes.pth"
    _timm_style_weights(wrong, num_classes=10)
    with pytest.raises(CheckpointError, match=r"wrong shape \['fc.weight \(10, 512\) vs \(1000, 512\)'"):
        fit(cfg(photo_root, small_store, tmp_path / "a", initial_checkpoint=str(wrong)))
    with pytest.raises(CheckpointError, match="--initial-checkpoint: checkpoint .* does not exist"):
        fit(cfg(photo_root, small_store, tmp_path / "b", initial_checkpoint=str(tmp_path / "missing.pth")))
    torch.save({"note": "no tensors"}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        fit(cfg(photo_root, small_store, tmp_path / "c", initial_checkpoint=str(tmp_path / "empty.pth")))


@pytest.mark.gpu
def test_gpu_recipes_and_online_kd(photo_root, small_store, tmp_path):
    """bf16 + channels_last on the GPU: jitter in the GPU graph, mixing of float16 crops, EMA, online teacher."""
    recipe = dict(device="cuda", amp="bf16", channels_last=True, color_jitter=0.4, cutmix=1.0, mixup=0.2,
                  model_ema=True, batch_size=16, image_size=96, max_steps=3)
    stored = fit(cfg(photo_root, small_store, tmp_path / "a", **recipe))
    assert stored.steps == 3 and np.isfinite(stored.final_loss)
    online = fit(cfg(photo_root, "online", tmp_path / "b", teacher="efficientnet_lite0", **recipe))
    assert online.steps == 3 and np.isfinite(online.final_loss)
    assert load_checkpoint(online.checkpoint)["model_ema"] is not None

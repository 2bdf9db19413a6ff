"""A NaN loss stops training with one line naming the step; the checkpoint on disk keeps the good weights.

The NaN is injected into the loss of a chosen step (as a bad batch or a diverging
optimizer would make it): backward then fills the weights with NaN, which is exactly
what must never reach a checkpoint.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from fkd_dali.config import TrainConfig
from fkd_dali.errors import NonFiniteLossError
from fkd_dali.train import loop
from fkd_dali.train.checkpoint import load_checkpoint
from fkd_dali.train.loop import fit

from .conftest import assert_user_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS_PER_PASS = 10  # 21 images, 2 per step (m = 4, batch 8)


def cfg(photo_root, store, out, **kw) -> TrainConfig:
    base = dict(data=str(photo_root), labels=str(store), arch="resnet10t", output=str(out), epochs=8, num_crops=4,
                batch_size=8, lr=1e-3, opt="adamw", image_size=32, threads=1, log_interval=4, progress=False,
                seed=0)
    return TrainConfig(**{**base, **kw})


def nan_from_call(monkeypatch, first: int) -> None:
    """From the `first`-th training loss computed on (1-based), the loss is NaN."""
    import fkd_dali.targets.loss as loss_module

    real = loss_module.soft_cross_entropy
    calls = {"n": 0}

    def loss(logits, target, temperature=1.0, **kw):
        calls["n"] += 1
        value = real(logits, target, temperature, **kw)
        return value * float("nan") if calls["n"] >= first else value

    monkeypatch.setattr(loss_module, "soft_cross_entropy", loss)  # what the run's SoftTargetCrossEntropy calls


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("log_interval, max_steps, bad_call, words", [
    (4, None, 3, "global step 13 (pass 1)"),  # caught at the next log (step 16)
    (50, None, 3, "global step 13 (pass 1)"),  # no log before the pass ends: caught at its end
    (50, 15, 3, "global step 13 (pass 1)"),  # --max-steps stops first: caught before its checkpoint
])
def test_nan_stops_before_any_checkpoint_holds_it(clean_store, photo_root, tmp_path, monkeypatch,
                                                  log_interval, max_steps, bad_call, words):
    first = fit(cfg(photo_root, clean_store, tmp_path, max_steps=STEPS_PER_PASS))
    last = tmp_path / "last.pth"
    good = sha(last)
    nan_from_call(monkeypatch, bad_call)
    with pytest.raises(NonFiniteLossError) as e:
        fit(cfg(photo_root, clean_store, tmp_path, resume=first.checkpoint, log_interval=log_interval,
                max_steps=max_steps))
    assert words in str(e.value) and "nan" in str(e.value) and str(last) in str(e.value)
    assert sha(last) == good  # the last good checkpoint is untouched
    ckpt = load_checkpoint(str(last))
    assert ckpt["global_step"] == STEPS_PER_PASS
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_cli_exits_2_with_one_line(clean_store, photo_root, tmp_path, monkeypatch, capsys):
    from fkd_dali.cli import main

    nan_from_call(monkeypatch, 2)
    code = main(["train", "--data", str(photo_root), "--labels", str(clean_store), "--arch", "resnet10t",
                 "--epochs", "4", "-m", "4", "-b", "8", "--image-size", "32", "-j", "1", "--log-interval", "1",
                 "--no-progress", "--output", str(tmp_path)])
    assert_user_error((code, capsys.readouterr().err), "loss became nan at global step 2 (pass 0)",
                      "no checkpoint had been written yet")
    assert not (tmp_path / "last.pth").exists()


def _rank(rank: int, init_file: str, bad_rank: int, results: str) -> None:
    """Both ranks run the log-time check; only `bad_rank` saw a NaN (at step 7); both must stop, naming it."""
    import torch.distributed as dist

    from fkd_dali.dist import all_mean

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    run = SimpleNamespace(env=SimpleNamespace(world=2), cfg=SimpleNamespace(output=str(Path(init_file).parent)))
    log_loss = torch.tensor(float("nan") if rank == bad_rank else 2.0)
    first_bad = torch.tensor(7 if rank == bad_rank else -1)
    try:
        loop._stop_if_nonfinite(run, all_mean(log_loss, 2), first_bad, 0)
        outcome = "continued"
    except NonFiniteLossError as e:
        outcome = str(e)
    Path(results, f"rank{rank}").write_text(outcome)
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_stop_together_naming_the_first_bad_step(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path / "init"), 1, str(tmp_path)), nprocs=2, join=True)
    outcomes = [(tmp_path / f"rank{r}").read_text() for r in range(2)]
    assert all("global step 7" in o for o in outcomes), outcomes

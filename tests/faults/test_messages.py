"""Issue 19, item 7: one-line messages that say what is wrong and what to do, never the wrong cause.

- a weights file that is YAML, random bytes or empty: a reason, never PyTorch's multi-line
  text that suggests `weights_only=False`;
- NaN/inf values in a chunk file that is present: written so, not "deleted chunk files";
- `labels generate` on a complete store on a read-only file system: nothing to do, exit 0;
- `labels verify` while a `labels repair` runs (or after one was killed): names the repair;
- class folders renamed, same count: names the folders;
- `create_loader(batch_size=0)`: says the batch must be >= 1, not "not a multiple".
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr

from fkd_dali.errors import ConfigError, StoreMismatchError

from .conftest import assert_user_error, gen_args, run_main
from .test_store_damage import train_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- weights files -------------------------------------------------------------------------------------
def _bad_weights(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pth"
    if kind == "yaml":
        path.write_text("arch: resnet10t\nlr: 0.1\n")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind, reason", [("yaml", "not a PyTorch"), ("random", "not a PyTorch"),
                                          ("empty", "empty")])
@pytest.mark.parametrize("flag", ["--initial-checkpoint", "--resume"])
def test_unreadable_weights_give_a_reason_and_no_unsafe_advice(clean_store, photo_root, tmp_path, capsys, kind,
                                                               reason, flag):
    bad = _bad_weights(tmp_path, kind)
    code, _, err = run_main(train_args(photo_root, clean_store, tmp_path / "run", flag, bad), capsys)
    line = assert_user_error((code, err), str(bad), reason)
    assert "weights_only" not in err and "False" not in err and not line.rstrip().endswith(":"), line


@pytest.mark.parametrize("kind", ["yaml", "empty"])
def test_teacher_checkpoint_gives_a_reason_too(photo_root, tmp_path, capsys, kind):
    bad = _bad_weights(tmp_path, kind)
    code, _, err = run_main(gen_args(photo_root, tmp_path / "s.zarr", bad), capsys)
    assert_user_error((code, err), str(bad), "not a PyTorch" if kind == "yaml" else "empty")
    assert "weights_only" not in err


# -- non-finite values that were written -----------------------------------------------------------------
@pytest.fixture(scope="module")
def logits_store(photo_root, teacher_ckpt, tmp_path_factory) -> Path:
    from .conftest import single_torch_thread

    out = tmp_path_factory.mktemp("logits") / "ssl.zarr"
    from fkd_dali.cli import main

    with single_torch_thread():
        assert main([str(a) for a in gen_args(photo_root, out, teacher_ckpt, "--logits")]) == 0
    return out


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_nonfinite_logits_in_a_present_chunk_are_not_blamed_on_deleted_files(logits_store, store_copy, photo_root,
                                                                             tmp_path, capsys, value):
    store = store_copy(logits_store)
    arr = zarr.open_group(str(store), mode="r+")["labels/logits"]
    values = np.asarray(arr[5:10])
    values[1, 2, 7] = value  # image 6, slot 2 (pass 0)
    arr[5:10] = values
    args = train_args(photo_root, store, tmp_path / "run", "--recovery", "full", "--temperature", "1")
    code, _, err = run_main(args, capsys)
    line = assert_user_error((code, err), str(store), "'labels/logits'", "images 5-9", "NaN or infinite")
    assert "deleted" not in line and "lost" not in line, line
    assert "present" in line, line


# -- generate on a read-only complete store ---------------------------------------------------------------
@pytest.fixture
def read_only_copy(clean_store, tmp_path):
    """A copy of the clean store under a read-only bind mount (skipped where mounting is not allowed)."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    shutil.copytree(clean_store, src / "clean.zarr")
    ok = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True).returncode == 0
    if not ok:
        pytest.skip("cannot bind-mount here (needs root in a mount namespace)")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        assert not os.access(ro, os.W_OK) or _cannot_write(ro)
        yield ro / "clean.zarr"
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def _cannot_write(folder: Path) -> bool:
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return True
    return False


def test_generate_on_a_complete_store_on_a_read_only_file_system_has_nothing_to_do(read_only_copy, photo_root,
                                                                                   teacher_ckpt, capsys):
    code, out, err = run_main(gen_args(photo_root, read_only_copy, teacher_ckpt), capsys)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["chunks_written"] == 0 and summary["chunks_skipped"] == 5


# -- verify during a repair --------------------------------------------------------------------------------
def test_verify_during_a_repair_names_the_repair(clean_store, store_copy, photo_root, teacher_ckpt, monkeypatch,
                                                 capsys):
    import fkd_dali.labels.repair as repair
    from fkd_dali.store.tools import verify_store

    store = store_copy(clean_store)
    (store / "labels" / "prob" / "c" / "1" / "0" / "0").unlink()
    seen = []

    def verify_instead(cfg, index=None, teacher=None):  # what a second terminal sees while repair is at work
        seen.append(verify_store(str(store)).summary())
        raise KeyboardInterrupt  # then the repair is killed

    monkeypatch.setattr(repair, "generate_labels", verify_instead)
    code, _, err = run_main(["labels", "repair", store, "--data", photo_root, "--checkpoint", teacher_ckpt,
                             "--batch-size", "16", "--crops-per-round", "8", "--threads", "1", "--no-progress"],
                            capsys)
    assert code == 130, err
    (during,) = seen
    assert "labels repair" in during and "in progress" in during and "labels generate" not in during, during
    after = verify_store(str(store)).summary()  # the repair was killed: say how to finish it
    assert "labels repair" in after and "labels generate" not in after and "did not finish" in after, after
    code, _, err = run_main(train_args(photo_root, store, store.parent / "run"), capsys)
    assert_user_error((code, err), "labels repair")


# -- class folders renamed ---------------------------------------------------------------------------------
def test_renamed_class_folders_are_named(clean_store, photo_root, tmp_path):
    from fkd_dali.store.checks import index_for_store
    from fkd_dali.store.opening import open_store

    data = tmp_path / "data"
    shutil.copytree(photo_root, data)
    first = sorted(os.listdir(data))[0]
    os.rename(data / first, data / "zz_renamed")
    with pytest.raises(StoreMismatchError) as e:
        index_for_store(open_store(str(clean_store)), data)
    msg = str(e.value)
    assert f"'{first}'" in msg and "'zz_renamed'" in msg and "7 in store vs 7 on disk" not in msg, msg


# -- create_loader arguments -------------------------------------------------------------------------------
def test_create_loader_batch_size_zero_says_so(clean_store, photo_root):
    import fkd_dali

    with pytest.raises(ConfigError) as e:
        fkd_dali.create_loader(data=str(photo_root), labels=str(clean_store), num_crops=4, batch_size=0,
                               image_size=32, device="cpu", threads=1)
    msg = str(e.value)
    assert "batch_size" in msg and ">= 1" in msg and "multiple" not in msg, msg

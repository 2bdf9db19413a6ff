"""SIGKILL at awkward moments, then the same command again: nothing is lost or half-true.

Label generation killed at random moments (and during its last chunk) resumes to a store
equal, bit for bit, to an uninterrupted run; two unsharded writers on one store give the
same store; training killed mid-pass or mid-checkpoint-write resumes from a loadable
checkpoint; `labels merge` and `labels import-fkd` killed midway can be rerun; a disk
that fills up during generation leaves a valid store that resumes once there is room.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from fkd_dali.store.checks import check_chunk_files, read_written
from fkd_dali.store.opening import open_store
from fkd_dali.train.checkpoint import load_checkpoint

from .conftest import (
    assert_same_store,
    assert_user_error,
    done_flags,
    finish_main,
    gen_args,
    run_main,
    spawn,
)

N_CHUNKS = 5  # of `gen_args` stores: 21 images, 5 per chunk
POLL_S = 0.0005


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 240) -> None:
    """Poll until `ready()`; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the process ended before {what}: exit {proc.returncode}\n{proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_S)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def store_created(out: Path) -> Callable[[], bool]:
    """The store's attributes are written: creation is complete."""
    meta = Path(out) / "zarr.json"
    return lambda: meta.is_file() and '"fkd_dali"' in meta.read_text(errors="replace")


def assert_valid_after_kill(out: Path) -> None:
    """A killed store opens, and every chunk it flags done holds complete, readable data."""
    store = open_store(str(out))
    check_chunk_files(store)
    for c in np.flatnonzero(store.done()):
        read_written(store, *store.chunk_range(int(c)))


# -- label generation ------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generate_killed_at_a_random_moment_resumes_bit_exact(photo_root, teacher_ckpt, clean_store, tmp_path,
                                                              capsys, seed):
    """Killed 0-1.5 s after the store exists: during a chunk, between chunks, or while it exits."""
    out = tmp_path / "killed.zarr"
    proc = spawn(gen_args(photo_root, out, teacher_ckpt))
    wait_for(proc, store_created(out), "the store was created")
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    kill(proc)
    assert_valid_after_kill(out)
    finish_main(gen_args(photo_root, out, teacher_ckpt), capsys)
    assert_same_store(out, clean_store)


def test_generate_killed_during_its_last_chunk(photo_root, teacher_ckpt, clean_store, tmp_path, capsys):
    out = tmp_path / "killed.zarr"
    proc = spawn(gen_args(photo_root, out, teacher_ckpt))
    wait_for(proc, lambda: len(done_flags(out)) >= N_CHUNKS - 1, "all but the last chunk were done")
    kill(proc)
    assert_valid_after_kill(out)
    text = finish_main(gen_args(photo_root, out, teacher_ckpt), capsys)
    assert json.loads(text)["chunks_written"] in (0, 1)
    assert_same_store(out, clean_store)


def test_generate_killed_during_store_creation(photo_root, teacher_ckpt, clean_store, tmp_path, capsys):
    """The rerun names the half-created store and the command that clears it; after it, a rerun completes."""
    import shutil

    out = tmp_path / "killed.zarr"
    proc = spawn(gen_args(photo_root, out, teacher_ckpt))
    wait_for(proc, lambda: (out / "crops").is_dir(), "store creation began")
    kill(proc)
    code, _, err = run_main(gen_args(photo_root, out, teacher_ckpt), capsys)
    if code == 2:  # killed before the attributes: half-created, named at once with the remedy
        assert_user_error((code, err), "half-created", f"rm -r {out}")
        shutil.rmtree(out)
        finish_main(gen_args(photo_root, out, teacher_ckpt), capsys)
    else:  # the kill landed just after creation finished: the rerun resumed it
        assert code == 0, err[-3000:]
    assert_same_store(out, clean_store)


@pytest.mark.slow
def test_two_unsharded_writers_on_one_store(photo_root, teacher_ckpt, clean_store, tmp_path):
    """Both label every chunk (the same bytes) or one refuses clearly; the store equals a single run."""
    out = tmp_path / "twice.zarr"
    procs = [spawn(gen_args(photo_root, out, teacher_ckpt)) for _ in range(2)]
    results = [(p.communicate(timeout=300), p.returncode) for p in procs]
    codes = sorted(code for _, code in results)
    assert codes in ([0, 0], [0, 2]), results
    for (_, err), code in results:
        if code == 2:
            assert_user_error((code, err), str(out))
    assert_same_store(out, clean_store)


def test_full_disk_during_generation_then_resume(photo_root, teacher_ckpt, clean_store, tmp_path, capsys):
    """A 120 KiB tmpfs holds the created store and about two chunks (each file takes a 4 KiB page).

    Runs in-process: what is under test is the error and the resume, not a kill.
    """
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        out = disk / "store.zarr"
        code, _, err = run_main(gen_args(photo_root, out, teacher_ckpt), capsys)
        assert_user_error((code, err), str(out), "No space left on device", "the store is still valid", "rerun")
        assert 1 <= len(done_flags(out)) < N_CHUNKS
        assert_valid_after_kill(out)
        subprocess.run(["mount", "-o", "remount,size=2m", str(disk)], check=True)
        finish_main(gen_args(photo_root, out, teacher_ckpt), capsys)
        assert_same_store(out, clean_store)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# -- training ----------------------------------------------------------------------------------

def train_args(photo_root, store, out, *extra) -> list[str]:
    """10 steps per pass (21 images, 2 per step); a checkpoint at every pass end."""
    return ["train", "--data", str(photo_root), "--labels", str(store), "--arch", "resnet10t", "--epochs", "400",
            "-m", "4", "-b", "8", "--image-size", "32", "--opt", "adamw", "--lr", "0.001", "-j", "1",
            "--log-interval", "1", "--no-progress", "--output", str(out), *map(str, extra)]


def steps_logged(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [r for r in (json.loads(x) for x in lines if x.strip()) if r.get("kind") == "step"]


def resume_and_finish(photo_root, store, out: Path, steps: int, capsys) -> None:
    """Resume from out/last.pth for `steps` more steps; the run completes and its checkpoint loads."""
    ckpt = load_checkpoint(str(out / "last.pth"))
    target = ckpt["global_step"] + steps
    text = finish_main(train_args(photo_root, store, out, "--resume", out / "last.pth", "--max-steps", target),
                       capsys)
    assert json.loads(text.strip().splitlines()[-1])["steps"] == target
    assert load_checkpoint(str(out / "last.pth"))["global_step"] == target


@pytest.mark.slow
def test_train_killed_mid_pass_resumes(photo_root, clean_store, tmp_path, capsys):
    out = tmp_path / "run"
    proc = spawn(train_args(photo_root, clean_store, out))
    wait_for(proc, lambda: any(r["pass"] == 1 and r["step"] >= 3 for r in steps_logged(out)), "pass 1 was underway")
    kill(proc)
    ckpt = load_checkpoint(str(out / "last.pth"))
    assert (ckpt["pass"], ckpt["step"], ckpt["global_step"]) == (1, 0, 10)  # the end of pass 0
    resume_and_finish(photo_root, clean_store, out, 3, capsys)


@pytest.mark.slow
def test_train_killed_while_writing_a_checkpoint(photo_root, clean_store, tmp_path, capsys):
    out = tmp_path / "run"
    proc = spawn(train_args(photo_root, clean_store, out))
    wait_for(proc, lambda: (out / "last.pth").is_file(), "the first checkpoint was written")
    wait_for(proc, lambda: any(out.glob(".last.pth.tmp*.partial")), "a checkpoint write began")
    kill(proc)
    assert list(out.glob(".last.pth.tmp*.partial")), "the kill did not land inside the write"
    ckpt = load_checkpoint(str(out / "last.pth"))  # the previous checkpoint, whole
    assert ckpt["step"] == 0 and ckpt["global_step"] == 10 * ckpt["pass"] >= 10
    resume_and_finish(photo_root, clean_store, out, 2, capsys)


# -- merge and import ---------------------------------------------------------------------------

def synthetic_store(url: str, n: int, images_per_chunk: int, seed: int) -> None:
    """A complete store of n made-up images with many small chunks (merge reads no image file)."""
    from fkd_dali.crops.boxes import CropDistribution, encode_boxes, sample_crops
    from fkd_dali.data.index import DatasetIndex
    from fkd_dali.store.opening import create_store
    from fkd_dali.store.schema import CropLabels, LabelSpec, StoreLayout, StoreSpec, TeacherSpec

    m, k = 8, 5
    sizes = np.tile(np.array([[375, 500]], np.int32), (n, 1))
    index = DatasetIndex(root="", paths=[f"c/{i:05d}.JPEG" for i in range(n)], classes=np.zeros(n, np.int32),
                         sizes=sizes, nbytes=np.full(n, 1000, np.int64), class_names=["c"])
    spec = StoreSpec(crops_per_image=m, crop=CropDistribution(seed=0), label=LabelSpec(k=k),
                     teacher=TeacherSpec(f"t{seed}", "none", str(seed), (3, 224, 224), "bicubic", (0.5,) * 3,
                                         (0.5,) * 3), layout=StoreLayout(images_per_chunk, 8))
    store = create_store(url, index, spec)
    rng = np.random.default_rng(seed)
    for c in range(store.n_chunks):
        a, b = store.chunk_range(c)
        boxes, flips = sample_crops(sizes[a:b], np.arange(a, b), np.arange(m), spec.crop)
        ids = np.argsort(rng.random((b - a, m, 1000)), axis=-1)[..., :k].astype(np.int16)
        prob = -np.sort(-rng.dirichlet(np.ones(k + 1), (b - a, m))[..., :k], axis=-1)
        store.write_chunk(c, CropLabels(encode_boxes(boxes, sizes[a:b]), flips, ids, prob))


@pytest.fixture(scope="module")
def merge_inputs(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("merge")
    urls = [str(root / f"in{s}.zarr") for s in (1, 2)]
    for s, url in zip((1, 2), urls):
        synthetic_store(url, n=600, images_per_chunk=4, seed=s)
    return urls


@pytest.mark.slow
def test_merge_killed_midway_then_rerun(merge_inputs, tmp_path, capsys):
    want = tmp_path / "want.zarr"
    finish_main(["labels", "merge", *merge_inputs, "--out", want], capsys)
    out = tmp_path / "merged.zarr"
    proc = spawn(["labels", "merge", *merge_inputs, "--out", str(out)])
    wait_for(proc, lambda: len(done_flags(out)) >= 1, "the first merged chunk was done")
    kill(proc)
    assert_valid_after_kill(out)
    finish_main(["labels", "merge", *merge_inputs, "--out", out], capsys)
    assert_same_store(out, want)


@pytest.mark.slow
def test_import_fkd_killed_midway_then_rerun(clean_store, photo_root, tmp_path, capsys):
    from fkd_dali.interop.fkd_store import export_fkd, import_fkd
    from fkd_dali.store.schema import StoreLayout

    export_fkd(str(clean_store), tmp_path / "fkd")
    args = ["labels", "import-fkd", str(tmp_path / "fkd"), "--data", str(photo_root), "--images-per-chunk", "1"]
    want = tmp_path / "want.zarr"
    import_fkd(tmp_path / "fkd", photo_root, str(want), layout=StoreLayout(1))
    out = tmp_path / "imported.zarr"
    proc = spawn([*args, "--out", str(out)])
    wait_for(proc, lambda: len(done_flags(out)) >= 1, "the first imported chunk was done")
    kill(proc)
    finish_main([*args, "--out", out], capsys)
    assert_same_store(out, want)

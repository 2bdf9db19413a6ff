"""Shared pieces of the fault suite: CLI subprocesses, a tiny random teacher, fast generation options.

The suite plays a careless or hostile user: processes killed at random moments, stores
damaged on disk, full disks, foreign files. Generation here uses a random resnet10t
teacher (saved once) at 64 pixels on the 21 real photos of `photo_root`; what is under
test (resume, refusal, repair) does not depend on the teacher being good. Processes that
are killed run as subprocesses; everything else runs in-process through the CLI's `main`
with one torch thread (bit-identical to a one-thread subprocess, and it saves the ~10 s
start-up of torch + timm + DALI per command on 2 shared cores).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import zarr

from ..conftest import random_teacher

REPO = Path(__file__).resolve().parents[2]
CROP_ARRAYS = ("crops/box", "crops/flip", "labels/index", "labels/prob")
STORE_ARRAYS = CROP_ARRAYS + ("progress/done", "images/path", "images/size", "images/nbytes", "images/class")


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def spawn(args: list[str]) -> subprocess.Popen:
    """`python -m fkd_dali ARGS` in a subprocess (stdout/stderr captured as text)."""
    return subprocess.Popen([sys.executable, "-m", "fkd_dali", *args], cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fkd_dali", *args], cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_main(args: list, capsys) -> tuple[int, str, str]:
    """`fkd-dali ARGS` in this process with one torch thread: (exit code, stdout, stderr)."""
    from fkd_dali.cli import main

    with single_torch_thread():
        code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def finish_main(args: list, capsys) -> str:
    """`run_main` of a command that must succeed; returns its stdout."""
    code, out, err = run_main(args, capsys)
    assert code == 0, f"exit {code}\n{err[-3000:]}"
    return out


def assert_user_error(proc: subprocess.CompletedProcess | tuple[int, str], *words: str) -> str:
    """Exit status 2 and one `fkd-dali: error:` line on stderr (no traceback) holding every word."""
    code, err = (proc.returncode, proc.stderr) if isinstance(proc, subprocess.CompletedProcess) else proc
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert code == 2, f"exit {code}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    errors = [x for x in lines if x.startswith("fkd-dali: error:")]
    assert len(errors) == 1, err[-3000:]
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def gen_args(data, out, teacher_ckpt, *extra: str) -> list[str]:
    """`labels generate` with M=8, K=5, 5 chunks of 5 images (the last of 1), a random resnet10t at 64 px."""
    return ["labels", "generate", "--data", str(data), "--out", str(out), "--teacher", "resnet10t",
            "--checkpoint", str(teacher_ckpt), "-M", "8", "-K", "5", "--images-per-chunk", "5",
            "--slots-per-chunk", "8", "--batch-size", "16", "--crops-per-round", "8", "--input-size", "64",
            "--threads", "1", "--no-progress", *extra]


def store_arrays(url) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(url), mode="r")
    return {k: np.asarray(g[k][:]) for k in STORE_ARRAYS if k in g}


def assert_same_store(got, want) -> None:
    """Every array equal, bit for bit (NaN == NaN), and the same spec."""
    from fkd_dali.store.opening import open_store

    a, b = store_arrays(got), store_arrays(want)
    assert a.keys() == b.keys()
    for key in b:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert open_store(str(got)).spec == open_store(str(want)).spec


def done_flags(out: Path) -> list[str]:
    """Committed done flags; zarr writes each through a `<name>.<uuid>.partial` file first."""
    folder = Path(out) / "progress" / "done" / "c"
    return sorted(p.name for p in folder.iterdir() if ".partial" not in p.name) if folder.is_dir() else []


@pytest.fixture
def store_copy(tmp_path):
    """`store_copy(src)`: a fresh copy of a store under tmp_path (a new name each call)."""
    made = []

    def copy(src: Path) -> Path:
        made.append(src)
        dst = tmp_path / f"copy{len(made)}-{Path(src).name}"
        shutil.copytree(src, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """Random resnet10t weights (1000 classes), saved once."""
    return random_teacher(tmp_path_factory.mktemp("teacher") / "resnet10t_random.pth")


@pytest.fixture(scope="session")
def clean_store(photo_root, teacher_ckpt, tmp_path_factory) -> Path:
    """The uninterrupted store every fault run is compared with (one process, one torch thread)."""
    from fkd_dali.cli import main

    out = tmp_path_factory.mktemp("clean") / "clean.zarr"
    with single_torch_thread():
        assert main([str(a) for a in gen_args(photo_root, out, teacher_ckpt)]) == 0
    return out

"""Answers in seconds: a missing or unwritable local path is one line, exit 2, before torch, DALI or zarr load.

Each case runs the CLI in a fresh interpreter (as a user does), times it from start to
exit and lists the heavy modules it loaded. A case that reaches the library (seconds of
imports, then the same error) fails the module check; one that is slow fails the clock.
"""
from __future__ import annotations

import time

import pytest

from tests.unit.test_cli_startup import HEAVY, STORE_LIBS, heavy_loaded, run_cli

LIMIT_S = 2.0


@pytest.fixture
def paths(tmp_path):
    """An existing (empty) data folder and store folder, a file, and names that do not exist."""
    (tmp_path / "data").mkdir()
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "file").write_text("x")
    return {"D": str(tmp_path / "data"), "S": str(tmp_path / "s.zarr"), "F": str(tmp_path / "file"),
            "NO": str(tmp_path / "missing"), "UNDER_FILE": str(tmp_path / "file" / "out"), "T": str(tmp_path)}


CASES = [
    (["train", "--data", "{NO}", "--labels", "{S}"], "--data {NO}: no such folder"),
    (["train", "--data", "{F}", "--labels", "{S}"], "--data {F}: is a file, not a folder"),
    (["train", "--data", "{D}", "--labels", "{NO}"], "--labels {NO}: no such store"),
    (["train", "--config", "{NO}"], "--config {NO}: cannot read the file"),
    (["train", "--data", "{D}", "--labels", "{S}", "--resume", "{NO}"], "--resume {NO}: no such file"),
    (["train", "--data", "{D}", "--labels", "{S}", "--initial-checkpoint", "{NO}"],
     "--initial-checkpoint {NO}: no such file"),
    (["train", "--data", "{D}", "--labels", "{S}", "--val", "{NO}"], "--val {NO}: no such folder"),
    (["train", "--data", "{D}", "--labels", "{S}", "--val", "{D}", "--val-labels", "{NO}"],
     "--val-labels {NO}: no such file"),
    (["train", "--data", "{D}", "--labels", "{S}", "--output", "{UNDER_FILE}"],
     "--output {UNDER_FILE}: cannot be written ({F} is a file, not a folder)"),
    (["train", "--data", "{D}", "--labels", "{S}", "--output", "{F}"], "--output {F}: cannot be written (it is a file"),
    (["train", "--data", "{D}", "--labels", "relabel", "--label-maps", "{NO}"], "--label-maps {NO}: no such folder"),
    (["eval", "--data", "{D}", "--checkpoint", "{NO}"], "--checkpoint {NO}: no such file"),
    (["eval", "--data", "{NO}", "--checkpoint", "{F}"], "--data {NO}: no such folder"),
    (["eval", "--data", "{D}", "--checkpoint", "{F}", "--labels", "{NO}"], "--labels {NO}: no such store"),
    (["labels", "generate", "--data", "{NO}", "--out", "{S}"], "--data {NO}: no such folder"),
    (["labels", "generate", "--data", "{D}", "--out", "{S}", "--teacher", "resnet50", "--checkpoint", "{NO}"],
     "--checkpoint {NO}: no such file"),
    (["labels", "generate", "--data", "{D}", "--out", "{UNDER_FILE}"], "--out {UNDER_FILE}: cannot be written"),
    (["labels", "info", "{NO}"], "STORE {NO}: no such store"),
    (["labels", "verify", "{NO}"], "STORE {NO}: no such store"),
    (["labels", "verify", "{S}", "--data", "{NO}"], "--data {NO}: no such folder"),
    (["labels", "repair", "{S}", "--data", "{D}", "--checkpoint", "{NO}"], "--checkpoint {NO}: no such file"),
    (["labels", "merge", "{S}", "{NO}", "--out", "{T}/ens.zarr"], "STORE {NO}: no such store"),
    (["labels", "export-fkd", "{S}", "--out", "{UNDER_FILE}"], "--out {UNDER_FILE}: cannot be written"),
    (["labels", "show", "{S}", "--image", "0", "--data", "{D}", "--out", "{UNDER_FILE}/x.png"],
     "--out {UNDER_FILE}/x.png: cannot be written"),
    (["demo", "--output", "{UNDER_FILE}"], "--output {UNDER_FILE}: cannot be written"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=lambda v: " ".join(v[:3]) if isinstance(v, list) else None)
def test_a_bad_path_is_one_line_within_two_seconds(paths, argv, message):
    argv = [a.format(**paths) for a in argv]
    t0 = time.perf_counter()
    code, modules, stderr = run_cli(*argv)
    seconds = time.perf_counter() - t0
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert message.format(**paths) in stderr, stderr
    assert heavy_loaded(modules, HEAVY + STORE_LIBS) == []
    assert seconds < LIMIT_S, f"{seconds:.2f} s"


def test_nothing_is_created_by_a_refused_run(paths, tmp_path):
    out = tmp_path / "runs" / "r1"
    code, _, stderr = run_cli("train", "--data", paths["NO"], "--labels", paths["S"], "--output", str(out))
    assert code == 2 and not (tmp_path / "runs").exists(), stderr


def test_urls_are_left_to_the_library(paths):
    """A URL is not a local path: the early checks pass it on (the store library opens and checks it)."""
    code, modules, stderr = run_cli("labels", "info", "memory://fkd-early/none.zarr")
    assert code == 2 and "memory://fkd-early/none.zarr" in stderr and "zarr" in modules

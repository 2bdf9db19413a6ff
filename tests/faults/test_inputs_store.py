"""Hostile inputs, stores: damaged arrays and attributes, half-created stores, bad --out paths.

Every case must end in a correct result or one line naming the store, array or path
and what to do (exit status 2, `labels verify`: 1 with the problem listed), never in
a traceback or a silent wait.
"""
from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from fkd_dali.cli import main
from fkd_dali.data.index import build_index
from fkd_dali.errors import LabelStoreError
from fkd_dali.store.claim import CREATING_KEY, creator_marker
from fkd_dali.store.opening import create_store, open_or_create_store, open_store
from fkd_dali.store.schema import (
    ATTR_KEY,
    CHECKSUM_KEY,
    LabelSpec,
    StoreLayout,
    StoreSpec,
    TeacherSpec,
    array_defs,
    array_mismatches,
    attrs_checksum,
)
from fkd_dali.store.tools import verify_store

REPO = Path(__file__).resolve().parents[2]


def _spec() -> StoreSpec:
    from fkd_dali.crops.boxes import CropDistribution

    return StoreSpec(crops_per_image=4, crop=CropDistribution(), label=LabelSpec(k=3, num_classes=10),
                     teacher=TeacherSpec("t", "t", "", (3, 32, 32), "bilinear", (0.5,) * 3, (0.5,) * 3),
                     layout=StoreLayout(images_per_chunk=8, slots_per_chunk=2))


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("fkd-dali: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    return err


def _chunk_file(store: Path, array: str) -> Path:
    return sorted((store / array / "c").rglob("*"))[-1] if (store / array / "c").exists() else None


def _flip_byte(path: Path, offset: int = 20) -> None:
    data = bytearray(path.read_bytes())
    data[min(offset, len(data) - 1)] ^= 0x01
    path.write_bytes(bytes(data))


# -- every array checksummed ---------------------------------------------------------------------
def test_every_array_of_a_new_store_has_a_checksum(small_store):
    store = open_store(str(small_store))
    for d in array_defs(store.spec, store.n_images):
        assert array_mismatches(store.group, d) == [], d.name
    assert store.group.attrs[CHECKSUM_KEY] == attrs_checksum(store.meta)


@pytest.mark.parametrize("array", ["images/path", "progress/done"])
def test_a_flipped_byte_in_path_or_done_is_found(small_store, copy_store, array, capsys):
    url = copy_store(small_store)
    _flip_byte(_chunk_file(url, array))
    report = verify_store(str(url))
    assert not report.ok and report.problem("unreadable").count >= 1, report.summary()
    assert main(["labels", "verify", str(url)]) == 1
    assert "unreadable" in capsys.readouterr().out


def test_an_old_store_without_path_checksum_still_catches_a_redirected_image(small_store, copy_store):
    """fkd-dali 0.1 stores have no crc32c on images/path: the index rules catch the hostile edit."""
    url = copy_store(small_store)
    g = zarr.open_group(str(url), mode="r+")
    paths = [str(p) for p in g["images/path"][:]]
    paths[3] = paths[4]  # image 3 now points at another real photo (of the same class)
    del g["images/path"]
    g.create_array("images/path", shape=(len(paths),), dtype=str, chunks=(len(paths),))[:] = np.array(paths, object)
    report = verify_store(str(url))
    assert report.problem("index_fingerprint").count == 1
    assert report.problem("index_order").examples[0][0] == paths[4]
    assert any("images/path have no crc32c" in n for n in report.notes), report.summary()


# -- attributes ----------------------------------------------------------------------------------
def _edit(url: Path, change, keep_checksum: bool = False) -> None:
    g = zarr.open_group(str(url), mode="r+")
    meta = dict(g.attrs[ATTR_KEY])
    change(meta)
    g.attrs.update({ATTR_KEY: meta, **({CHECKSUM_KEY: attrs_checksum(meta)} if keep_checksum else {})})


@pytest.mark.parametrize("change, keep_checksum, words", [
    (lambda m: m["dataset"].update(n_images=20), True, "array images/path has shape (21,), expected (20,)"),
    (lambda m: m["dataset"].update(n_images="21"), True, "n_images is '21'"),
    (lambda m: m.pop("teacher"), True, "the key 'teacher' is missing"),
    (lambda m: m["label"].update(temperature=2.0), False, "do not match their checksum"),
    (lambda m: m.update(schema_version="1"), True, "schema version '1'; this fkd-dali"),
])
def test_edited_attributes_are_one_line_errors(small_store, copy_store, capsys, change, keep_checksum, words):
    url = copy_store(small_store)
    _edit(url, change, keep_checksum)
    for command in (["labels", "info", str(url)], ["labels", "verify", str(url)]):
        assert main(command) == 2
        _one_line_error(capsys, str(url), words)


def test_missing_progress_folder_is_one_line(small_store, copy_store, capsys):
    url = copy_store(small_store)
    shutil.rmtree(url / "progress")
    assert main(["labels", "info", str(url)]) == 2
    _one_line_error(capsys, "no array 'progress/done'", "regenerate it")


# -- half-created stores and --out paths ----------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _half_created(url: Path, marker: dict | None) -> None:
    """What a kill during `create_store` leaves: the group (with its marker) and some arrays."""
    g = zarr.open_group(str(url), mode="w-", attributes={CREATING_KEY: marker} if marker else None)
    g.create_array("images/path", shape=(3,), dtype=str, chunks=(3,))


def _generate_args(data: Path, out: Path) -> list[str]:
    return ["labels", "generate", "--data", str(data), "--out", str(out), "-M", "2", "-K", "3",
            "--input-size", "64", "--no-progress"]


def test_half_created_store_of_a_dead_writer_is_named_at_once(photo_root, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    _half_created(out, {**creator_marker(), "pid": _dead_pid(), "pid_start": None})
    assert main(_generate_args(photo_root, out)) == 2
    _one_line_error(capsys, f"{out} is a half-created store", f"`rm -r {out}`")
    shutil.rmtree(out)  # the command it gives works: the rerun then creates the store
    assert main(_generate_args(photo_root, out)) == 0
    assert open_store(str(out)).missing_chunks() == []


def test_zarr_group_that_is_not_a_store_is_named_at_once(photo_root, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    _half_created(out, None)  # no marker: an older fkd-dali's leftover or another tool's group
    assert main(_generate_args(photo_root, out)) == 2
    _one_line_error(capsys, "not an fkd-dali soft-label store", f"`rm -r {out}`")


def test_a_live_creator_is_waited_for_with_a_message(photo_index, tmp_path, caplog):
    out = tmp_path / "s.zarr"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from fkd_dali.store.claim import _process_start

        _half_created(out, {**creator_marker(), "pid": sleeper.pid, "pid_start": _process_start(sleeper.pid)})
        with caplog.at_level(logging.INFO), pytest.raises(LabelStoreError, match="after waiting 1 s"):
            open_or_create_store(str(out), photo_index, _spec(), wait_s=1.0)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert f"waiting for process {sleeper.pid}" in caplog.text and str(out) in caplog.text


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_text("x"), "is a file, not a store folder"),
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "a folder with other files in it"),
])
def test_out_that_is_a_file_or_a_full_folder_is_refused_at_once(photo_root, tmp_path, capsys, make, words):
    out = tmp_path / "out"
    make(out)
    assert main(_generate_args(photo_root, out)) == 2
    _one_line_error(capsys, str(out), words)


def test_out_on_a_read_only_path_is_one_line(photo_index, capsys):
    target = Path("/sys/fkd-dali-test.zarr")
    if os.access("/sys", os.W_OK) and not target.exists():
        try:
            target.mkdir()
            target.rmdir()
            pytest.skip("/sys is writable here")
        except OSError:
            pass
    with pytest.raises(LabelStoreError, match="cannot create the store /sys/fkd-dali-test.zarr"):
        create_store(str(target), photo_index, _spec())


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_while_creating_is_one_line_and_leaves_nothing(photo_root, tmp_path):
    out = tmp_path / "s.zarr"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "fkd_dali", *_generate_args(photo_root, out)], env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(700))
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and last.startswith("fkd-dali: error: ")
    assert f"creating the store {out} failed (File too large)" in last and "was removed" in last
    assert not out.exists()
    index = build_index(photo_root)
    assert create_store(str(out), index, _spec()).n_images == len(index)  # nothing stands in the way

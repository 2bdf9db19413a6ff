"""Issue 19, items 2 and 3: training runs only on the pixels the store vouches for.

A store records at labelling each file's crc32c and modification time (`images/crc32c`,
`images/mtime`). Training checks every file's crc32c the first time it reads it, on the
bytes it reads anyway, and checks at once the files whose modification time changed. A
photo swapped for another of the same byte size, or corrupted in place after labelling,
stops the run with one line naming the file and the remedy; `--skip-corrupt` leaves it
out of the run and counts it in metrics.jsonl; `--no-verify-images` turns the check off.
A file DALI cannot decode is named too and follows the same policy. `labels verify --data`
checks every digest. Stores of older releases (no digests) keep working.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from fkd_dali.data.digest import file_crc32c
from fkd_dali.store.opening import open_store
from fkd_dali.store.schema import ATTR_KEY, CHECKSUM_KEY, DIGEST_ATTR, attrs_checksum
from fkd_dali.store.tools import verify_store

from .conftest import assert_user_error, gen_args, run_main
from .test_inputs_images import _damage, _same_size_jpeg
from .test_repair import repair_args
from .test_store_damage import flip_byte, train_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def data(photo_root, tmp_path) -> Path:
    """A copy of the photos the clean store was labelled on (times kept, as `cp -p` or rsync -t would)."""
    root = tmp_path / "data"
    shutil.copytree(photo_root, root)
    return root


def _victim(data: Path, k: int = 9) -> tuple[Path, str]:
    rel = open_store_paths()[k]
    return data / rel, rel


_PATHS: list[str] = []


def open_store_paths() -> list[str]:
    return _PATHS


@pytest.fixture(autouse=True)
def _paths(clean_store):
    _PATHS[:] = [str(p) for p in zarr.open_group(str(clean_store), mode="r")["images/path"][:]]


def _swap_same_size(path: Path, keep_mtime: bool = True) -> None:
    """Replace a photo by another picture of exactly the same byte size (the fingerprint cannot see it)."""
    from PIL import Image

    st = path.stat()
    with Image.open(path) as im:
        size = im.size
    _same_size_jpeg(Image.new("RGB", size, (120, 60, 30)), path)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _corrupt_in_place(path: Path) -> None:
    st = path.stat()
    _damage(path, "zeros")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


# -- what a new store records ------------------------------------------------------------------------------
def test_a_new_store_records_each_files_crc32c_and_mtime(clean_store, photo_root):
    store = open_store(str(clean_store))
    assert store.has_digests and store.meta["dataset"][DIGEST_ATTR] == "crc32c"
    index = store.load_index(str(photo_root))
    for i in (0, 9, 20):
        assert int(index.digests.crc32c[i]) == file_crc32c(index.abspath(i))
        assert int(index.digests.mtime_ns[i]) == os.stat(index.abspath(i)).st_mtime_ns


# -- item 2: a swapped photo --------------------------------------------------------------------------------
def test_a_photo_swapped_for_one_of_the_same_size_stops_training(clean_store, data, tmp_path, capsys):
    path, rel = _victim(data)
    _swap_same_size(path)  # same size and mtime: only the content check can see it
    run = tmp_path / "run"
    code, _, err = run_main(train_args(data, clean_store, run, "--max-steps", "0"), capsys)
    assert code == 0, err  # nothing read, nothing checked: the mtime check at open sees no change
    code, _, err = run_main(train_args(data, clean_store, run), capsys)
    line = assert_user_error((code, err), str(path), "crc32c", "--skip-corrupt", "restore the original file")
    assert "not the file store" in line


def test_an_edited_photo_is_refused_before_the_first_step(clean_store, data, tmp_path, capsys):
    path, _ = _victim(data)
    _swap_same_size(path, keep_mtime=False)  # an edit: the modification time changed
    code, _, err = run_main(train_args(data, clean_store, tmp_path / "run", "--max-steps", "0"), capsys)
    assert_user_error((code, err), str(path), "crc32c")


def test_skip_corrupt_leaves_the_swapped_photo_out_and_counts_it(clean_store, data, tmp_path, capsys, caplog):
    path, rel = _victim(data)
    _swap_same_size(path)
    run = tmp_path / "run"
    with caplog.at_level("WARNING"):
        code, _, err = run_main(train_args(data, clean_store, run, "--skip-corrupt"), capsys)
    assert code == 0, err
    assert str(path) in caplog.text and "left out of this run" in caplog.text
    passes = [r for r in _metrics(run) if r["kind"] == "pass"]
    assert passes and all(r["images_skipped"] == 1 for r in passes), passes


def test_no_verify_images_turns_the_check_off(clean_store, data, tmp_path, capsys):
    path, _ = _victim(data)
    _swap_same_size(path, keep_mtime=False)
    code, _, err = run_main(train_args(data, clean_store, tmp_path / "run", "--no-verify-images", "--max-steps",
                                       "3"), capsys)
    assert code == 0, err


def test_verify_data_checks_every_digest(clean_store, data, capsys):
    path, rel = _victim(data)
    _swap_same_size(path)
    report = verify_store(str(clean_store), str(data))
    problem = report.problem("image_changed")
    assert problem is not None and problem.count == 1 and rel in problem.examples[0][0], report.summary()
    code, out, _ = run_main(["labels", "verify", clean_store, "--data", data], capsys)
    assert code == 1 and "image_changed" in out


def test_resuming_generation_on_a_changed_photo_is_refused(clean_store, store_copy, data, teacher_ckpt, capsys):
    store = store_copy(clean_store)
    (store / "progress" / "done" / "c" / "4").unlink()  # unfinished: a rerun resumes it
    path, rel = _victim(data)
    _swap_same_size(path)
    code, _, err = run_main(gen_args(data, store, teacher_ckpt), capsys)
    assert_user_error((code, err), rel, "crc32c", "another")


def test_relabelling_with_reference_refuses_a_changed_photo(clean_store, data, teacher_ckpt, tmp_path, capsys):
    path, rel = _victim(data)
    _swap_same_size(path)
    code, _, err = run_main(gen_args(data, tmp_path / "relabel.zarr", teacher_ckpt, "--reference", clean_store),
                            capsys)
    assert_user_error((code, err), str(path), "crc32c", str(clean_store))


# -- item 3: a photo corrupted after labelling -----------------------------------------------------------------
def test_a_photo_corrupted_after_labelling_is_named(clean_store, data, tmp_path, capsys):
    path, _ = _victim(data, k=4)
    _corrupt_in_place(path)
    code, _, err = run_main(train_args(data, clean_store, tmp_path / "run"), capsys)
    assert_user_error((code, err), str(path), "--skip-corrupt")
    run = tmp_path / "skip"
    code, _, err = run_main(train_args(data, clean_store, run, "--skip-corrupt"), capsys)
    assert code == 0, err
    assert all(r["images_skipped"] == 1 for r in _metrics(run) if r["kind"] == "pass")


def _undecodable(path: Path) -> None:
    """Keep the start and end markers and the size, make the rest of the header garbage: DALI fails to decode."""
    raw = bytearray(path.read_bytes())
    raw[2:400] = bytes([0xFF, 0xC0]) + bytes(396)
    path.write_bytes(bytes(raw))


def test_a_decode_error_names_the_file_and_follows_the_policy(clean_store, data, tmp_path, capsys):
    """Without the digest check (an old store, or --no-verify-images) DALI's own failure names the file."""
    path, _ = _victim(data, k=6)
    _undecodable(path)
    code, _, err = run_main(train_args(data, clean_store, tmp_path / "run", "--no-verify-images"), capsys)
    assert_user_error((code, err), str(path), "--skip-corrupt")
    run = tmp_path / "skip"
    code, _, err = run_main(train_args(data, clean_store, run, "--no-verify-images", "--skip-corrupt"), capsys)
    assert code == 0, err
    passes = [r for r in _metrics(run) if r["kind"] == "pass"]
    assert passes and all(r["images_skipped"] == 1 for r in passes), passes
    assert passes[0]["step"] == 10  # every step of the pass ran, one image short


# -- older stores ---------------------------------------------------------------------------------------------
def test_a_store_without_digests_still_trains(clean_store, store_copy, data, tmp_path, capsys, caplog):
    store = store_copy(clean_store)
    g = zarr.open_group(str(store), mode="r+")
    meta = dict(g.attrs[ATTR_KEY])
    meta["dataset"] = {k: v for k, v in meta["dataset"].items() if k != DIGEST_ATTR}
    g.attrs.update({ATTR_KEY: meta, CHECKSUM_KEY: attrs_checksum(meta)})
    for key in ("images/crc32c", "images/mtime"):
        del g[key]
    assert not open_store(str(store)).has_digests
    with caplog.at_level("INFO"):
        code, _, err = run_main(train_args(data, store, tmp_path / "run", "--max-steps", "2"), capsys)
    assert code == 0, err
    assert "records no file digests" in caplog.text
    assert verify_store(str(store), str(data)).ok


# -- repair cannot re-vouch for files ------------------------------------------------------------------------
def test_repair_refuses_a_damaged_digest_array(clean_store, store_copy, photo_root, teacher_ckpt, capsys):
    store = store_copy(clean_store)
    flip_byte(store / "images" / "crc32c" / "c" / "0")
    code, _, err = run_main(repair_args(store, photo_root, teacher_ckpt), capsys)
    assert_user_error((code, err), "images/crc32c", "regenerate")


def test_repair_does_not_relabel_a_changed_photo(clean_store, store_copy, data, teacher_ckpt, capsys):
    store = store_copy(clean_store)
    (store / "labels" / "prob" / "c" / "1" / "0" / "0").unlink()  # images 5-9 are recomputed
    path = data / open_store_paths()[7]
    _swap_same_size(path)
    code, _, err = run_main(repair_args(store, data, teacher_ckpt), capsys)
    assert_user_error((code, err), str(path), "crc32c", str(store))


def test_repair_rebuilds_a_damaged_mtime_array(clean_store, store_copy, photo_root, teacher_ckpt, capsys):
    store = store_copy(clean_store)
    flip_byte(store / "images" / "mtime" / "c" / "0")
    code, out, err = run_main(repair_args(store, photo_root, teacher_ckpt), capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["index_rebuilt"] == ["images/mtime"]
    assert verify_store(str(store)).ok
    np.testing.assert_array_equal(open_store(str(store)).read("images/crc32c"),
                                  open_store(str(clean_store)).read("images/crc32c"))

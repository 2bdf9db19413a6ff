"""Issue 19, item 1: training never trusts array metadata that differs from what the store's attributes imply.

A hostile edit of `crops/box/zarr.json` (uint16 -> int16) used to train, exit 0, on empty
boxes while `labels verify` saw it. Now every command that opens a store refuses a
dtype, chunk shape, fill value or missing crc32c that the attributes do not imply, in one
line naming the array; `labels verify` still lists it as a problem (exit 1). Stores of
older releases legitimately lack crc32c on images/path and progress/done: they still open.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from fkd_dali.store.opening import open_checked_store, open_store
from fkd_dali.store.tools import verify_store

from .conftest import assert_user_error, run_main
from .test_store_damage import train_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def edit_array_json(store: Path, key: str, change) -> None:
    path = store.joinpath(*key.split("/"), "zarr.json")
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _chunks(meta: dict) -> None:
    meta["chunk_grid"]["configuration"]["chunk_shape"][0] = 4


@pytest.mark.parametrize("key, change, words", [
    ("crops/box", lambda m: m.update(data_type="int16"), ["crops/box", "dtype int16, expected uint16"]),
    ("labels/prob", lambda m: m.update(fill_value=0.0), ["labels/prob", "fill value"]),
    ("labels/index", _chunks, ["labels/index", "chunks (4, 8, 5), expected (5, 8, 5)"]),
    ("crops/flip", lambda m: m.update(codecs=m["codecs"][:-1]), ["crops/flip", "no crc32c checksum"]),
])
def test_train_refuses_edited_array_metadata(clean_store, store_copy, photo_root, tmp_path, capsys, key, change,
                                             words):
    store = store_copy(clean_store)
    edit_array_json(store, key, change)
    code, _, err = run_main(train_args(photo_root, store, tmp_path / "run"), capsys)
    line = assert_user_error((code, err), str(store), *words)
    assert "labels verify" in line or "regenerate" in line.lower(), line
    assert not (tmp_path / "run" / "last.pth").exists()
    report = verify_store(str(store))  # verify still opens it and lists the edit
    assert report.problem("metadata") is not None, report.summary()


def test_info_and_verify_still_open_an_edited_store(clean_store, store_copy, capsys):
    store = store_copy(clean_store)
    edit_array_json(store, "crops/box", lambda m: m.update(data_type="int16"))
    code, out, _ = run_main(["labels", "verify", store], capsys)
    assert code == 1 and "dtype int16" in out
    code, out, _ = run_main(["labels", "info", store], capsys)
    assert code == 0 and "21 images" in out


def test_an_old_store_without_crc32c_on_path_and_done_still_opens(clean_store, store_copy, photo_root):
    store = store_copy(clean_store)
    g = zarr.open_group(str(store), mode="r+")
    for key in ("images/path", "progress/done"):
        values = np.asarray(g[key][:])
        arr = g[key]
        shape, chunks, fill = arr.shape, arr.chunks, arr.fill_value
        del g[key]
        g.create_array(key, shape=shape, dtype=str if key == "images/path" else bool, chunks=chunks,
                       fill_value=fill, compressors=None)[:] = values
    opened, index = open_checked_store(str(store), data=str(photo_root))
    assert len(index) == 21 and opened.done().all()
    assert open_store(str(store)).n_images == 21

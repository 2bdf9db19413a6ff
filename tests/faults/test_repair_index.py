"""Issue 19, item 5: `labels repair` rebuilds damaged index arrays from --data or refuses; never exit 0 while
`labels verify` still fails.

The index arrays (images/path, images/class, images/size, images/nbytes) are not teacher
output: repair rebuilds them from the folder, but only when the folder's fingerprint
(relative paths, byte sizes, class names) is the one the store recorded, and checks the
rebuilt arrays against whatever is still readable. What it cannot rebuild is refused
in one line naming the array.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest

from fkd_dali.store.tools import verify_store

from .conftest import assert_same_store, assert_user_error, finish_main, run_main
from .test_repair import repair_args
from .test_store_damage import flip_byte

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def index_chunk(store, key: str):
    return store.joinpath(*key.split("/"), "c", *(["0", "0"] if key == "images/size" else ["0"]))


@pytest.mark.parametrize("keys", [["images/path"], ["images/size"], ["images/path", "images/class", "images/nbytes"]])
def test_repair_rebuilds_damaged_index_arrays_from_the_folder(clean_store, store_copy, photo_root, teacher_ckpt,
                                                             capsys, keys):
    store = store_copy(clean_store)
    for key in keys:
        flip_byte(index_chunk(store, key))
    assert not verify_store(str(store)).ok
    summary = json.loads(finish_main(repair_args(store, photo_root, teacher_ckpt), capsys).strip().splitlines()[-1])
    assert summary["index_rebuilt"] == sorted(keys) and summary["damaged_chunks"] == []
    assert verify_store(str(store)).ok
    assert_same_store(store, clean_store)


def test_repair_refuses_to_rebuild_the_index_from_another_folder(clean_store, store_copy, photo_root,
                                                                teacher_ckpt, tmp_path, capsys):
    store = store_copy(clean_store)
    flip_byte(index_chunk(store, "images/path"))
    other = tmp_path / "other"
    shutil.copytree(photo_root, other)
    victim = sorted((other / sorted(os.listdir(other))[0]).iterdir())[0]
    victim.rename(victim.with_name("renamed_" + victim.name))
    code, _, err = run_main(repair_args(store, other, teacher_ckpt), capsys)
    assert_user_error((code, err), str(store), "images/path", "cannot be rebuilt", "--data")
    assert not verify_store(str(store)).ok  # untouched


def test_repair_never_exits_0_while_verify_fails(clean_store, store_copy, photo_root, teacher_ckpt, capsys,
                                                 monkeypatch):
    """Whatever repair could not fix (here: recomputation that silently wrote nothing) is an error, not success."""
    import fkd_dali.labels.repair as repair

    store = store_copy(clean_store)
    (store / "labels" / "prob" / "c" / "1" / "0" / "0").unlink()
    monkeypatch.setattr(repair, "generate_labels", lambda cfg, index=None, teacher=None: None)
    code, _, err = run_main(repair_args(store, photo_root, teacher_ckpt), capsys)
    assert_user_error((code, err), str(store), "labels verify", "still")

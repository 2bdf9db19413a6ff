"""`labels repair` gives back the undamaged store bit for bit, recomputing only the damaged chunks,
and refuses stores whose labels it cannot recompute.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from fkd_dali.errors import ConfigError, LabelStoreError
from fkd_dali.labels.repair import RepairOptions, repair_store
from fkd_dali.store.opening import open_store
from fkd_dali.store.tools import verify_store

from .conftest import assert_same_store, assert_user_error, finish_main, gen_args, run_main
from .test_store_damage import chunk_file, flip_byte, truncate


def repair_args(store, photo_root, teacher_ckpt, *extra) -> list[str]:
    """The options `gen_args` gave that the store does not record (plus the store and data)."""
    return ["labels", "repair", str(store), "--data", str(photo_root), "--checkpoint", str(teacher_ckpt),
            "--batch-size", "16", "--crops-per-round", "8", "--threads", "1", "--no-progress", *extra]


def test_repair_restores_the_original_store_bit_for_bit(clean_store, store_copy, photo_root, teacher_ckpt, capsys):
    store = store_copy(clean_store)
    chunk_file(store, "labels/prob", chunk=0).unlink()  # deleted: reads back as NaN
    flip_byte(chunk_file(store, "labels/index", chunk=2))  # crc32c mismatch
    chunk_file(store, "crops/flip", chunk=3).unlink()  # deleted: reads back as plausible False flips
    truncate(store / "progress" / "done" / "c" / "4")  # an unreadable done flag
    before = {c: chunk_file(store, "labels/prob", c).stat().st_mtime_ns for c in (1, 3)}
    assert verify_store(str(clean_store)).ok

    summary = json.loads(finish_main(repair_args(store, photo_root, teacher_ckpt), capsys).strip().splitlines()[-1])
    assert summary["damaged_chunks"] == [0, 2, 3]
    assert summary["chunks_written"] == 4 and summary["chunks_skipped"] == 1  # 0, 2, 3 and the unflagged 4
    assert_same_store(store, clean_store)
    assert verify_store(str(store)).ok
    assert chunk_file(store, "labels/prob", 1).stat().st_mtime_ns == before[1]  # intact chunks untouched
    assert chunk_file(store, "labels/prob", 3).stat().st_mtime_ns != before[3]  # every file of a damaged one redone


def test_repair_of_an_undamaged_store_does_nothing(clean_store, store_copy, photo_root, capsys):
    from fkd_dali.cli import main

    store = store_copy(clean_store)
    assert main(["labels", "repair", str(store), "--data", str(photo_root), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"store": str(store), "damaged_chunks": [], "unfinished_chunks": [], "chunks_written": 0}
    assert_same_store(store, clean_store)


def test_repair_needs_the_teacher_weights_the_store_records(clean_store, store_copy, photo_root, tmp_path,
                                                            capsys):
    from fkd_dali.cli import main

    store = store_copy(clean_store)
    chunk_file(store, "labels/prob", chunk=1).unlink()
    code = main(["labels", "repair", str(store), "--data", str(photo_root), "--no-progress"])
    assert_user_error((code, capsys.readouterr().err), "resnet10t", "--checkpoint")  # plain timm: not shipped
    import timm

    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet10t", num_classes=1000).state_dict(), other)
    code = main([str(a) for a in repair_args(store, photo_root, other)])
    assert_user_error((code, capsys.readouterr().err), "checkpoint_sha256")
    assert verify_store(str(store)).damaged_chunks == [1]  # refused before anything was cleared


def test_repair_refuses_another_dataset(clean_store, store_copy, tmp_path):
    from fkd_dali.data.sample_data import build_photo_dataset

    store = store_copy(clean_store)
    chunk_file(store, "labels/prob", chunk=1).unlink()
    other = build_photo_dataset(tmp_path / "other", images_per_class=2, seed=1)
    with pytest.raises(LabelStoreError, match="another dataset"):
        repair_store(str(store), RepairOptions(data=str(other), progress=False))


@pytest.fixture
def imported_store(clean_store, photo_root, tmp_path):
    from fkd_dali.interop.fkd_store import export_fkd, import_fkd

    export_fkd(str(clean_store), tmp_path / "fkd")
    url = str(tmp_path / "imported.zarr")
    import_fkd(tmp_path / "fkd", photo_root, url)
    return url


def test_repair_refuses_stores_it_cannot_recompute(imported_store, photo_root):
    with pytest.raises(LabelStoreError, match="imported from FKD label files"):
        repair_store(imported_store, RepairOptions(data=str(photo_root), progress=False))


@pytest.mark.slow
def test_repair_of_a_relabelled_store_needs_its_reference(clean_store, store_copy, photo_root, teacher_ckpt,
                                                          tmp_path, capsys):
    """Crops that are not the seed's (here: FKD files with other boxes) are caught before anything is cleared."""
    from fkd_dali.interop.fkd_files import fkd_file_path, read_fkd_file, write_fkd_file
    from fkd_dali.interop.fkd_store import export_fkd, import_fkd

    export_fkd(str(clean_store), tmp_path / "fkd")
    rel = open_store(str(clean_store)).load_index().paths
    for path in (fkd_file_path(tmp_path / "fkd", p) for p in rel):  # other boxes: halve every crop
        f = read_fkd_file(path)
        coords = f.coords.copy()
        coords[:, 2:] = np.maximum(coords[:, 2:] / 2, 0.01)
        write_fkd_file(path, coords, f.flip, f.index, f.prob)
    imported = str(tmp_path / "imported.zarr")
    import_fkd(tmp_path / "fkd", photo_root, imported, layout=None)
    relabel = tmp_path / "relabel.zarr"
    finish_main(gen_args(photo_root, relabel, teacher_ckpt, "--reference", imported), capsys)
    original = store_copy(relabel)
    chunk_file(relabel, "labels/prob", chunk=1).unlink()

    code, _, err = run_main(repair_args(relabel, photo_root, teacher_ckpt), capsys)
    assert_user_error((code, err), "--reference", "images 0-4")
    assert zarr.open_group(str(relabel), mode="r")["progress/done"][1]  # nothing cleared
    finish_main(repair_args(relabel, photo_root, teacher_ckpt, "--reference", imported), capsys)
    assert_same_store(relabel, original)


def test_repair_config_comes_from_the_store(clean_store, photo_root, teacher_ckpt):
    from fkd_dali.labels.repair import repair_config

    store = open_store(str(clean_store))
    cfg = repair_config(store, RepairOptions(data=str(photo_root), checkpoint=str(teacher_ckpt), batch_size=16))
    assert (cfg.teacher, cfg.crops_per_image, cfg.top_k, cfg.seed, cfg.images_per_chunk, cfg.slots_per_chunk,
            cfg.input_size, cfg.batch_size, cfg.out) == ("resnet10t", 8, 5, 0, 5, 8, 64, 16, str(clean_store))
    with pytest.raises(ConfigError):
        repair_config(store, RepairOptions(data=str(photo_root), batch_size=0))

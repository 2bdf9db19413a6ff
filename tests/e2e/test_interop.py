"""Store <-> FKD per-image files: export, import, and the round trip through both."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import zarr

from fkd_dali.cli import main
from fkd_dali.errors import LabelStoreError
from fkd_dali.interop.fkd_files import fkd_file_path, read_fkd_file, write_fkd_file
from fkd_dali.interop.fkd_store import export_fkd, import_fkd
from fkd_dali.store.opening import open_store
from fkd_dali.store.schema import StoreLayout
from fkd_dali.store.tools import store_info, verify_store

FIELDS = ("boxes", "flips", "index", "prob")


@pytest.fixture(scope="module")
def exported(small_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("fkd") / "labels"
    assert export_fkd(str(small_store), out) == 21
    return out


def test_export_writes_one_file_per_image(small_store, exported):
    store = open_store(str(small_store))
    index = store.load_index()
    first = store.read_images(0, 1)
    files = sorted(exported.rglob("*.tar"))
    assert len(files) == 21 and not list(exported.rglob("*.partial"))
    labels = read_fkd_file(fkd_file_path(exported, index.paths[0]))
    assert labels.coords.dtype == np.float32 and labels.coords.shape == (8, 4)
    np.testing.assert_array_equal(labels.index, first.index[0])
    np.testing.assert_array_equal(labels.prob, first.prob[0].astype(np.float32))


def test_round_trip_is_exact(small_store, exported, photo_root, tmp_path):
    out = tmp_path / "imported.zarr"
    store = import_fkd(exported, photo_root, str(out), teacher_name="lite0-from-fkd", layout=StoreLayout(5, 3))
    assert store.n_chunks == 5 and not store.missing_chunks()
    original = open_store(str(small_store)).read_images(0, 21)
    back = open_store(str(out)).read_images(0, 21)
    for f in FIELDS:
        a, b = getattr(original, f), getattr(back, f)
        assert a.dtype == b.dtype and np.array_equal(a, b), f
    assert store.fingerprint == open_store(str(small_store)).fingerprint
    info = store_info(str(out))
    assert info["teacher"]["name"] == "lite0-from-fkd" and info["teacher"]["timm_name"] == "unknown"
    assert "imported" in info
    assert verify_store(str(out), str(photo_root)).ok


def test_export_refuses_incomplete_store(small_store, copy_store, tmp_path):
    url = copy_store(small_store)
    zarr.open_group(str(url), mode="r+")["progress/done"][2] = False
    with pytest.raises(LabelStoreError, match="incomplete"):
        export_fkd(str(url), tmp_path / "out")


def test_import_names_missing_file_and_resumes(small_store, exported, photo_root, tmp_path):
    fkd = tmp_path / "fkd"
    shutil.copytree(exported, fkd)
    victim = sorted(fkd.rglob("*.tar"))[12]
    victim.unlink()
    out = tmp_path / "s.zarr"
    with pytest.raises(LabelStoreError, match=re.escape(str(victim))):
        import_fkd(fkd, photo_root, str(out), layout=StoreLayout(8, 4))
    partial = open_store(str(out))
    assert partial.missing_chunks() == [1, 2] and partial.made_by == "import-fkd"  # image 12: chunk 1 failed
    with pytest.raises(LabelStoreError, match="rerun the same `fkd-dali labels import-fkd` command"):
        partial.check_complete()
    shutil.copy(exported / victim.relative_to(fkd), victim)  # fixed: the rerun finishes the store
    store = import_fkd(fkd, photo_root, str(out), layout=StoreLayout(8, 4))
    assert store.missing_chunks() == []
    original = open_store(str(small_store)).read_images(0, 21)
    assert all(np.array_equal(getattr(store.read_images(0, 21), f), getattr(original, f)) for f in FIELDS)


@pytest.mark.parametrize("what", ["crops", "classes"])
def test_import_names_inconsistent_file(exported, photo_root, tmp_path, what):
    fkd = tmp_path / "fkd"
    shutil.copytree(exported, fkd)
    victim = sorted(fkd.rglob("*.tar"))[-1]
    lab = read_fkd_file(victim)
    if what == "crops":
        write_fkd_file(victim, lab.coords[:-1], lab.flip[:-1], lab.index[:-1], lab.prob[:-1])
    else:
        write_fkd_file(victim, lab.coords, lab.flip, lab.index[:, :3], lab.prob[:, :3])
    with pytest.raises(LabelStoreError, match=re.escape(str(victim)) + ".*first file holds M=8, K=5"):
        import_fkd(fkd, photo_root, str(tmp_path / "s.zarr"))


def test_import_checks_num_classes(exported, photo_root, tmp_path):
    with pytest.raises(LabelStoreError, match="num_classes=10"):
        import_fkd(exported, photo_root, str(tmp_path / "s.zarr"), num_classes=10)


def test_cli_interop(small_store, exported, photo_root, tmp_path, capsys):
    out_dir, store = tmp_path / "fkd", tmp_path / "s.zarr"
    assert main(["labels", "export-fkd", str(small_store), "--out", str(out_dir)]) == 0
    assert len(list(out_dir.rglob("*.tar"))) == 21
    args = ["labels", "import-fkd", str(out_dir), "--data", str(photo_root), "--out", str(store),
            "--teacher-name", "t", "--images-per-chunk", "16"]
    assert main(args) == 0
    assert open_store(str(store)).spec.teacher.name == "t"
    capsys.readouterr()
    assert main(args) == 0  # the store is complete already: nothing to do
    assert main(args[:-2] + ["--images-per-chunk", "8"]) == 2  # another layout: refused, naming it
    assert "layout.images_per_chunk: store has 16, run asks 8" in capsys.readouterr().err
    assert main(["labels", "import-fkd", str(tmp_path / "none"), "--data", str(photo_root),
                 "--out", str(tmp_path / "t.zarr")]) == 2

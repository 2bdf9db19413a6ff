"""Hostile inputs, FKD interop: images that share a stem, and export targets that cannot be written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fkd_dali.cli import main
from fkd_dali.errors import LabelStoreError
from fkd_dali.interop.fkd_files import fkd_file_path, fkd_file_paths
from fkd_dali.interop.fkd_store import export_fkd, import_fkd
from fkd_dali.store.opening import open_store

FIELDS = ("boxes", "flips", "index", "prob")


@pytest.mark.parametrize("paths, names", [
    (["c/a.JPEG", "c/b.JPEG"], ["c/a.tar", "c/b.tar"]),  # FKD's own names when nothing collides
    (["c/a.JPEG", "c/a.jpg", "c/a.png", "c/b.JPEG"], ["c/a.JPEG.tar", "c/a.jpg.tar", "c/a.png.tar", "c/b.tar"]),
    (["c/a.JPEG", "c/a.JPEG.png", "c/a.png"], ["c/a.JPEG.tar", "c/a.JPEG.png.tar", "c/a.png.tar"]),
    (["c/a.JPEG", "d/a.jpg"], ["c/a.tar", "d/a.tar"]),  # other folders never collide
    (["c/x/a.JPEG", "c/x/a.png", "c/a.png"], ["c/x/a.JPEG.tar", "c/x/a.png.tar", "c/a.tar"]),
])
def test_label_file_names_are_distinct(tmp_path, paths, names):
    got = [p.relative_to(tmp_path).as_posix() for p in fkd_file_paths(tmp_path, paths)]
    assert got == names and len(set(got)) == len(got)
    if len({fkd_file_path(tmp_path, p) for p in paths}) == len(paths):
        assert got == [fkd_file_path(tmp_path, p).relative_to(tmp_path).as_posix() for p in paths]


@pytest.fixture
def shared_stems(photo_root, tmp_path) -> Path:
    """One class holding a.JPEG, a.jpg and a.png (three different photos) and b.JPEG."""
    root = tmp_path / "data"
    photos = sorted(photo_root.rglob("*.JPEG"))[:4]
    (root / "c").mkdir(parents=True)
    shutil.copy(photos[0], root / "c" / "a.JPEG")
    shutil.copy(photos[1], root / "c" / "a.jpg")
    with Image.open(photos[2]) as im:
        im.save(root / "c" / "a.png")
    shutil.copy(photos[3], root / "c" / "b.JPEG")
    return root


def test_export_and_import_keep_images_with_a_shared_stem_apart(shared_stems, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    assert main(["labels", "generate", "--data", str(shared_stems), "--out", str(store), "-M", "3", "-K", "3",
                 "--input-size", "64", "--threads", "1", "--no-progress"]) == 0
    out = tmp_path / "fkd"
    assert main(["labels", "export-fkd", str(store), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tar"))
    assert summary["files"] == 4 and files == ["c/a.JPEG.tar", "c/a.jpg.tar", "c/a.png.tar", "c/b.tar"]
    back = import_fkd(out, shared_stems, str(tmp_path / "back.zarr"), layout=open_store(str(store)).spec.layout)
    original = open_store(str(store)).read_images(0, 4)
    again = back.read_images(0, 4)
    for f in FIELDS:
        assert np.array_equal(getattr(again, f), getattr(original, f)), f
    assert not np.array_equal(original.index[0], original.index[1])  # three photos, three labellings


def test_import_of_fkd_named_files_explains_a_shared_stem(shared_stems, tmp_path):
    """FKD's own naming gives a.JPEG, a.jpg and a.png one file between them: refused, with why."""
    store = tmp_path / "s.zarr"
    main(["labels", "generate", "--data", str(shared_stems), "--out", str(store), "-M", "3", "-K", "3",
          "--input-size", "64", "--threads", "1", "--no-progress"])
    out = tmp_path / "fkd"
    export_fkd(str(store), out)
    for name in ("a.JPEG.tar", "a.jpg.tar"):
        (out / "c" / name).unlink()
    (out / "c" / "a.png.tar").rename(out / "c" / "a.tar")
    with pytest.raises(LabelStoreError, match=r"a\.JPEG\.tar does not exist: image c/a\.JPEG shares its stem"):
        import_fkd(out, shared_stems, str(tmp_path / "back.zarr"))


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_text("x"), "is a file"),
    (lambda p: None, "cannot create --out /sys/"),
])
def test_export_to_a_file_or_a_read_only_path_is_one_line(small_store, tmp_path, capsys, make, words):
    out = tmp_path / "out.txt"
    if words.startswith("cannot"):
        out = Path("/sys/fkd-dali-export-test")
    make(out)
    assert main(["labels", "export-fkd", str(small_store), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and str(out) in err, err

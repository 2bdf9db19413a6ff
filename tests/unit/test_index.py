"""Dataset index: class numbering, header sizes, fingerprint, and errors that name the bad file."""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets.folder import find_classes

from fkd_dali.data.index import build_index, dataset_fingerprint, read_image_header, scan_folder
from fkd_dali.errors import CorruptImageError, DatasetIndexError, StoreMismatchError
from fkd_dali.loaders.feed import read_encoded
from fkd_dali.store.checks import check_dataset, index_for_store


def _jpeg(path: Path, size=(40, 30), color=(200, 30, 30), **save) -> Path:
    """A small real JPEG of PIL size (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, **({"quality": 90} | save))
    return path


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    """Three classes created in unsorted order, two images each, varied sizes."""
    root = tmp_path / "data"
    for ci, cls in enumerate(["zebra", "Apple", "mango"]):
        for j in range(2):
            _jpeg(root / cls / f"img_{j}.JPEG", size=(40 + 10 * ci + j, 30 + 5 * j))
    return root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- content ---------------------------------------------------------------------------------

def test_class_ids_follow_sorted_folder_names_like_imagefolder(tiny_root):
    index = build_index(tiny_root, workers=2)
    tv_names, tv_ids = find_classes(str(tiny_root))
    assert index.class_names == tv_names == ["Apple", "mango", "zebra"]
    for path, cid in zip(index.paths, index.classes):
        assert tv_ids[path.split("/")[0]] == cid
    assert index.paths == sorted(index.paths, key=lambda p: (tv_ids[p.split("/")[0]], p))
    assert index.classes.dtype == np.int32 and list(index.classes) == [0, 0, 1, 1, 2, 2]


def test_sizes_from_headers_match_pil(photo_index):
    assert len(photo_index) == 21
    for i, rel in enumerate(photo_index.paths):
        path = os.path.join(photo_index.root, rel)
        with Image.open(path) as im:
            width, height = im.size
        assert tuple(photo_index.sizes[i]) == (height, width), rel
        assert photo_index.nbytes[i] == os.path.getsize(path)
    assert photo_index.sizes.dtype == np.int32
    # odd formats are indexed like the rest
    assert any(p.endswith(".png") for p in photo_index.paths)


def test_index_ignores_exif_orientation(tmp_path):
    """Sizes are the stored pixels' (height, width) even when EXIF says 'rotate 90'."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW
    path = _jpeg(tmp_path / "d" / "c" / "rot.JPEG", size=(64, 16), exif=exif.tobytes())
    index = build_index(tmp_path / "d", workers=1)
    assert tuple(index.sizes[0]) == (16, 64)
    assert read_image_header(str(path))[:2] == (16, 64)


def test_abspath_and_bytes(tiny_root):
    index = build_index(tiny_root, workers=1)
    assert index.abspath(0) == str(tiny_root.resolve() / "Apple" / "img_0.JPEG")
    data = read_encoded(index.abspath(0))
    assert data.dtype == np.uint8 and len(data) == index.nbytes[0]


# -- fingerprint -----------------------------------------------------------------------------

def _append_byte(root: Path) -> None:
    with open(root / "mango" / "img_1.JPEG", "ab") as f:
        f.write(b"\0")


def _rename_file(root: Path) -> None:
    os.rename(root / "mango" / "img_1.JPEG", root / "mango" / "img_9.JPEG")


def _rename_class(root: Path) -> None:
    os.rename(root / "zebra", root / "zz")


def _move_between_classes(root: Path) -> None:
    os.rename(root / "mango" / "img_1.JPEG", root / "zebra" / "img_5.JPEG")


@pytest.mark.parametrize("change", [_append_byte, _rename_file, _rename_class, _move_between_classes])
def test_fingerprint_changes(tiny_root, tmp_path, change):
    before = build_index(tiny_root, workers=1).fingerprint
    other = _copy(tiny_root, tmp_path / "other")
    assert build_index(other, workers=1).fingerprint == before  # independent of the root folder
    change(other)
    assert build_index(other, workers=1).fingerprint != before


def test_fingerprint_is_stable_function():
    fp = dataset_fingerprint(["a/1.JPEG", "b/2.JPEG"], [10, 20], ["a", "b"])
    assert fp == dataset_fingerprint(["a/1.JPEG", "b/2.JPEG"], np.array([10, 20]), ["a", "b"])
    assert len(fp) == 64
    assert fp != dataset_fingerprint(["a/1.JPEG", "b/2.JPEG"], [10, 21], ["a", "b"])
    assert fp != dataset_fingerprint(["a/1.JPEG", "b/2.JPEG"], [10, 20], ["a", "c"])


# -- errors ----------------------------------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(DatasetIndexError, match="does not exist") as e:
        build_index(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


def test_folder_without_classes(tmp_path):
    _jpeg(tmp_path / "flat" / "x.JPEG")  # images, but not in class folders
    with pytest.raises(DatasetIndexError, match="no class folders"):
        build_index(tmp_path / "flat")


def test_empty_class_folder_named(tiny_root):
    (tiny_root / "empty_cls").mkdir()
    (tiny_root / "empty_cls" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetIndexError) as e:
        build_index(tiny_root)
    assert "empty_cls" in str(e.value) and "holds no images" in str(e.value)


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(3000))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [_garbage, _empty])
def test_corrupt_header_names_the_file(tiny_root, damage):
    bad = tiny_root / "mango" / "img_0.JPEG"
    damage(bad)
    with pytest.raises(CorruptImageError) as e:
        build_index(tiny_root, workers=2)
    assert e.value.path == str(bad.resolve())
    assert "mango/img_0.JPEG" in str(e.value)


@pytest.mark.parametrize("damage", [_garbage, _truncate, _empty])
def test_skip_corrupt_records_and_excludes(tiny_root, damage):
    big = _jpeg(tiny_root / "mango" / "img_0.JPEG", size=(200, 150), color=(1, 2, 3))
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8))
    noisy.save(big, quality=90)  # large scan data so truncation cuts into it
    damage(big)
    index = build_index(tiny_root, workers=2, skip_corrupt=True)
    assert index.skipped == ["mango/img_0.JPEG"]
    assert "mango/img_0.JPEG" not in index.paths
    assert len(index) == 5
    assert index.class_names == ["Apple", "mango", "zebra"]  # the class keeps its id
    assert list(index.classes) == [0, 0, 1, 2, 2]


def test_skip_corrupt_all_bad(tmp_path):
    _garbage(_jpeg(tmp_path / "d" / "c" / "a.JPEG"))
    with pytest.raises(DatasetIndexError, match="no readable images"):
        build_index(tmp_path / "d", skip_corrupt=True)


def test_truncated_jpeg_passes_header_but_read_encoded_names_it(tmp_path):
    path = tmp_path / "d" / "c" / "trunc.JPEG"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(path, quality=90)
    _truncate(path)
    index = build_index(tmp_path / "d")  # headers only: the truncation is not seen here
    assert tuple(index.sizes[0]) == (120, 160)
    with pytest.raises(CorruptImageError, match="truncated JPEG") as e:
        read_encoded(str(path))
    assert e.value.path == str(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "truncated PNG"),
])
def test_read_encoded_rejects(tmp_path, content, reason):
    path = tmp_path / "x.img"
    path.write_bytes(content)
    with pytest.raises(CorruptImageError, match=reason):
        read_encoded(str(path))


def test_read_encoded_missing_file(tmp_path):
    with pytest.raises(CorruptImageError) as e:
        read_encoded(str(tmp_path / "gone.JPEG"))
    assert "gone.JPEG" in str(e.value)


def test_read_encoded_accepts_good_files(photo_index):
    for i in range(len(photo_index)):
        data = read_encoded(photo_index.abspath(i))
        assert len(data) == photo_index.nbytes[i]


def test_read_encoded_accepts_data_after_the_end_marker(tmp_path):
    """Some cameras append kilobytes after EOI; such files decode fine and must not be rejected."""
    path = tmp_path / "trailer.JPEG"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(path, quality=90)
    clean = path.read_bytes()
    path.write_bytes(clean + b"\x00maker-notes" * 800)  # ~9.6 KB trailer
    assert len(read_encoded(str(path))) == path.stat().st_size



# -- scan_folder and index_for_store: the folder checked against a store without header reads ----

def _store_for(index, url: str):
    """An empty store (no labels written) made for `index`; only its dataset part matters here."""
    from fkd_dali.crops.boxes import CropDistribution
    from fkd_dali.store.opening import create_store
    from fkd_dali.store.schema import LabelSpec, StoreLayout, StoreSpec, TeacherSpec

    spec = StoreSpec(crops_per_image=2, crop=CropDistribution(), label=LabelSpec(k=2, num_classes=5),
                     teacher=TeacherSpec("fake", "fake", "0" * 64, (3, 32, 32), "bilinear", (0.5,) * 3, (0.5,) * 3),
                     layout=StoreLayout(images_per_chunk=4, slots_per_chunk=2))
    return create_store(url, index, spec)


@pytest.fixture
def forbid_image_reads(monkeypatch):
    """Call it to make any later attempt to open an image (header or decode) fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("an image file was opened")

    def forbid() -> None:
        monkeypatch.setattr("fkd_dali.data.index.read_image_header", refuse)
        monkeypatch.setattr("PIL.Image.open", refuse)

    return forbid


def _same_index(a, b) -> None:
    assert a.root == b.root and a.paths == b.paths and a.class_names == b.class_names
    assert a.skipped == b.skipped
    assert np.array_equal(a.classes, b.classes) and a.classes.dtype == b.classes.dtype == np.int32
    assert np.array_equal(a.sizes, b.sizes) and a.sizes.dtype == b.sizes.dtype == np.int32
    assert np.array_equal(a.nbytes, b.nbytes) and a.nbytes.dtype == b.nbytes.dtype == np.int64
    assert a.fingerprint == b.fingerprint


@pytest.mark.parametrize("root_fixture", ["tiny_root", "photo_root"])
def test_scan_folder_lists_what_build_index_indexes(request, root_fixture, forbid_image_reads):
    root = request.getfixturevalue(root_fixture)
    index = build_index(root, workers=2)
    forbid_image_reads()
    class_names, paths, nbytes = scan_folder(root)
    assert class_names == index.class_names and paths == index.paths
    assert nbytes.dtype == np.int64 and list(nbytes) == list(index.nbytes)
    assert dataset_fingerprint(paths, nbytes, class_names) == index.fingerprint


def test_scan_folder_follows_the_extension_and_folder_rules(tiny_root):
    (tiny_root / "mango" / "notes.txt").write_text("not an image")
    (tiny_root / "mango" / "upper.PNG").write_bytes(b"not opened")
    (tiny_root / "mango" / "sub").mkdir()
    (tiny_root / ".hidden").mkdir()
    (tiny_root / "readme.jpg").write_bytes(b"not in a class folder")
    class_names, paths, _ = scan_folder(tiny_root)
    assert class_names == ["Apple", "mango", "zebra"]
    assert [p for p in paths if p.startswith("mango/")] == ["mango/img_0.JPEG", "mango/img_1.JPEG", "mango/upper.PNG"]


@pytest.mark.parametrize("make, words", [
    (lambda root: root / "nope", "does not exist"),
    (lambda root: root / "Apple" / "img_0.JPEG", "does not exist"),
    (lambda root: (root / "empty_cls").mkdir() or root, "holds no images"),
])
def test_scan_folder_errors_match_build_index(tiny_root, make, words):
    target = make(tiny_root)
    with pytest.raises(DatasetIndexError, match=words) as scanned:
        scan_folder(target)
    with pytest.raises(DatasetIndexError) as built:
        build_index(target)
    assert str(scanned.value) == str(built.value)


def test_index_for_store_takes_the_stored_sizes_without_opening_images(tiny_root, tmp_path, forbid_image_reads):
    index = build_index(tiny_root, workers=2)
    store = _store_for(index, str(tmp_path / "s.zarr"))
    moved = _copy(tiny_root, tmp_path / "moved")  # the same dataset in another folder
    forbid_image_reads()
    with pytest.raises(AssertionError, match="opened"):
        build_index(tiny_root, workers=1)  # the guard works
    _same_index(index_for_store(store, tiny_root), index)
    _same_index(index_for_store(store, moved), dataclasses.replace(index, root=str(moved.resolve())))


@pytest.mark.parametrize("change, named", [
    (_append_byte, "mango/img_1.JPEG"),
    (_rename_file, "mango/img_9.JPEG"),
    (_move_between_classes, "mango/img_1.JPEG"),
    (_rename_class, "class folders differ"),
])
def test_index_for_store_mismatch_names_the_difference(tiny_root, tmp_path, forbid_image_reads, change, named):
    store = _store_for(build_index(tiny_root, workers=1), str(tmp_path / "s.zarr"))
    change(tiny_root)
    with pytest.raises(StoreMismatchError) as built:
        check_dataset(store, build_index(tiny_root, workers=1))
    forbid_image_reads()
    with pytest.raises(StoreMismatchError) as scanned:
        index_for_store(store, tiny_root)
    assert named in str(scanned.value) and "another dataset" in str(scanned.value)
    assert str(scanned.value) == str(built.value)  # one message, whichever way the folder was read


def test_index_for_store_leaves_out_the_files_skipped_at_labelling(tiny_root, tmp_path, forbid_image_reads):
    _garbage(tiny_root / "mango" / "img_0.JPEG")
    index = build_index(tiny_root, workers=2, skip_corrupt=True)
    assert index.skipped == ["mango/img_0.JPEG"]
    store = _store_for(index, str(tmp_path / "s.zarr"))
    assert store.skipped == ["mango/img_0.JPEG"]
    forbid_image_reads()
    found = index_for_store(store, tiny_root)  # the corrupt file is still there: dropped by name
    _same_index(found, index)
    assert "mango/img_0.JPEG" not in found.paths and list(found.classes) == [0, 0, 1, 2, 2]
    os.remove(tiny_root / "mango" / "img_0.JPEG")  # or deleted since: the same dataset
    _same_index(index_for_store(store, tiny_root), index)
    _jpeg(tiny_root / "mango" / "img_2.JPEG")  # a new file is not skipped: another dataset
    with pytest.raises(StoreMismatchError, match="image count differs"):
        index_for_store(store, tiny_root)

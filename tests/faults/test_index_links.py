"""Issue 19, item 4: symbolic links never re-class photos; indexing follows each real file once.

A folder link `classA/up -> ..` used to index classB's photos a second time as class A
(wrong ground truth for gt_prob and FerKD), and only one path was reported. Now a folder
link that leads back to the data root (or above), into another class folder or into its
own class folder is left out; a file reached again through a link (a file link into
another class, two links to one file) is left out as the same file; every such entry
is listed with its reason. Links that only point outside the dataset (a folder of
symlinks into a shared copy of ImageNet) keep working.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fkd_dali.data.index import build_index, scan_folder
from fkd_dali.errors import DatasetIndexError


@pytest.fixture
def three_classes(photo_root, tmp_path) -> Path:
    """3 classes x 3 real photos, copied so links can be added."""
    root = tmp_path / "data"
    for cls in sorted(os.listdir(photo_root))[:3]:
        shutil.copytree(photo_root / cls, root / cls)
    return root


def _classes(root: Path) -> list[str]:
    return sorted(os.listdir(root))


def _check_each_real_file_once(root: Path, index) -> None:
    real = [os.path.realpath(root / p) for p in index.paths]
    assert len(set(real)) == len(real), "a real file is indexed twice"
    for p, c in zip(index.paths, index.classes):  # the class of a file is the class folder it really lies in
        owner = os.path.relpath(os.path.realpath(root / p), os.path.realpath(root)).split(os.sep)[0]
        if not owner.startswith(".."):
            assert owner == index.class_names[c], (p, owner)
    assert scan_folder(root)[1] == index.paths  # the fingerprint's listing agrees


def test_a_folder_link_to_the_data_root_does_not_reclass_photos(three_classes):
    a, b, _ = _classes(three_classes)
    os.symlink("..", three_classes / a / "up")
    index = build_index(three_classes)
    assert len(index) == 9 and not any("/up/" in p for p in index.paths)
    why = dict(index.left_out)
    assert f"{a}/up" in why and "data root" in why[f"{a}/up"], index.left_out
    _check_each_real_file_once(three_classes, index)


def test_a_folder_link_into_another_class_is_left_out(three_classes):
    a, b, _ = _classes(three_classes)
    os.symlink(f"../{b}", three_classes / a / "more")
    index = build_index(three_classes)
    assert len(index) == 9
    assert b in dict(index.left_out)[f"{a}/more"]
    _check_each_real_file_once(three_classes, index)


def test_a_file_link_into_another_class_is_left_out_as_the_same_file(three_classes):
    a, b, _ = _classes(three_classes)
    target = sorted((three_classes / b).iterdir())[0]
    os.symlink(target, three_classes / a / "aaa_borrowed.JPEG")  # sorts first in class a
    index = build_index(three_classes)
    assert len(index) == 9 and f"{a}/aaa_borrowed.JPEG" not in index.paths
    reason = dict(index.left_out)[f"{a}/aaa_borrowed.JPEG"]
    assert f"{b}/{target.name}" in reason and "same file" in reason
    _check_each_real_file_once(three_classes, index)


def test_a_loop_inside_a_class_and_deep_links_are_listed_each(three_classes):
    a, b, c = _classes(three_classes)
    (three_classes / a / "sub").mkdir()
    os.symlink("..", three_classes / a / "sub" / "back")  # to class a itself: a loop
    os.symlink("../..", three_classes / a / "sub" / "root")  # to the data root, from deeper down
    os.symlink(f"../{c}", three_classes / b / "cc")
    index = build_index(three_classes)
    why = dict(index.left_out)
    assert {f"{a}/sub/back", f"{a}/sub/root", f"{b}/cc"} <= set(why), index.left_out
    assert len(index) == 9
    _check_each_real_file_once(three_classes, index)


def test_links_to_files_outside_the_dataset_still_work_once_each(photo_root, tmp_path):
    """A dataset made of symlinks into a shared copy (an ImageNet subset) indexes as before; two links to
    one file in two classes count once."""
    shared = tmp_path / "shared"
    shutil.copytree(photo_root, shared)
    root = tmp_path / "subset"
    classes = _classes(shared)[:2]
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for f in sorted((shared / cls).iterdir()):
            os.symlink(f, root / cls / f.name)
    dup = sorted((shared / classes[0]).iterdir())[0]
    os.symlink(dup, root / classes[1] / "zz_dup.JPEG")
    index = build_index(root)
    assert index.paths == [f"{c}/{f.name}" for c in classes for f in sorted((shared / c).iterdir())]
    assert "same file" in dict(index.left_out)[f"{classes[1]}/zz_dup.JPEG"]
    assert scan_folder(root)[1] == index.paths
    os.symlink(shared / classes[1], root / "zz_alias")  # a class folder that is another class's folder again
    with pytest.raises(DatasetIndexError, match="zz_alias holds no images .*same file as"):
        build_index(root)

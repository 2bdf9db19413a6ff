"""ImageNet's flat validation folder with its ground truth (devkit file + meta.mat, or LOC_val_solution.csv).

The fixture is the test photos (WordNet-id class folders) laid out as ILSVRC2012 ships
them: one flat folder of ILSVRC2012_val_NNNNNNNN files, a devkit whose ILSVRC2012 ids
are deliberately not in sorted-WordNet-id order, and Kaggle's CSV.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fkd_dali.data.imagenet_val import (
    GROUND_TRUTH_TXT,
    LOC_CSV,
    build_flat_index,
    flat_folder_problem,
    read_val_labels,
    validation_index,
)
from fkd_dali.data.index import build_index
from fkd_dali.errors import ConfigError, DatasetIndexError


def make_flat_val(class_root: Path, box: Path) -> dict[str, str]:
    """`box/val` flat, `box/ILSVRC2012_devkit_t12/data/{ground truth, meta.mat}`, `box/LOC_val_solution.csv`.

    Returns {image stem: WordNet id}. ILSVRC2012 ids run in reverse folder order (as in
    the real devkit, they are not the sorted-WordNet-id positions), and meta.mat lists
    more synsets than the images use, with an internal node (id > 1000) among them.
    """
    import scipy.io

    classes = sorted(p.name for p in class_root.iterdir() if p.is_dir())
    ids = {c: len(classes) - i for i, c in enumerate(classes)}
    flat = box / "val"
    flat.mkdir(parents=True)
    truth, lines, rows = {}, [], ["ImageId,PredictionString"]
    for n, src in enumerate(sorted(class_root.glob("*/*")), start=1):
        stem = f"ILSVRC2012_val_{n:08d}"
        shutil.copy(src, flat / (stem + src.suffix))
        wnid = src.parent.name
        truth[stem] = wnid
        lines.append(str(ids[wnid]))
        rows.append(f"{stem},{wnid} 1 2 30 40 {wnid} 5 6 70 80 ")
    data = box / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    synsets = np.zeros((len(classes) + 1, 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for i, c in enumerate(classes):
        synsets[i, 0] = (ids[c], c, c)
    synsets[len(classes), 0] = (1001, "n00001740", "entity")
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    (data / GROUND_TRUTH_TXT).write_text("\n".join(lines) + "\n")
    (box / LOC_CSV).write_text("\n".join(rows) + "\n")
    return truth


@pytest.fixture(scope="module")
def flat(photo_root, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    box = tmp_path_factory.mktemp("ilsvrc")
    return box, make_flat_val(photo_root, box)


def test_both_ground_truth_forms_read_the_same_classes(flat):
    box, truth = flat
    devkit = box / "ILSVRC2012_devkit_t12"
    for given in (devkit / "data" / GROUND_TRUTH_TXT, devkit, devkit / "data", box / LOC_CSV):
        assert read_val_labels(str(given)) == truth, given


def test_flat_index_has_the_class_folders_classes(flat, photo_root):
    box, truth = flat
    by_folder = build_index(photo_root)
    for labels in (box / "ILSVRC2012_devkit_t12" / "data" / GROUND_TRUTH_TXT, box / LOC_CSV):
        index = build_flat_index(box / "val", str(labels))
        assert index.class_names == by_folder.class_names  # WordNet ids, sorted: the same class ids
        assert len(index) == len(by_folder) == len(truth)
        got = {p.split(".")[0]: index.class_names[c] for p, c in zip(index.paths, index.classes)}
        assert got == truth
        np.testing.assert_array_equal(np.sort(index.nbytes), np.sort(by_folder.nbytes))


def test_a_subset_of_the_images_is_fine_but_an_image_without_truth_is_not(flat, tmp_path):
    box, truth = flat
    part = tmp_path / "part"
    part.mkdir()
    for f in sorted((box / "val").iterdir())[:5]:
        shutil.copy(f, part / f.name)
    assert len(build_flat_index(part, str(box / LOC_CSV))) == 5
    shutil.copy(next((box / "val").iterdir()), part / "stray.jpg")
    with pytest.raises(DatasetIndexError, match=r"1 of the 6 images .* have no entry .*stray\.jpg"):
        build_flat_index(part, str(box / LOC_CSV))


def test_layout_and_labels_must_agree(flat, photo_root):
    box, _ = flat
    problem = flat_folder_problem(str(box / "val"), "--val", "--val-labels", None)
    assert "holds images but no class folders" in problem and "--val-labels" in problem
    problem = flat_folder_problem(str(photo_root), "--data", "--val-labels", str(box / LOC_CSV))
    assert "drop --val-labels" in problem and "--data" in problem
    assert flat_folder_problem(str(box / "val"), "--val", "--val-labels", str(box / LOC_CSV)) is None
    with pytest.raises(ConfigError, match="no class folders"):
        validation_index(box / "val")
    assert validation_index(photo_root).class_names == build_index(photo_root).class_names


@pytest.mark.parametrize("damage, match", [
    ("no-meta", "need the devkit's meta.mat beside the file"),
    ("bad-id", r"ids \[999\] are not in"),
    ("not-ids", "one ILSVRC2012 class id per line"),
    ("bad-csv", "header ImageId,PredictionString"),
    ("csv-no-wnid", "line 2 has no WordNet id"),
    ("empty-dir", "the folder holds no ILSVRC2012_validation_ground_truth.txt"),
])
def test_bad_ground_truth_is_one_line_naming_the_file(flat, tmp_path, damage, match):
    box, _ = flat
    data = box / "ILSVRC2012_devkit_t12" / "data"
    txt = tmp_path / GROUND_TRUTH_TXT
    given = txt
    if damage == "no-meta":
        shutil.copy(data / GROUND_TRUTH_TXT, txt)
    elif damage == "bad-id":
        shutil.copy(data / "meta.mat", tmp_path / "meta.mat")
        txt.write_text("1\n999\n")
    elif damage == "not-ids":
        txt.write_text("n01440764\n")
    elif damage in ("bad-csv", "csv-no-wnid"):
        given = tmp_path / LOC_CSV
        given.write_text("id,label\nx,y\n" if damage == "bad-csv" else "ImageId,PredictionString\nx,1 2 3 4\n")
    else:
        given = tmp_path / "empty"
        given.mkdir()
    with pytest.raises(ConfigError, match=match) as e:
        read_val_labels(str(given))
    assert len(str(e.value).splitlines()) == 1 and "--val-labels" in str(e.value)

"""`fkd_dali.store.tools`: info, verify and show on the session's real-teacher store."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from PIL import Image

from fkd_dali.cli import main
from fkd_dali.errors import DatasetIndexError, LabelStoreError
from fkd_dali.store.opening import open_store
from fkd_dali.store.tools import format_store_info, render_crops, store_info, verify_store

IMAGE, SLOT = 5, 2  # the crop the corruption tests damage


def _path_of(store_url, i: int) -> str:
    return open_store(str(store_url)).load_index().paths[i]


def test_info_fields(small_store):
    info = store_info(str(small_store))
    assert info["schema_version"] == 1
    assert info["dataset"]["n_images"] == 21 and info["dataset"]["n_classes"] == 7
    assert len(info["dataset"]["fingerprint"]) == 64
    assert info["crops_per_image"] == 8
    assert info["label"] == {"kind": "topk", "k": 5, "num_classes": 1000, "temperature": 1.0}
    assert info["teacher"]["name"] == "efficientnet_lite0" and len(info["teacher"]["checkpoint_sha256"]) == 16
    assert info["teacher"]["input_size"] == [3, 224, 224]
    assert info["crop"]["seed"] == 0 and info["crop"]["scale"] == [0.08, 1.0]
    assert info["layout"]["images_per_chunk"] == 8
    assert info["completeness"] == {"chunks_done": 3, "chunks_total": 3, "complete": True, "missing_images": []}
    assert info["storage"]["bytes_stored"] > 0 and info["storage"]["bytes_per_image"] > 0
    assert info["created"] and info["writer_version"]
    json.dumps(info)  # plain JSON
    text = format_store_info(info)
    assert "3/3 chunks done" in text and "efficientnet_lite0" in text and "M=8" in text


def test_verify_clean(small_store, photo_root):
    report = verify_store(str(small_store), str(photo_root))
    assert report.ok, report.summary()
    assert report.chunks_checked == 3 and report.crops_checked == 21 * 8 and report.dataset_checked
    assert "no problems" in report.summary()


def _corrupt(url, key: str, change) -> None:
    arr = zarr.open_group(str(url), mode="r+")[key]
    row = np.asarray(arr[IMAGE, SLOT])
    arr[IMAGE, SLOT] = change(row.copy())


def _set(pos: int, value):
    def change(row):
        row[pos] = value
        return row
    return change


@pytest.mark.parametrize("key, change, kind", [
    ("labels/prob", _set(0, 1.5), "prob_range"),
    ("labels/prob", _set(1, np.nan), "prob_nonfinite"),
    ("labels/prob", _set(4, 0.9), "prob_order"),
    ("labels/prob", lambda r: np.full_like(r, 0.3), "prob_sum"),
    ("labels/index", _set(1, 1000), "index_range"),
    ("labels/index", lambda r: np.full_like(r, r[0]), "index_duplicate"),
    ("crops/box", _set(3, 0), "box_empty"),
    ("crops/box", lambda r: np.array([65535, 0, 65535, 65535], r.dtype), "box_outside"),
])
def test_verify_detects_bad_values(small_store, copy_store, key, change, kind):
    url = copy_store(small_store)
    _corrupt(url, key, change)
    report = verify_store(str(url))
    assert not report.ok
    problem = report.problem(kind)
    assert problem is not None, report.summary()
    assert problem.count == 1 and problem.examples == [(_path_of(url, IMAGE), SLOT)]
    assert f"{_path_of(url, IMAGE)}[slot {SLOT}]" in report.summary()


def test_verify_detects_damaged_chunk_files(small_store, copy_store):
    url = copy_store(small_store)
    flipped = url / "labels" / "prob" / "c" / "1" / "0" / "0"  # images 8-15, slots 0-3
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    (url / "labels" / "index" / "c" / "2" / "1" / "0").unlink()  # images 16-20, slots 4-7: reads as fill
    report = verify_store(str(url))
    assert report.problem("unreadable").examples == [("labels/prob/c/1/0/0", -1)]  # the damaged file
    assert report.problem("chunk_file_missing").examples == [("labels/index/c/2/1/0", -1)]
    assert report.problem("index_range").count == 5 * 4
    assert report.chunks_checked == 2
    assert report.damaged_chunks == [1, 2]  # what `labels repair` recomputes


def test_verify_detects_missing_chunk(small_store, copy_store):
    url = copy_store(small_store)
    zarr.open_group(str(url), mode="r+")["progress/done"][1] = False
    report = verify_store(str(url))
    problem = report.problem("incomplete")
    assert problem is not None and problem.examples == [("images 8-15", -1)]
    assert report.chunks_checked == 2
    assert store_info(str(url))["completeness"]["missing_images"] == [[8, 15]]


def test_verify_detects_dataset_mismatch(small_store, photo_root, tmp_path):
    data = tmp_path / "train"
    shutil.copytree(photo_root, data)
    changed = _path_of(small_store, 7)
    with open(data / changed, "ab") as f:
        f.write(b"\0" * 10)
    report = verify_store(str(small_store), str(data))
    problem = report.problem("dataset")
    assert problem is not None and changed in problem.description
    assert [p.kind for p in report.problems] == ["dataset"]


def test_render_crops_writes_png(small_store, photo_root, tmp_path):
    rel = _path_of(small_store, 3)
    pictures = []
    for image in (3, rel, "3"):  # index, path and digit string name the same image
        out = render_crops(str(small_store), image, tmp_path / f"crops{len(pictures)}.png", str(photo_root),
                           max_crops=4)
        with Image.open(out) as im:
            assert im.format == "PNG"
            pictures.append(np.asarray(im.convert("RGB")))
    assert all(np.array_equal(pictures[0], p) for p in pictures[1:])
    assert pictures[0].std() > 10  # photos and captions, not a blank canvas
    other = render_crops(str(small_store), 4, tmp_path / "other.png", str(photo_root), max_crops=4)
    with Image.open(other) as im:
        assert not np.array_equal(np.asarray(im.convert("RGB")), pictures[0])
    # 1 + 4 panels fit one row of 5; 1 + 8 panels need two rows
    wide = render_crops(str(small_store), 3, tmp_path / "wide.png", str(photo_root), max_crops=8)
    with Image.open(wide) as im:
        assert im.height > pictures[0].shape[0] * 1.5 and im.width == pictures[0].shape[1]


@pytest.mark.parametrize("image, data, match", [
    (0, None, "pass --data"),
    (0, "empty", "is not at"),
    (99, "photos", "out of range"),
    ("nope/x.JPEG", "photos", "not in store"),
])
def test_render_crops_errors(small_store, photo_root, tmp_path, image, data, match):
    root = {None: None, "empty": str(tmp_path), "photos": str(photo_root)}[data]
    with pytest.raises(DatasetIndexError, match=match):
        render_crops(str(small_store), image, tmp_path / "x.png", root)


def test_cli_store_tools(small_store, photo_root, copy_store, tmp_path, capsys):
    url = str(small_store)
    assert main(["labels", "info", url]) == 0
    assert "chunks done" in capsys.readouterr().out
    assert main(["labels", "info", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["crops_per_image"] == 8
    assert main(["labels", "verify", url, "--data", str(photo_root)]) == 0
    assert main(["labels", "show", url, "--image", "0", "--out", str(tmp_path / "a.png"),
                 "--data", str(photo_root)]) == 0
    assert (tmp_path / "a.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["labels", "show", url, "--image", "0", "--out", str(tmp_path / "b.png")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["labels", "info", str(tmp_path / "missing.zarr")]) == 2
    bad = copy_store(small_store)
    _corrupt(bad, "labels/prob", _set(0, -0.5))
    assert main(["labels", "verify", str(bad)]) == 1
    assert "prob_range" in capsys.readouterr().out


def test_info_refuses_non_store(tmp_path):
    with pytest.raises(LabelStoreError):
        store_info(str(tmp_path / "nothing.zarr"))

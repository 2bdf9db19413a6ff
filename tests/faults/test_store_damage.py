"""Damaged stores are refused with one line naming the store, the array and the chunk, exit 2, by every
command that reads them; never trained on.

The damage is what partial copies, lost objects and bad disks leave: a deleted chunk file
(reads back silently as fill values), a flipped byte (crc32c catches it), a truncated
zarr.json, a missing array, fill values inside a chunk file, and paths or URLs that are no
store at all. Commands run in-process through `fkd_dali.cli.main` (exit code and stderr as
a user sees them); the headline case also runs as a real subprocess.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from fkd_dali.cli import main
from fkd_dali.errors import LabelStoreError, StoreDamageError
from fkd_dali.loaders.pass_table import read_pass_table
from fkd_dali.store.checks import check_chunk_files
from fkd_dali.store.opening import open_store
from fkd_dali.store.tools import verify_store

from .conftest import assert_user_error, gen_args, run_cli, run_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# clean_store: 21 images in 5 image chunks of 5 (the last of 1), M = 8 in one slot chunk, K = 5
CHUNK = 1  # the image chunk damaged: images 5-9


def chunk_file(store: Path, key: str, chunk: int = CHUNK) -> Path:
    trailing = {"crops/box": ["0", "0"], "crops/flip": ["0"], "labels/index": ["0", "0"],
                "labels/prob": ["0", "0"]}[key]
    return store.joinpath(*key.split("/"), "c", str(chunk), *trailing)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def train_args(photo_root, store, out, *extra) -> list[str]:
    return ["train", "--data", str(photo_root), "--labels", str(store), "--arch", "resnet10t", "--epochs", "4",
            "-m", "4", "-b", "8", "--image-size", "32", "-j", "1", "--log-interval", "1", "--no-progress",
            "--output", str(out), *extra]


def cli(capsys, args: list) -> tuple[int, str]:
    code, _, err = run_main(args, capsys)
    return code, err


# -- train: the store is refused before (or as) a pass reads it --------------------------------

def test_train_refuses_a_store_with_a_deleted_chunk_in_a_real_process(clean_store, store_copy, photo_root,
                                                                      tmp_path):
    store = store_copy(clean_store)
    chunk_file(store, "labels/prob").unlink()
    proc = run_cli(train_args(photo_root, store, tmp_path / "run"))
    line = assert_user_error(proc, str(store), "labels/prob/c/1/0/0", "images 5-9", "labels repair")
    assert "missing" in line
    assert not (tmp_path / "run" / "last.pth").exists()  # nothing trained, no checkpoint


@pytest.mark.parametrize("key", ["crops/box", "crops/flip", "labels/index", "labels/prob"])
def test_train_refuses_each_deleted_chunk(clean_store, store_copy, photo_root, tmp_path, capsys, key):
    store = store_copy(clean_store)
    chunk_file(store, key).unlink()
    name = chunk_file(store, key).relative_to(store).as_posix()
    assert_user_error(cli(capsys, train_args(photo_root, store, tmp_path / "run")), str(store), name,
                      "images 5-9", "labels verify", "labels repair")


def test_train_refuses_a_flipped_byte_naming_the_chunk(clean_store, store_copy, photo_root, tmp_path, capsys):
    store = store_copy(clean_store)
    flip_byte(chunk_file(store, "labels/index"))
    assert_user_error(cli(capsys, train_args(photo_root, store, tmp_path / "run")), str(store),
                      "labels/index/c/1/0/0", "images 5-9, slots 0-7", "checksum mismatch", "labels repair")
    assert not (tmp_path / "run" / "last.pth").exists()


def test_train_refuses_fill_values_inside_a_chunk_file(clean_store, store_copy, photo_root, tmp_path, capsys):
    """A chunk file holding NaN probabilities (a writer bug, a bad copy tool) is caught by the pass-table check."""
    store = store_copy(clean_store)
    prob = zarr.open_group(str(store), mode="r+")["labels/prob"]
    values = np.asarray(prob[5:10])
    values[2, 1] = np.nan  # image 7, slot 1: in pass 0 (slots 0-3)
    prob[5:10] = values
    assert chunk_file(store, "labels/prob").is_file()  # the file is there: only the values give it away
    assert_user_error(cli(capsys, train_args(photo_root, store, tmp_path / "run")), str(store), "'labels/prob'",
                      "NaN", "images 5-9", "labels repair")


@pytest.mark.parametrize("key, fill", [("labels/index", -1), ("labels/prob", np.nan), ("crops/box", 0)])
def test_pass_table_refuses_fill_values_of_every_field(clean_store, store_copy, key, fill):
    """The read itself (bypassing the start-of-run file listing) names the array, images and slots."""
    store = store_copy(clean_store)
    arr = zarr.open_group(str(store), mode="r+")[key]
    values = np.asarray(arr[10:15])
    values[4, 6] = fill  # image 14, slot 6
    arr[10:15] = values
    opened = open_store(str(store))
    sizes = opened.load_index().sizes
    table = read_pass_table(opened, sizes, np.arange(4), np.arange(21))  # slots 0-3: clean
    assert table.crop_values["index"].min() >= 0
    with pytest.raises(StoreDamageError) as e:
        read_pass_table(opened, sizes, np.array([4, 5, 6, 7]), np.arange(21))
    assert e.value.array == key and e.value.images == (10, 15)
    assert f"'{key}'" in str(e.value) and "images 10-14 slots 0-7" in str(e.value)


@pytest.mark.parametrize("damage, words", [
    (lambda s: truncate(s / "labels" / "prob" / "zarr.json"), ["'labels/prob'", "zarr.json", "cannot be read"]),
    (lambda s: shutil.rmtree(s / "labels" / "index"), ["no array 'labels/index'"]),
    (lambda s: truncate(s / "zarr.json"), ["metadata of store", "zarr.json", "truncated or damaged"]),
])
def test_train_refuses_damaged_metadata(clean_store, store_copy, photo_root, tmp_path, capsys, damage, words):
    store = store_copy(clean_store)
    damage(store)
    assert_user_error(cli(capsys, train_args(photo_root, store, tmp_path / "run")), str(store), *words)


def _a_file(tmp_path: Path) -> str:
    path = tmp_path / "labels.zarr"
    path.write_text("not a store")
    return str(path)


def _a_folder(tmp_path: Path) -> str:
    (tmp_path / "photos" / "cls").mkdir(parents=True)
    return str(tmp_path / "photos")


@pytest.mark.parametrize("where, words", [
    (_a_file, ["is a file, not a soft-label store"]),
    (_a_folder, ["is a folder but not a soft-label store", "no zarr.json"]),
    (lambda t: str(t / "nowhere.zarr"), ["the path does not exist"]),
    (lambda t: "ftp://127.0.0.1:9/labels.zarr", ["cannot open soft-label store", "ftp://127.0.0.1:9"]),
    (lambda t: "s3://fkd-no-such-bucket/labels.zarr", ["cannot open s3://fkd-no-such-bucket/labels.zarr"]),
])
def test_every_reader_refuses_what_is_no_store(photo_root, tmp_path, capsys, where, words):
    url = where(tmp_path)
    for args in (train_args(photo_root, url, tmp_path / "run"), ["labels", "info", url],
                 ["labels", "verify", url], ["labels", "export-fkd", url, "--out", tmp_path / "fkd"],
                 ["labels", "show", url, "--image", "0", "--out", tmp_path / "x.png", "--data", photo_root]):
        assert_user_error(cli(capsys, args), url, *words)


# -- the other commands that read stores -----------------------------------------------------

@pytest.fixture
def deleted_prob(clean_store, store_copy) -> Path:
    store = store_copy(clean_store)
    chunk_file(store, "labels/prob").unlink()
    return store


@pytest.fixture
def flipped_box(clean_store, store_copy) -> Path:
    store = store_copy(clean_store)
    flip_byte(chunk_file(store, "crops/box"))
    return store


def test_verify_lists_the_damage_and_exits_1(deleted_prob, flipped_box, capsys):
    assert main(["labels", "verify", str(deleted_prob)]) == 1
    out = capsys.readouterr().out
    assert "chunk_file_missing" in out and "labels/prob/c/1/0/0" in out and "prob_nonfinite" in out
    assert main(["labels", "verify", str(flipped_box)]) == 1
    out = capsys.readouterr().out
    assert "unreadable" in out and "crops/box/c/1/0/0" in out
    assert verify_store(str(flipped_box)).damaged_chunks == [CHUNK]


def test_verify_and_info_exit_2_on_unreadable_metadata(clean_store, store_copy, capsys):
    store = store_copy(clean_store)
    truncate(store / "progress" / "done" / "zarr.json")
    for args in (["labels", "verify", str(store)], ["labels", "info", str(store)]):
        assert_user_error(cli(capsys, args), "'progress/done'", "zarr.json")


def test_export_refuses_a_damaged_store(deleted_prob, flipped_box, tmp_path, capsys):
    assert_user_error(cli(capsys, ["labels", "export-fkd", deleted_prob, "--out", tmp_path / "a"]),
                      "labels/prob/c/1/0/0", "missing")
    assert not (tmp_path / "a").exists()
    assert_user_error(cli(capsys, ["labels", "export-fkd", flipped_box, "--out", tmp_path / "b"]),
                      "crops/box/c/1/0/0", "checksum mismatch")


def test_merge_refuses_a_damaged_input(clean_store, deleted_prob, flipped_box, tmp_path, capsys):
    assert_user_error(cli(capsys, ["labels", "merge", clean_store, deleted_prob, "--out", tmp_path / "a.zarr"]),
                      str(deleted_prob), "labels/prob/c/1/0/0")
    assert_user_error(cli(capsys, ["labels", "merge", flipped_box, clean_store, "--out", tmp_path / "b.zarr"]),
                      str(flipped_box), "crops/box/c/1/0/0", "checksum mismatch")


def test_show_refuses_a_damaged_image(flipped_box, deleted_prob, photo_root, tmp_path, capsys):
    png = tmp_path / "x.png"
    assert_user_error(cli(capsys, ["labels", "show", flipped_box, "--image", "6", "--out", png,
                                   "--data", photo_root]), "crops/box/c/1/0/0", "checksum mismatch")
    assert_user_error(cli(capsys, ["labels", "show", deleted_prob, "--image", "6", "--out", png,
                                   "--data", photo_root]), "'labels/prob'", "NaN", "images 5-9")
    assert not png.exists()
    assert main(["labels", "show", str(deleted_prob), "--image", "0", "--out", str(png), "--data",
                 str(photo_root)]) == 0  # an undamaged image of the same store still shows


def test_generate_reference_refuses_damaged_boxes(flipped_box, clean_store, store_copy, photo_root,
                                                  teacher_ckpt, tmp_path, capsys):
    args = gen_args(photo_root, tmp_path / "relabel.zarr", teacher_ckpt, "--reference", str(flipped_box))
    assert_user_error(cli(capsys, args), str(flipped_box), "crops/box/c/1/0/0", "checksum mismatch")
    deleted = store_copy(clean_store)
    chunk_file(deleted, "crops/flip", chunk=2).unlink()
    args = gen_args(photo_root, tmp_path / "relabel2.zarr", teacher_ckpt, "--reference", str(deleted))
    assert_user_error(cli(capsys, args), str(deleted), "crops/flip/c/2/0", "images 10-14")


def test_eval_refuses_an_unreadable_store(clean_store, store_copy, photo_root, tmp_path, capsys):
    from fkd_dali.config import TrainConfig
    from fkd_dali.train.loop import fit

    result = fit(TrainConfig(data=str(photo_root), labels=str(clean_store), arch="resnet10t", output=str(tmp_path),
                             epochs=4, num_crops=4, batch_size=8, image_size=32, threads=1, max_steps=1,
                             progress=False))
    store = store_copy(clean_store)
    truncate(store / "zarr.json")
    assert_user_error(cli(capsys, ["eval", "--data", photo_root, "--checkpoint", result.checkpoint, "--labels",
                                   store, "-j", "1"]), str(store), "zarr.json")


def test_store_errors_are_label_store_errors(deleted_prob):
    """Library callers catch one family: `StoreDamageError` is a `LabelStoreError`."""
    with pytest.raises(LabelStoreError, match="labels/prob/c/1/0/0"):
        check_chunk_files(open_store(str(deleted_prob)))

"""Ground-truth probabilities (`labels/gt_prob`): generated with --gt-prob, added later with
`labels add-gt-prob`, checked by verify/repair, and gathered by the replay loader.

The stores here are small (M=4, 64-pixel teacher input) and of kind "full", so every
gt_prob can be checked against the whole stored softmax: it must be that softmax at the
image's ground-truth class, rounded as the store rounds top-K probabilities.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import zarr
from zarr.codecs import Crc32cCodec

from fkd_dali.cli import main as cli_main
from fkd_dali.config import LabelGenConfig
from fkd_dali.data.sample_data import SAMPLE_PHOTOS
from fkd_dali.labels.generate import generate_labels
from fkd_dali.store.checks import read_written
from fkd_dali.store.opening import open_store
from fkd_dali.store.schema import CropField, quantize_prob

from ..conftest import random_teacher

GEN = dict(crops_per_image=4, top_k=5, full=True, input_size=64, batch_size=32, crops_per_round=4,
           images_per_chunk=8, slots_per_chunk=2, threads=2, progress=False)
CLI_GEN = ["-M", "4", "-K", "5", "--full", "--input-size", "64", "--batch-size", "32", "--crops-per-round", "4",
           "--images-per-chunk", "8", "--slots-per-chunk", "2", "--threads", "2", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _generate_on_one_thread(cfg: LabelGenConfig) -> None:
    """Module fixtures are made before the tests' `one_torch_thread`: make them on one torch thread too, as
    the tests' reruns are, since a CPU convolution's rounding may depend on how many threads split it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generate_labels(cfg)
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def gt_store(photo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gt") / "gt.zarr"
    _generate_on_one_thread(LabelGenConfig(data=str(photo_root), out=str(out), gt_prob=True, **GEN))
    return out


@pytest.fixture(scope="module")
def plain_store(photo_root, tmp_path_factory) -> Path:
    """The same store as `gt_store`, made without --gt-prob."""
    out = tmp_path_factory.mktemp("plain") / "plain.zarr"
    _generate_on_one_thread(LabelGenConfig(data=str(photo_root), out=str(out), **GEN))
    return out


def expected_gt_prob(store) -> np.ndarray:
    """The stored softmax (kind "full") at each image's ground-truth class, rounded as the store rounds."""
    labels = store.read_images(0, store.n_images)
    gt = store.gt_classes()
    at_gt = np.take_along_axis(labels.full, np.broadcast_to(gt[:, None, None], labels.full.shape[:2] + (1,)), 2)
    return quantize_prob(at_gt[..., 0])


def bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float16).view(np.uint16)


def test_gt_prob_is_the_teachers_softmax_at_the_images_imagenet_class(gt_store, photo_index):
    store = open_store(str(gt_store))
    assert store.has_gt_prob and store.spec.gt.mapping == "imagenet_wnid"
    wnid_index = {p.wnid: p.imagenet_index for p in SAMPLE_PHOTOS}
    assert list(store.spec.gt.teacher_class) == [wnid_index[c] for c in photo_index.class_names]
    np.testing.assert_array_equal(store.gt_classes(), [wnid_index[photo_index.class_names[c]]
                                                       for c in photo_index.classes])
    labels = read_written(store, 0, store.n_images)
    np.testing.assert_array_equal(bits(labels.gt_prob), bits(expected_gt_prob(store)))
    # where the ground truth is among the top-K, gt_prob is that stored probability exactly; else at most the K-th
    gt = store.gt_classes()[:, None, None]
    hit = labels.index == gt
    in_top = hit.any(-1)
    np.testing.assert_array_equal(bits(labels.gt_prob[in_top]), bits(labels.prob[hit]))
    assert (labels.gt_prob[~in_top] <= labels.prob[~in_top][:, -1]).all()
    assert in_top.any() and (labels.gt_prob > 0.5).any()  # the teacher recognises some crops' true class


def test_gt_prob_array_is_chunked_like_the_labels_and_described_in_the_attributes(gt_store):
    g = zarr.open_group(str(gt_store), mode="r")
    arr, prob = g["labels/gt_prob"], g["labels/prob"]
    assert arr.shape == prob.shape[:2] == (21, 4) and arr.dtype == np.float16
    assert arr.chunks == prob.chunks[:2] == (8, 2)  # the same image ranges: one writer owns whole chunks
    assert np.isnan(arr.fill_value) and any(isinstance(c, Crc32cCodec) for c in arr.metadata.codecs)
    meta = g.attrs["fkd_dali"]
    assert meta["schema_version"] == 1  # an optional section: releases without gt_prob read the store as before
    assert meta["gt_prob"]["mapping"] == "imagenet_wnid" and len(meta["gt_prob"]["teacher_class"]) == 7


@pytest.fixture(scope="module")
def seven_class_ckpt(tmp_path_factory) -> Path:
    """A random resnet10t with one output per class folder of the photo dataset."""
    return random_teacher(tmp_path_factory.mktemp("ckpt") / "resnet10t_7.pth", num_classes=7)


def test_a_teacher_of_the_folder_classes_maps_them_in_folder_order(photo_root, photo_index, seven_class_ckpt,
                                                                    tmp_path):
    out = tmp_path / "seven.zarr"
    code = cli_main(["labels", "generate", "--data", str(photo_root), "--out", str(out), "--teacher", "resnet10t",
                     "--checkpoint", str(seven_class_ckpt), "--num-classes", "7", "--gt-prob", *CLI_GEN])
    assert code == 0
    store = open_store(str(out))
    assert store.spec.gt.mapping == "folder_order" and store.spec.gt.teacher_class == tuple(range(7))
    np.testing.assert_array_equal(store.gt_classes(), photo_index.classes)
    got = store.read_images(0, store.n_images).gt_prob
    np.testing.assert_array_equal(bits(got), bits(expected_gt_prob(store)))


def test_a_teacher_whose_classes_cannot_be_mapped_is_refused_in_one_line(photo_root, tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / "five.pth"
    torch.save(timm.create_model("resnet10t", num_classes=5).state_dict(), ckpt)
    out = tmp_path / "five.zarr"
    code = cli_main(["labels", "generate", "--data", str(photo_root), "--out", str(out), "--teacher", "resnet10t",
                     "--checkpoint", str(ckpt), "--num-classes", "5", "--gt-prob", *CLI_GEN])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "--gt-prob" in err and "7 class folders" in err and "5 classes" in err
    assert not out.exists()


def test_resuming_a_store_made_without_it_points_to_add_gt_prob(photo_root, plain_store, tmp_path, capsys):
    out = tmp_path / "copy.zarr"
    shutil.copytree(plain_store, out)
    code = cli_main(["labels", "generate", "--data", str(photo_root), "--out", str(out), "--gt-prob", *CLI_GEN])
    err = capsys.readouterr().err
    assert code == 2 and f"labels add-gt-prob {out}" in err
    store = open_store(str(out))
    assert not store.has_gt_prob and "labels/gt_prob" not in store.group


def test_a_store_without_gt_prob_opens_and_reads_as_before(plain_store):
    store = open_store(str(plain_store))
    assert not store.has_gt_prob and store.spec.gt is None and "gt_prob" not in store.meta
    labels = read_written(store, 0, store.n_images)
    assert labels.gt_prob is None
    with pytest.raises(Exception, match="add-gt-prob"):
        store.gt_classes()


# -- labels add-gt-prob ---------------------------------------------------------------------------

ADD_OPTS = ["--batch-size", "32", "--crops-per-round", "4", "--threads", "2", "--no-progress"]


def store_files(url: Path) -> dict[str, bytes]:
    return {p.relative_to(url).as_posix(): p.read_bytes() for p in sorted(Path(url).rglob("*")) if p.is_file()}


def add_gt(capsys, url: Path, data: Path, *extra: str) -> dict:
    import json

    code = cli_main(["labels", "add-gt-prob", str(url), "--data", str(data), *ADD_OPTS, *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def test_add_gt_prob_writes_what_generate_writes_and_changes_no_other_byte(photo_root, plain_store, gt_store,
                                                                            tmp_path, capsys):
    from fkd_dali.train.checkpoint import store_id

    url = tmp_path / "added.zarr"
    shutil.copytree(plain_store, url)
    before = store_files(url)
    identity = store_id(open_store(str(url)))

    summary = add_gt(capsys, url, photo_root)
    assert summary["chunks_written"] == 3 and summary["mapping"] == "imagenet_wnid"
    assert summary["labels_reproduced"] == 1.0  # the teacher recomputed every stored top-K bit for bit

    store, want = open_store(str(url)), open_store(str(gt_store))
    got = read_written(store, 0, store.n_images).gt_prob
    np.testing.assert_array_equal(bits(got), bits(want.read_images(0, want.n_images).gt_prob))
    after = store_files(url)
    changed = sorted(name for name in before if after[name] != before[name])
    assert changed == ["zarr.json"]  # the attributes; every chunk and array metadata keeps its bytes
    added = {name.split("/c/")[0] for name in set(after) - set(before)}
    assert added == {"labels/gt_prob", "labels/gt_prob/zarr.json", "progress/gt_done", "progress/gt_done/zarr.json"}
    old_meta = zarr.open_group(str(plain_store), mode="r").attrs["fkd_dali"]
    assert store.meta == {**old_meta, "gt_prob": want.meta["gt_prob"]}
    assert store_id(store) == identity  # checkpoints trained on the store before still resume on it

    again = add_gt(capsys, url, photo_root)  # a store that has gt_prob is left as it is
    assert again["chunks_written"] == 0 and store_files(url) == after


def test_add_gt_prob_resumes_after_a_failure_and_is_invisible_until_complete(photo_root, plain_store, gt_store,
                                                                             tmp_path, capsys, monkeypatch):
    from fkd_dali.errors import LabelStoreError
    from fkd_dali.store.label_store import LabelStore

    url = tmp_path / "resumed.zarr"
    shutil.copytree(plain_store, url)
    real, calls = LabelStore.write_gt_chunk, []

    def failing(self, chunk, gt_prob):
        if calls:
            raise LabelStoreError("disk full (simulated)")
        calls.append(chunk)
        real(self, chunk, gt_prob)

    monkeypatch.setattr(LabelStore, "write_gt_chunk", failing)
    assert cli_main(["labels", "add-gt-prob", str(url), "--data", str(photo_root), *ADD_OPTS]) == 2
    assert "disk full" in capsys.readouterr().err
    store = open_store(str(url))
    assert not store.has_gt_prob and store.gt_missing_chunks() == [1, 2]  # chunk 0 is written, not yet declared
    monkeypatch.setattr(LabelStore, "write_gt_chunk", real)

    summary = add_gt(capsys, url, photo_root)
    assert (summary["chunks_written"], summary["chunks_skipped"]) == (2, 1)
    got = read_written(open_store(str(url)), 0, 21).gt_prob
    np.testing.assert_array_equal(bits(got), bits(open_store(str(gt_store)).read_images(0, 21)
                                                  .gt_prob))


def test_add_gt_prob_refuses_what_it_cannot_recompute(photo_root, plain_store, tmp_path, capsys):
    from fkd_dali.interop.fkd_store import export_fkd, import_fkd

    export_fkd(str(plain_store), tmp_path / "fkd")
    imported = tmp_path / "imported.zarr"
    import_fkd(tmp_path / "fkd", photo_root, str(imported))
    assert cli_main(["labels", "add-gt-prob", str(imported), "--data", str(photo_root), *ADD_OPTS]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "labels add-gt-prob" in err and "imported from FKD label files" in err

    other = tmp_path / "other"  # another dataset: one image less
    shutil.copytree(photo_root, other)
    victim = sorted(other.rglob("*.JPEG"))[0]
    victim.unlink()
    url = tmp_path / "copy.zarr"
    shutil.copytree(plain_store, url)
    assert cli_main(["labels", "add-gt-prob", str(url), "--data", str(other), *ADD_OPTS]) == 2
    assert "another dataset" in capsys.readouterr().err
    assert "labels/gt_prob" not in zarr.open_group(str(url), mode="r")  # refused before anything was added


# -- reading: pass table, replay loader, create_loader ---------------------------------------------

def test_pass_table_reads_gt_prob_of_the_pass_slots_only_when_asked(gt_store, plain_store, photo_index):
    from fkd_dali.errors import LabelStoreError
    from fkd_dali.loaders.pass_table import read_pass_table

    store = open_store(str(gt_store))
    images, slots = np.array([5, 0, 20, 9]), np.array([3, 0])  # two runs of slots, images out of order
    table = read_pass_table(store, photo_index.sizes, slots, images, fields={CropField.GT_PROB})
    stored = store.read_images(0, store.n_images).gt_prob
    np.testing.assert_array_equal(bits(table.crop_values["gt_prob"]), bits(stored[images][:, slots]))
    np.testing.assert_array_equal(table.image_values["gt_class"], store.gt_classes()[images])
    assert "gt_prob" not in read_pass_table(store, photo_index.sizes, slots, images).crop_values
    with pytest.raises(LabelStoreError, match="add-gt-prob"):
        read_pass_table(open_store(str(plain_store)), photo_index.sizes, slots, images, fields={CropField.GT_PROB})


def test_replay_batches_carry_each_crops_gt_prob_and_class_by_image_and_slot(gt_store, photo_index):
    from fkd_dali.loaders.replay import ReplayLoader
    from fkd_dali.loaders.sources import StoreCrops

    store = open_store(str(gt_store))
    stored = store.read_images(0, store.n_images).gt_prob.astype(np.float32)
    classes = store.gt_classes()
    loader = ReplayLoader(StoreCrops(store, photo_index.sizes, {CropField.GT_PROB}), photo_index, m=2, batch_size=8,
                          size=32, mean=(0.5,) * 3, std=(0.5,) * 3, threads=1)
    seen = 0
    try:
        for pass_idx in (0, 1):
            for batch in loader.pass_batches(pass_idx):
                ids, slots = batch.meta[:, 0].numpy(), batch.meta[:, 1].numpy()
                gt_prob, gt_class = batch.field("gt_prob"), batch.field("gt_class")
                assert gt_prob.dtype == torch.float32 and gt_class.dtype == torch.int64
                assert gt_prob.shape == gt_class.shape == (8,)
                np.testing.assert_array_equal(gt_prob.numpy(), stored[ids, slots])
                np.testing.assert_array_equal(gt_class.numpy(), classes[ids])
                seen += len(ids)
    finally:
        loader.close()
    assert seen == 2 * 5 * 8  # 2 passes x 5 steps (21 images, 4 per step) x 8 crops


def test_create_loader_gives_gt_prob_with_the_soft_targets(gt_store, plain_store, photo_root):
    import fkd_dali
    from fkd_dali.errors import LabelStoreError

    store = open_store(str(gt_store))
    stored = store.read_images(0, store.n_images).gt_prob.astype(np.float32)
    with fkd_dali.create_loader(str(photo_root), str(gt_store), num_crops=2, batch_size=8, image_size=32,
                                device="cpu", threads=1, with_gt_prob=True) as loader:
        batch = next(iter(loader))
    ids, slots = batch.meta[:, 0].numpy(), batch.meta[:, 1].numpy()
    np.testing.assert_array_equal(batch.gt_prob.numpy(), stored[ids, slots])
    np.testing.assert_array_equal(batch.gt_class.numpy(), store.gt_classes()[ids])
    with pytest.raises(LabelStoreError, match=f"labels add-gt-prob {plain_store}"):
        fkd_dali.create_loader(str(photo_root), str(plain_store), num_crops=2, batch_size=8, device="cpu",
                               with_gt_prob=True)


# -- damage: fill values, verify, repair -----------------------------------------------------------

def test_damaged_gt_prob_is_found_by_verify_refused_by_readers_and_repaired_bit_for_bit(gt_store, photo_root,
                                                                                      photo_index, tmp_path, capsys):
    import json

    from fkd_dali.errors import StoreDamageError
    from fkd_dali.loaders.fkd_loader import open_replay_data
    from fkd_dali.loaders.pass_table import read_pass_table
    from fkd_dali.store.tools import verify_store

    url = tmp_path / "damaged.zarr"
    shutil.copytree(gt_store, url)
    chunk = lambda c, j: url / "labels" / "gt_prob" / "c" / str(c) / str(j)  # noqa: E731
    chunk(1, 0).unlink()  # deleted: reads back as NaN
    data = bytearray(chunk(2, 1).read_bytes())
    data[len(data) // 2] ^= 0xFF  # crc32c mismatch
    chunk(2, 1).write_bytes(bytes(data))
    g = zarr.open_group(str(url), mode="r+")
    g["labels/gt_prob"][3, 0] = np.float16(0.75)  # finite, in [0, 1], but not the teacher's value (image 3 is chunk 0)

    report = verify_store(str(url))
    kinds = {p.kind for p in report.problems}
    assert {"chunk_file_missing", "unreadable", "gt_prob_topk"} <= kinds, report.summary()
    assert report.damaged_chunks == [0, 1, 2]
    with pytest.raises(StoreDamageError, match="labels/gt_prob"):
        open_replay_data(str(photo_root), str(url), 2)
    with pytest.raises(StoreDamageError, match="labels/gt_prob"):  # the pass table checks the values it reads
        read_pass_table(open_store(str(url)), photo_index.sizes, [0, 1], np.arange(16), fields={CropField.GT_PROB})

    code = cli_main(["labels", "repair", str(url), "--data", str(photo_root), *ADD_OPTS])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["damaged_chunks"] == [0, 1, 2]
    assert verify_store(str(url)).ok
    want, got = open_store(str(gt_store)), open_store(str(url))
    a, b = (s.read_images(0, 21) for s in (want, got))
    for name in ("boxes", "flips", "index", "prob", "full", "gt_prob"):
        np.testing.assert_array_equal(np.asarray(getattr(b, name)).view(np.uint8),
                                      np.asarray(getattr(a, name)).view(np.uint8), err_msg=name)

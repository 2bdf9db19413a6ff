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
from fkd_dali.store.label_store import open_store, quantize_prob

GEN = dict(crops_per_image=4, top_k=5, full=True, input_size=64, batch_size=32, crops_per_round=4,
           images_per_chunk=8, slots_per_chunk=2, threads=2, progress=False)
CLI_GEN = ["-M", "4", "-K", "5", "--full", "--input-size", "64", "--batch-size", "32", "--crops-per-round", "4",
           "--images-per-chunk", "8", "--slots-per-chunk", "2", "--threads", "2", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gt_store(photo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gt") / "gt.zarr"
    generate_labels(LabelGenConfig(data=str(photo_root), out=str(out), gt_prob=True, **GEN))
    return out


@pytest.fixture(scope="module")
def plain_store(photo_root, tmp_path_factory) -> Path:
    """The same store as `gt_store`, made without --gt-prob."""
    out = tmp_path_factory.mktemp("plain") / "plain.zarr"
    generate_labels(LabelGenConfig(data=str(photo_root), out=str(out), **GEN))
    return out


def expected_gt_prob(store) -> np.ndarray:
    """The stored softmax (kind "full") at each image's ground-truth class, rounded as the store rounds."""
    labels = store.read_images(0, store.n_images, with_full=True)
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
    labels = store.read_images(0, store.n_images, with_gt_prob=True, check=True)
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
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet10t_7.pth"
    torch.save(timm.create_model("resnet10t", num_classes=7).state_dict(), path)
    return path


def test_a_teacher_of_the_folder_classes_maps_them_in_folder_order(photo_root, photo_index, seven_class_ckpt,
                                                                    tmp_path):
    out = tmp_path / "seven.zarr"
    code = cli_main(["labels", "generate", "--data", str(photo_root), "--out", str(out), "--teacher", "resnet10t",
                     "--checkpoint", str(seven_class_ckpt), "--num-classes", "7", "--gt-prob", *CLI_GEN])
    assert code == 0
    store = open_store(str(out))
    assert store.spec.gt.mapping == "folder_order" and store.spec.gt.teacher_class == tuple(range(7))
    np.testing.assert_array_equal(store.gt_classes(), photo_index.classes)
    got = store.read_images(0, store.n_images, with_gt_prob=True).gt_prob
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
    labels = store.read_images(0, store.n_images, with_gt_prob=True, check=True)
    assert labels.gt_prob is None
    with pytest.raises(Exception, match="add-gt-prob"):
        store.gt_classes()

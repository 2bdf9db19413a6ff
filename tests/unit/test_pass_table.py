"""Tests of fkd_dali.loaders.pass_table: one read per pass, rows and labels equal the store's, prefetching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fkd_dali.crops.boxes import CropDistribution, decode_boxes, encode_boxes, roi_corners, sample_crops
from fkd_dali.crops.plan import make_pass_plan
from fkd_dali.errors import LabelStoreError
from fkd_dali.loaders.pass_table import PassTablePrefetcher, plan_table, read_pass_table
from fkd_dali.store.opening import create_store, open_store
from fkd_dali.store.schema import CropField, CropLabels, LabelSpec, StoreLayout, StoreSpec, TeacherSpec

M, K, C = 6, 3, 50


@pytest.fixture(scope="module")
def fake_store(photo_index, tmp_path_factory):
    """A store over the photo index with random (but valid) boxes and labels: no teacher needed."""
    spec = StoreSpec(crops_per_image=M, crop=CropDistribution(seed=3), label=LabelSpec(k=K, num_classes=C),
                     teacher=TeacherSpec("fake", "fake", "0" * 64, (3, 32, 32), "bilinear", (0.5,) * 3, (0.5,) * 3),
                     layout=StoreLayout(images_per_chunk=8, slots_per_chunk=4))
    url = str(tmp_path_factory.mktemp("fake") / "fake.zarr")
    store = create_store(url, photo_index, spec)
    rng = np.random.default_rng(0)
    for chunk in range(store.n_chunks):
        a, b = store.chunk_range(chunk)
        boxes, flips = sample_crops(photo_index.sizes[a:b], np.arange(a, b), np.arange(M), spec.crop)
        index = np.stack([np.stack([rng.permutation(C)[:K] for _ in range(M)]) for _ in range(b - a)])
        prob = rng.dirichlet(np.ones(K + 1), size=(b - a, M))[..., :K]
        store.write_chunk(chunk, CropLabels(encode_boxes(boxes, photo_index.sizes[a:b]), flips,
                                            index.astype(np.int16), prob.astype(np.float16)))
    return open_store(url)


@pytest.mark.parametrize("pass_idx, m", [(0, 4), (1, 4), (2, 3), (0, 6), (5, 1)])
def test_table_rows_equal_the_store(fake_store, photo_index, pass_idx, m):
    plan = make_pass_plan(seed=7, pass_idx=pass_idx, m=m, M=M, n_images=len(photo_index))
    table = plan_table(fake_store, photo_index.sizes, plan)
    everything = fake_store.read_images(0, fake_store.n_images)
    ids, slots = plan.images, plan.slots
    assert table.images.tolist() == ids.tolist()
    assert table.slots.tolist() == slots.tolist()
    np.testing.assert_array_equal(table.boxes, everything.boxes[ids][:, slots])
    np.testing.assert_array_equal(table.flips, everything.flips[ids][:, slots].astype(np.int32))
    np.testing.assert_array_equal(table.crop_values["index"], everything.index[ids][:, slots])
    np.testing.assert_array_equal(table.crop_values["prob"], everything.prob[ids][:, slots])
    pixel = decode_boxes(everything.boxes[ids][:, slots], photo_index.sizes[ids])
    np.testing.assert_array_equal(table.rois, roi_corners(pixel))
    assert table.rows(ids).tolist() == list(range(len(ids)))


def test_one_store_read_per_table_and_none_per_image(fake_store, photo_index, monkeypatch):
    calls = {"slots": 0, "images": 0}
    real = fake_store.read_slots
    monkeypatch.setattr(fake_store, "read_slots", lambda s, *a: calls.__setitem__("slots", calls["slots"] + 1)
                        or real(s, *a))
    monkeypatch.setattr(fake_store, "read_images", lambda *a, **k: pytest.fail("per-image read on the hot path"))
    plan = make_pass_plan(seed=1, pass_idx=1, m=4, M=M, n_images=len(photo_index))  # slots 4, 5, 0, 1
    table = plan_table(fake_store, photo_index.sizes, plan)
    labels = table.to_device(torch.device("cpu"))
    for step in range(plan.steps(5)):
        labels.gather(torch.tensor(plan.step_images(step, 5)))
    assert calls == {"slots": 1, "images": 0}


def test_rank_table_holds_only_its_images(fake_store, photo_index):
    plan = make_pass_plan(seed=2, pass_idx=0, m=2, M=M, n_images=len(photo_index), rank=1, world=2)
    table = plan_table(fake_store, photo_index.sizes, plan)
    assert len(table.images) == len(photo_index) // 2
    others = np.setdiff1d(np.arange(len(photo_index)), plan.images)
    assert (table.row_of[others] == -1).all()
    with pytest.raises(LabelStoreError, match="not in the pass table"):
        table.rows(others[:1])


def test_device_gather_puts_crops_of_an_image_together_in_slot_order(fake_store, photo_index):
    slots = np.array([5, 0, 3])
    ids = np.array([4, 0, 19, 7])
    table = read_pass_table(fake_store, photo_index.sizes, slots, ids)
    fields = table.to_device(torch.device("cpu")).gather(torch.tensor([19, 4]))
    assert set(fields) == {"index", "prob"}  # what was declared (top-K, the default), nothing else
    index, prob = fields["index"], fields["prob"]
    assert index.dtype == torch.int64 and prob.dtype == torch.float32
    assert index.shape == (2 * len(slots), K)
    everything = fake_store.read_images(0, fake_store.n_images)
    for row, (img, slot) in enumerate([(19, 5), (19, 0), (19, 3), (4, 5), (4, 0), (4, 3)]):
        assert index[row].tolist() == everything.index[img, slot].tolist()
        assert prob[row].tolist() == everything.prob[img, slot].astype(np.float32).tolist()


def test_table_is_read_only(fake_store, photo_index):
    table = read_pass_table(fake_store, photo_index.sizes, [0, 1], np.arange(3))
    with pytest.raises(ValueError):
        table.crop_values["index"][0, 0, 0] = 1


def test_slots_outside_the_store_are_refused(fake_store, photo_index):
    with pytest.raises(LabelStoreError, match="outside"):
        read_pass_table(fake_store, photo_index.sizes, [M], np.arange(3))


def test_prefetcher_reads_the_next_pass_in_the_background(fake_store, photo_index):
    def plan(p):
        return make_pass_plan(seed=5, pass_idx=p, m=3, M=M, n_images=len(photo_index))

    pre = PassTablePrefetcher(lambda p: plan_table(fake_store, photo_index.sizes, plan(p)), last_pass=2)
    try:
        t0 = pre.get(0)
        assert set(pre._futures) == {1}  # pass 1 is being read while pass 0 trains
        t1 = pre.get(1)
        assert set(pre._futures) == {2}
        t2 = pre.get(2)
        assert pre._futures == {}  # nothing past the last pass
        for p, t in enumerate((t0, t1, t2)):
            ref = plan_table(fake_store, photo_index.sizes, plan(p))
            assert t.pass_idx == p
            np.testing.assert_array_equal(t.images, ref.images)
            np.testing.assert_array_equal(t.crop_values["index"], ref.crop_values["index"])
            np.testing.assert_array_equal(t.rois, ref.rois)
        # a resume jumps ahead: stale prefetches are dropped, the wanted pass is read
        pre.prefetch(0)
        assert pre.get(2).pass_idx == 2 and pre._futures == {}
    finally:
        pre.close()


def test_dense_labels_of_a_full_store(photo_index, tmp_path):
    spec = StoreSpec(crops_per_image=2, crop=CropDistribution(), label=LabelSpec(kind="full", k=2, num_classes=4),
                     teacher=TeacherSpec("fake", "fake", "0" * 64, (3, 32, 32), "bilinear", (0.5,) * 3, (0.5,) * 3),
                     layout=StoreLayout(images_per_chunk=32, slots_per_chunk=2))
    store = create_store(str(tmp_path / "full.zarr"), photo_index, spec)
    n = len(photo_index)
    full = np.random.default_rng(1).dirichlet(np.ones(4), size=(n, 2)).astype(np.float16)
    top = np.argsort(-full.astype(np.float32), axis=2)[..., :2]
    boxes, flips = sample_crops(photo_index.sizes, np.arange(n), np.arange(2), spec.crop)
    store.write_chunk(0, CropLabels(encode_boxes(boxes, photo_index.sizes), flips, top.astype(np.int16),
                                    np.take_along_axis(full, top, 2), full))
    table = read_pass_table(store, photo_index.sizes, [1], np.array([3, 9]), fields={CropField.DENSE})
    dense = table.to_device(torch.device("cpu")).gather(torch.tensor([9, 3]))["dense"]
    np.testing.assert_array_equal(dense.numpy(), full[[9, 3], 1].astype(np.float32))
    assert "dense" not in read_pass_table(store, photo_index.sizes, [1], np.arange(2)).crop_values


def test_dense_labels_need_a_full_store(fake_store, photo_index):
    with pytest.raises(LabelStoreError, match="no dense ones"):
        read_pass_table(fake_store, photo_index.sizes, [0], np.arange(2), fields={CropField.DENSE})


def test_boxes_on_the_device_are_the_stored_fractions_and_flips(fake_store, photo_index):
    table = read_pass_table(fake_store, photo_index.sizes, [2, 0], np.array([5, 1]), fields={CropField.BOX})
    got = table.to_device(torch.device("cpu")).gather(torch.tensor([1, 5]))
    stored = fake_store.read_images(0, fake_store.n_images)
    sizes = photo_index.sizes[[1, 1, 5, 5]]
    want_box = decode_boxes(stored.boxes[[1, 1, 5, 5], [2, 0, 2, 0]], sizes) / sizes[:, [0, 1, 0, 1]]
    np.testing.assert_allclose(got["box"].numpy(), want_box, rtol=1e-6)  # exact pixel fractions, (i/H, j/W, h/H, w/W)
    assert got["box"].dtype == torch.float32
    assert got["flip"].tolist() == stored.flips[[1, 1, 5, 5], [2, 0, 2, 0]].tolist()
    assert set(got) == {"box", "flip"}

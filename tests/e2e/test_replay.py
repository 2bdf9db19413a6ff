"""The replay loader end to end on real photos and a store labelled by the real teacher (CPU DALI).

Pixels equal an independent PIL reference for the stored boxes and flips; every pass
covers each image with exactly its m slots; labels equal the store's; resuming mid-pass
skips steps without decoding them; a corrupt file is named.
"""
from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from fkd_dali.crops.boxes import decode_boxes
from fkd_dali.data.index import build_index
from fkd_dali.errors import ConfigError, CorruptImageError
from fkd_dali.loaders.replay import ReplayLoader
from fkd_dali.loaders.sources import StoreCrops
from fkd_dali.store.opening import open_store
from fkd_dali.store.schema import TOPK_ONLY

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PIL_INTERP = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(small_store):
    return open_store(str(small_store))


def loader(store, index, m=4, batch=12, size=64, interpolation="bilinear", device="cpu", fields=TOPK_ONLY,
           **kw) -> ReplayLoader:
    return ReplayLoader(StoreCrops(store, index.sizes, fields), index, m=m, batch_size=batch, size=size, mean=MEAN,
                        std=STD, interpolation=interpolation, seed=11, threads=2, device=device, **kw)


def reference_crop(index, store_all, image: int, slot: int, size: int, interpolation: str) -> np.ndarray:
    """PIL: decode, crop the stored integer box, resize, flip -> float64 HWC pixels (0-255)."""
    y, x, h, w = decode_boxes(store_all.boxes[image, slot][None], index.sizes[image][None])[0]
    with Image.open(index.abspath(image)) as im:
        crop = im.convert("RGB").crop((int(x), int(y), int(x + w), int(y + h)))
    crop = crop.resize((size, size), PIL_INTERP[interpolation])
    if store_all.flips[image, slot]:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop, dtype=np.float64)


def to_pixels(crop: torch.Tensor) -> np.ndarray:
    """Undo the normalization: CHW normalized -> HWC pixel units."""
    chw = crop.float().cpu().numpy().transpose(1, 2, 0)
    return chw * np.array(STD) * 255 + np.array(MEAN) * 255


def check_pixels(store, index, batches, size: int, interpolation: str) -> int:
    everything = store.read_images(0, store.n_images)
    diffs, n = [], 0
    for batch in batches:
        for crop, (image, slot) in zip(batch.images, batch.meta.tolist()):
            d = np.abs(to_pixels(crop) - reference_crop(index, everything, image, slot, size, interpolation))
            assert d.mean() <= 1.0, f"image {index.paths[image]} slot {slot}: mean abs diff {d.mean():.2f} px"
            diffs.append(d.ravel())
            n += 1
    p99 = np.percentile(np.concatenate(diffs), 99)
    assert p99 <= 3.0, f"99th percentile of |replay - PIL| is {p99:.2f} px"
    return n


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_replayed_pixels_equal_a_pil_reference(store, photo_index, interpolation):
    """Covers the PNG, the CMYK JPEG and the grayscale class too (all 21 images x 4 crops)."""
    ld = loader(store, photo_index, size=96, interpolation=interpolation)
    try:
        n = check_pixels(store, photo_index, ld.pass_batches(1), 96, interpolation)
    finally:
        ld.close()
    assert n == len(photo_index) * 4


def test_one_pass_gives_every_image_its_m_slots_and_a_cycle_uses_every_crop_once(store, photo_index):
    m, M = 4, store.crops_per_image
    ld = loader(store, photo_index, m=m, batch=12)  # 3 images per step: 21 images, no tail
    used: Counter = Counter()
    try:
        for p in range(M // m):
            slots = set(range(p * m, (p + 1) * m))
            per_image: dict[int, list[int]] = {}
            for batch in ld.pass_batches(p):
                assert batch.images.shape == (12, 3, 64, 64)
                meta = batch.meta.tolist()
                for j in range(0, len(meta), m):  # crops of one image are adjacent, in slot order
                    group = meta[j:j + m]
                    assert len({i for i, _ in group}) == 1
                    assert [s for _, s in group] == sorted(slots)
                for image, slot in meta:
                    per_image.setdefault(image, []).append(slot)
                    used[(image, slot)] += 1
            assert sorted(per_image) == list(range(len(photo_index)))
            assert all(sorted(v) == sorted(slots) for v in per_image.values())
    finally:
        ld.close()
    assert len(used) == len(photo_index) * M and set(used.values()) == {1}


def test_the_tail_smaller_than_a_step_is_dropped_not_padded(store, photo_index):
    ld = loader(store, photo_index, m=2, batch=8)  # 4 images per step: 5 steps, 1 image left out
    try:
        assert ld.steps_per_pass == 5
        images = [i for b in ld.pass_batches(0) for i, _ in b.meta.tolist()]
    finally:
        ld.close()
    counts = Counter(images)
    assert len(counts) == len(photo_index) - 1 and set(counts.values()) == {2}


def test_labels_are_the_stores_labels_of_each_crop(store, photo_index):
    everything = store.read_images(0, store.n_images)
    ld = loader(store, photo_index, m=4, batch=8)
    try:
        for p in (0, 1):
            for batch in ld.pass_batches(p):
                ids, slots = batch.meta[:, 0].numpy(), batch.meta[:, 1].numpy()
                index, prob = batch.field("index"), batch.field("prob")
                np.testing.assert_array_equal(index.numpy(), everything.index[ids, slots].astype(np.int64))
                np.testing.assert_array_equal(prob.numpy(), everything.prob[ids, slots].astype(np.float32))
                assert index.dtype == torch.int64 and prob.dtype == torch.float32
    finally:
        ld.close()


def test_resume_mid_pass_replays_the_same_batches_without_decoding_the_skipped_steps(store, photo_index,
                                                                                     monkeypatch):
    import fkd_dali.loaders.feed as iterators

    ld = loader(store, photo_index, m=4, batch=8)
    try:
        full = list(ld.pass_batches(1))
        read: list[str] = []
        real = iterators.read_encoded
        monkeypatch.setattr(iterators, "read_encoded", lambda path: read.append(path) or real(path))
        partial = list(ld.pass_batches(1, start_step=3))
    finally:
        ld.close()
    assert len(full) == 10 and len(partial) == 7
    for a, b in zip(full[3:], partial):
        assert torch.equal(a.meta, b.meta)
        assert torch.equal(a.images, b.images)
        assert all(torch.equal(a.fields[k], b.fields[k]) for k in ("index", "prob"))
    skipped = {photo_index.abspath(int(i)) for b in full[:3] for i in b.meta[:, 0].unique()}
    assert len(read) == 7 * 2 and not skipped & set(read)


def test_an_abandoned_pass_does_not_leak_batches_into_the_next(store, photo_index):
    ld = loader(store, photo_index, m=4, batch=8)
    try:
        it = ld.pass_batches(0)
        next(it)
        it.close()
        first = next(iter(ld.pass_batches(1)))
        expected = ld.plan(1).step_images(0, 2)
    finally:
        ld.close()
    assert first.meta[::4, 0].tolist() == expected.tolist()


def test_without_labels(store, photo_index):
    ld = loader(store, photo_index, fields=frozenset())
    try:
        batch = next(iter(ld.pass_batches(0)))
    finally:
        ld.close()
    assert batch.fields == {} and batch.images.shape[0] == 12


def test_batch_not_a_multiple_of_m_is_refused(store, photo_index):
    with pytest.raises(ConfigError, match="multiple of the 4 crops per image"):
        loader(store, photo_index, m=4, batch=10)


@pytest.mark.parametrize("damage, batch", [("truncated", 84), ("garbled", 84), ("garbled", 8)])
def test_a_corrupt_jpeg_met_during_replay_names_the_file(store, photo_root, tmp_path, damage, batch):
    """Truncated files are caught before DALI; garbled ones by DALI, then found among the files in flight
    (batch 84: in the very first batch, which DALI decodes while the iterator is built)."""
    root = tmp_path / "train"
    shutil.copytree(photo_root, root)
    index = build_index(root)
    victim = root / index.paths[5]
    data = victim.read_bytes()  # damaged after indexing
    if damage == "truncated":
        victim.write_bytes(data[: len(data) // 2])
    else:
        noise = np.random.default_rng(0).integers(0, 255, len(data) - 22, dtype=np.uint8).tobytes()
        victim.write_bytes(data[:20] + noise + b"\xff\xd9")
    ld = loader(store, index, m=4, batch=batch)
    try:
        with pytest.raises(CorruptImageError, match=index.paths[5]):
            list(ld.pass_batches(0))
    finally:
        ld.close()


@pytest.mark.gpu
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_gpu_replay_with_mixed_decoding_matches_the_pil_reference(store, photo_index, interpolation):
    ld = loader(store, photo_index, size=96, interpolation=interpolation, device="cuda")
    try:
        batches = list(ld.pass_batches(0))
        assert batches[0].images.is_cuda and batches[0].images.dtype == torch.float16
        assert batches[0].field("index").is_cuda
        n = check_pixels(store, photo_index, batches, 96, interpolation)
    finally:
        ld.close()
    assert n == len(photo_index) * 4

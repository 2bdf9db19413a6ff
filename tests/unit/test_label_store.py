"""The Zarr soft-label store: attributes and arrays round-trip, refusals, pass reads, chunk layout."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, WrapperStore

from fkd_dali.crops.boxes import CropDistribution
from fkd_dali.data.index import DatasetIndex
from fkd_dali.errors import LabelStoreError, StoreMismatchError, StoreSchemaError
from fkd_dali.store.checks import check_dataset
from fkd_dali.store.label_store import LabelStore
from fkd_dali.store.opening import create_store, open_or_create_store, open_store
from fkd_dali.store.schema import (
    ATTR_KEY,
    SCHEMA_VERSION,
    CropField,
    CropLabels,
    LabelSpec,
    StoreLayout,
    StoreSpec,
    TeacherSpec,
    quantize_prob,
    spec_from_attrs,
)

N, M, K = 10, 8, 3
IPC, SPC = 4, 2  # images per chunk (3 chunks: 4, 4, 2 images), slots per chunk


def make_index(n: int = N, root: str = "/data/train") -> DatasetIndex:
    paths = [f"c{i % 3}/img_{i:03d}.JPEG" for i in range(n)]
    order = sorted(range(n), key=lambda i: paths[i])
    return DatasetIndex(root=root, paths=[paths[i] for i in order],
                        classes=np.array([int(paths[i][1]) for i in order], np.int32),
                        sizes=np.array([[100 + i, 200 + 2 * i] for i in order], np.int32),
                        nbytes=np.array([1000 + i for i in order], np.int64),
                        class_names=["c0", "c1", "c2"])


def make_spec(**changes) -> StoreSpec:
    spec = StoreSpec(crops_per_image=M, crop=CropDistribution(seed=3),
                     label=LabelSpec(kind="topk", k=K, num_classes=50, temperature=1.0),
                     teacher=TeacherSpec(name="t", timm_name="resnet10t", checkpoint_sha256="ab" * 32,
                                         input_size=(3, 224, 224), interpolation="bicubic",
                                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
                     layout=StoreLayout(images_per_chunk=IPC, slots_per_chunk=SPC))
    return dataclasses.replace(spec, **changes)


def fake_labels(start: int, stop: int, m: int = M, k: int = K) -> CropLabels:
    """Deterministic values that encode (image, slot) so misplaced rows are caught."""
    n = stop - start
    img = np.arange(start, stop)[:, None]
    slot = np.arange(m)[None, :]
    boxes = np.stack(np.broadcast_arrays(img * 100 + slot, slot, 1000 + img, 2000 + slot), -1).astype(np.uint16)
    index = (img * 10 + slot)[..., None] % 50 + np.zeros((n, m, k), np.int16)
    index = (index + np.arange(k)) % 50
    prob = np.broadcast_to(np.linspace(0.5, 0.1, k), (n, m, k)) / (1 + img[..., None])
    return CropLabels(boxes=boxes, flips=((img + slot) % 2 == 1), index=index.astype(np.int16),
                      prob=prob.astype(np.float16))


@pytest.fixture
def store_url(tmp_path) -> str:
    return str(tmp_path / "s.zarr")


@pytest.fixture
def full_store(store_url) -> LabelStore:
    store = create_store(store_url, make_index(), make_spec())
    for c in range(store.n_chunks):
        a, b = store.chunk_range(c)
        store.write_chunk(c, fake_labels(a, b))
    return store


def _set_attr(url: str, **changes) -> None:
    g = zarr.open_group(url, mode="r+")
    meta = dict(g.attrs[ATTR_KEY])
    meta.update(changes)
    g.attrs[ATTR_KEY] = meta


# -- round trip ------------------------------------------------------------------------------

def test_create_open_round_trip_attrs(store_url):
    index, spec = make_index(), make_spec()
    create_store(store_url, index, spec)
    store = open_store(store_url)
    assert store.spec == spec
    assert spec_from_attrs(store.meta) == spec
    meta = store.meta
    assert meta["schema_version"] == spec.schema_version == 1 and SCHEMA_VERSION == 2  # v2: logits stores only
    assert meta["dataset"] == {"n_images": N, "fingerprint": index.fingerprint, "class_names": ["c0", "c1", "c2"],
                               "skipped": []}
    assert meta["layout"]["box_encoding"] == "uint16-normalized"
    assert meta["teacher"]["input_size"] == [3, 224, 224]
    assert {"writer_version", "created"} <= set(meta)
    assert store.n_images == N and store.crops_per_image == M and store.fingerprint == index.fingerprint
    assert store.n_chunks == 3 and [store.chunk_range(c) for c in range(3)] == [(0, 4), (4, 8), (8, 10)]
    loaded = store.load_index(root="/else")
    assert loaded.paths == index.paths and loaded.class_names == index.class_names
    np.testing.assert_array_equal(loaded.classes, index.classes)
    np.testing.assert_array_equal(loaded.sizes, index.sizes)
    np.testing.assert_array_equal(loaded.nbytes, index.nbytes)
    assert loaded.fingerprint == index.fingerprint


def test_array_shapes_dtypes_and_chunks(store_url):
    store = create_store(store_url, make_index(), make_spec())
    g = store.group
    expect = {"crops/box": ((N, M, 4), np.uint16, (IPC, SPC, 4)), "crops/flip": ((N, M), np.bool_, (IPC, SPC)),
              "labels/index": ((N, M, K), np.int16, (IPC, SPC, K)),
              "labels/prob": ((N, M, K), np.float16, (IPC, SPC, K)), "progress/done": ((3,), np.bool_, (1,)),
              "images/size": ((N, 2), np.int32, (N, 2))}
    for key, (shape, dtype, chunks) in expect.items():
        assert g[key].shape == shape and g[key].dtype == dtype and g[key].chunks == chunks, key
    assert "labels/full" not in g


def test_written_chunks_round_trip(full_store):
    store = open_store(full_store.url)
    got = store.read_images(0, N)
    want = fake_labels(0, N)
    for f in ("boxes", "flips", "index"):
        np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f)
    # probabilities are kept to the store's quantum (documented in the attributes)
    assert store.meta["layout"]["prob_quantum"] == 2.0 ** -12
    np.testing.assert_array_equal(got.prob, quantize_prob(want.prob))
    np.testing.assert_allclose(got.prob.astype(np.float32), want.prob.astype(np.float32), atol=2.0 ** -13 + 1e-4)
    part = store.read_images(3, 6)
    np.testing.assert_array_equal(part.index, want.index[3:6])
    assert store.done().tolist() == [True, True, True] and store.missing_chunks() == []
    store.check_complete()


def test_full_label_kind(store_url):
    spec = make_spec(label=LabelSpec(kind="full", k=K, num_classes=50))
    store = create_store(store_url, make_index(), spec)
    lab = fake_labels(0, IPC)
    with pytest.raises(LabelStoreError, match="full"):
        store.write_chunk(0, lab)
    lab.full = np.random.default_rng(0).random((IPC, M, 50)).astype(np.float16)
    store.write_chunk(0, lab)
    got = open_store(store_url).read_slots([1, 2], {CropField.TOPK, CropField.DENSE})
    np.testing.assert_array_equal(got.full[:IPC], lab.full[:, 1:3])
    assert np.isnan(got.full[IPC:]).all()


@pytest.mark.parametrize("field,shape", [("boxes", (IPC, M, 3)), ("flips", (IPC, M + 1)),
                                         ("index", (IPC - 1, M, K)), ("prob", (IPC, M, K + 1))])
def test_write_chunk_checks_shapes(store_url, field, shape):
    store = create_store(store_url, make_index(), make_spec())
    lab = fake_labels(0, IPC)
    setattr(lab, field, np.zeros(shape, getattr(lab, field).dtype))
    with pytest.raises(LabelStoreError, match="expected shape"):
        store.write_chunk(0, lab)
    assert not store.done().any()


# -- reading passes --------------------------------------------------------------------------

@pytest.mark.parametrize("slots", [[6, 7, 0, 1], [0, 1, 2, 3], [3], [7, 0], [2, 5, 4, 1], list(range(M))])
def test_read_slots_equals_fancy_indexed_images(full_store, slots):
    everything = full_store.read_images(0, N)
    got = full_store.read_slots(slots)
    for f in ("boxes", "flips", "index", "prob"):
        np.testing.assert_array_equal(getattr(got, f), getattr(everything, f)[:, slots], err_msg=f)


def test_unwritten_rows_read_as_missing(store_url):
    store = create_store(store_url, make_index(), make_spec())
    store.write_chunk(1, fake_labels(4, 8))
    got = open_store(store_url).read_slots([6, 7, 0, 1])
    assert (got.index[:4] == -1).all() and (got.index[8:] == -1).all()
    assert np.isnan(got.prob[:4]).all() and np.isnan(got.prob[8:]).all()
    assert (got.index[4:8] >= 0).all() and not np.isnan(got.prob[4:8]).any()
    assert store.done().tolist() == [False, True, False]
    assert store.missing_chunks() == [0, 2]
    with pytest.raises(LabelStoreError) as e:
        store.check_complete()
    msg = str(e.value)
    assert "2 of 3 chunks" in msg and "images 0-3, 8-9" in msg and "labels generate" in msg


# -- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [99, 0, None, "1"])
def test_unknown_schema_version_refused(full_store, version):
    _set_attr(full_store.url, schema_version=version)
    with pytest.raises(StoreSchemaError) as e:
        open_store(full_store.url)
    assert f"schema version {version!r}" in str(e.value)
    with pytest.raises(StoreSchemaError):  # a resuming writer is refused too, without waiting
        open_or_create_store(full_store.url, make_index(), make_spec(), wait_s=0.1)


def test_plain_zarr_group_is_not_a_store(tmp_path):
    url = str(tmp_path / "plain.zarr")
    zarr.open_group(url, mode="w").attrs["something"] = 1
    with pytest.raises(LabelStoreError, match="not an fkd-dali soft-label store") as e:
        open_store(url)
    assert not isinstance(e.value, StoreSchemaError)


def test_missing_store(tmp_path):
    with pytest.raises(LabelStoreError, match="no soft-label store"):
        open_store(str(tmp_path / "absent.zarr"))


def test_create_refuses_existing(full_store):
    with pytest.raises(LabelStoreError, match="already exists"):
        create_store(full_store.url, make_index(), make_spec())
    assert open_store(full_store.url).done().all()  # and left it intact


def _bump_bytes(idx: DatasetIndex) -> DatasetIndex:
    nbytes = idx.nbytes.copy()
    nbytes[5] += 1
    return dataclasses.replace(idx, nbytes=nbytes)


def _rename(idx: DatasetIndex) -> DatasetIndex:
    paths = list(idx.paths)
    paths[2] = paths[2].replace(".JPEG", "_x.JPEG")
    return dataclasses.replace(idx, paths=paths)


def _drop(idx: DatasetIndex) -> DatasetIndex:
    return DatasetIndex(idx.root, idx.paths[:-1], idx.classes[:-1], idx.sizes[:-1], idx.nbytes[:-1],
                        idx.class_names)


def _classes(idx: DatasetIndex) -> DatasetIndex:
    return dataclasses.replace(idx, class_names=["c0", "c1", "c2", "c3"])


@pytest.mark.parametrize("change,expect", [
    (_bump_bytes, lambda i: [i.paths[5], f"{i.nbytes[5]} bytes in the store but {i.nbytes[5] + 1} on disk"]),
    (_rename, lambda i: [i.paths[2], i.paths[2].replace(".JPEG", "_x.JPEG")]),
    (_drop, lambda i: ["image count differs (10 in store vs 9 on disk)"]),
    (_classes, lambda i: ["class folders differ"]),
])
def test_check_dataset_names_the_difference(full_store, change, expect):
    index = make_index()
    check_dataset(full_store, index)  # same dataset: fine
    other = change(index)
    with pytest.raises(StoreMismatchError) as e:
        check_dataset(full_store, other)
    msg = str(e.value)
    assert "fingerprint" in msg and index.fingerprint[:12] in msg and other.fingerprint[:12] in msg
    for part in expect(index):
        assert part in msg, msg


@pytest.mark.parametrize("changes,field", [
    (dict(crop=CropDistribution(seed=4)), "crop.seed: store has 3, run asks 4"),
    (dict(crop=CropDistribution(seed=3, scale=(0.2, 1.0))), "crop.scale"),
    (dict(crops_per_image=M + 1), "crops_per_image: store has 8, run asks 9"),
    (dict(label=LabelSpec(k=K + 1, num_classes=50)), "label.k"),
    (dict(label=LabelSpec(k=K, num_classes=50, temperature=2.0)), "label.temperature"),
    (dict(layout=StoreLayout(images_per_chunk=IPC + 1, slots_per_chunk=SPC)), "layout.images_per_chunk"),
])
def test_open_or_create_with_other_spec(full_store, changes, field):
    with pytest.raises(StoreMismatchError) as e:
        open_or_create_store(full_store.url, make_index(), make_spec(**changes), wait_s=0.1)
    assert field in str(e.value)


def test_open_or_create_with_other_teacher(full_store):
    spec = make_spec()
    spec = dataclasses.replace(spec, teacher=dataclasses.replace(spec.teacher, checkpoint_sha256="cd" * 32))
    with pytest.raises(StoreMismatchError, match="teacher.checkpoint_sha256"):
        open_or_create_store(full_store.url, make_index(), spec, wait_s=0.1)


def test_open_or_create_resumes_same_spec(store_url):
    first = open_or_create_store(store_url, make_index(), make_spec())
    first.write_chunk(2, fake_labels(8, 10))
    again = open_or_create_store(store_url, make_index(), make_spec(), wait_s=0.1)
    assert again.missing_chunks() == [0, 1]
    np.testing.assert_array_equal(again.read_images(8, 10).index, fake_labels(8, 10).index)


def test_open_or_create_other_dataset(full_store):
    with pytest.raises(StoreMismatchError, match="another dataset"):
        open_or_create_store(full_store.url, _bump_bytes(make_index()), make_spec(), wait_s=0.1)


# -- chunk layout ----------------------------------------------------------------------------

class RecordingStore(WrapperStore):
    """Records every key read, to check which chunk files an access touches."""

    def __init__(self, store) -> None:
        super().__init__(store)
        self.keys: list[str] = []

    async def get(self, key, prototype, byte_range=None):
        self.keys.append(key)
        return await self._store.get(key, prototype, byte_range)


def test_chunk_files_on_disk(full_store, store_url):
    box_files = sorted(p.relative_to(full_store.group.store.root / "crops" / "box").as_posix()
                       for p in (full_store.group.store.root / "crops" / "box").rglob("*") if p.is_file()
                       and p.name != "zarr.json")
    # (image chunk, slot chunk, 0): 3 image chunks x 4 slot chunks
    assert box_files == sorted(f"c/{i}/{s}/0" for i in range(3) for s in range(4))
    done_files = sorted(p.name for p in (full_store.group.store.root / "progress" / "done" / "c").iterdir())
    assert done_files == ["0", "1", "2"]  # one file per flag


@pytest.mark.parametrize("slots,slot_chunks", [([2, 3], {1}), ([6, 7, 0, 1], {3, 0}), ([1, 2], {0, 1})])
def test_pass_slice_reads_only_its_chunks(full_store, slots, slot_chunks):
    rec = RecordingStore(LocalStore(full_store.group.store.root, read_only=True))
    store = LabelStore(zarr.open_group(rec, mode="r"), "recorded")
    rec.keys.clear()
    store.read_slots(slots)
    for name in ("crops/box", "crops/flip", "labels/index", "labels/prob"):
        touched = {k[len(name) + 1:] for k in rec.keys if k.startswith(name + "/c/")}
        tail = "/0" if name != "crops/flip" else ""
        assert touched == {f"c/{i}/{s}{tail}" for i in range(3) for s in slot_chunks}, name


# -- concurrent creation ---------------------------------------------------------------------

def _race(url: str, writers: int = 2) -> list[object]:
    import threading

    barrier = threading.Barrier(writers)
    results: list[object] = [None] * writers

    def run(k: int) -> None:
        barrier.wait()
        try:
            results[k] = open_or_create_store(url, make_index(), make_spec(), wait_s=20)
        except Exception as e:  # recorded, asserted below
            results[k] = e

    threads = [threading.Thread(target=run, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("trial", range(8))
def test_writers_starting_together_share_one_store(tmp_path, trial):
    """torchrun / --shard writers all try to create the store at once: all must end up with it."""
    url = str(tmp_path / "race.zarr")
    results = _race(url, writers=3)
    for r in results:
        assert isinstance(r, LabelStore), repr(r)
    results[0].write_chunk(0, fake_labels(0, IPC))
    assert open_store(url).done().tolist() == [True, False, False]

"""The feed side of the crop graph: flips travel as reversed ROIs; files are read into recycled memory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fkd_dali.data.index import DatasetIndex
from fkd_dali.errors import CorruptImageError
from fkd_dali.loaders import feed
from fkd_dali.loaders.feed import FeedBatch, FileReader, flipped_rois, read_encoded


def test_flipped_rois_swap_x_of_flipped_crops_only():
    rois = np.array([[1, 2, 11, 22], [3, 4, 13, 24]], np.float32)
    out = flipped_rois(rois, np.array([0, 1]))
    np.testing.assert_array_equal(out, [[1, 2, 11, 22], [3, 24, 13, 4]])
    np.testing.assert_array_equal(rois, [[1, 2, 11, 22], [3, 4, 13, 24]])  # input untouched
    assert out.dtype == np.float32


def test_feed_batch_hands_the_graph_reversed_rois():
    rois = np.array([[0, 0, 5, 5], [0, 1, 5, 6]], np.float32)
    batch = FeedBatch(encoded=[np.zeros(1, np.uint8)], rois=[rois], flips=[np.array([1, 0], np.int32)],
                      meta=[np.zeros(1, np.int64)])
    np.testing.assert_array_equal(batch.flipped_rois[0], [[0, 5, 5, 0], [0, 1, 5, 6]])


def test_flipped_rois_of_a_dense_batch_match_the_per_image_result():
    rng = np.random.default_rng(0)
    rois = rng.uniform(0, 100, (5, 3, 4)).astype(np.float32)
    flips = rng.integers(0, 2, (5, 3)).astype(np.int32)
    dense = FeedBatch(encoded=[], rois=rois, flips=flips, meta=np.zeros((5, 2), np.int64)).flipped_rois
    assert isinstance(dense, np.ndarray) and dense.shape == (5, 3, 4) and dense.dtype == np.float32
    np.testing.assert_array_equal(dense, np.stack([flipped_rois(r, f) for r, f in zip(rois, flips)]))


# -- reading files: recycled memory must never change an array a caller still holds ------------

def _files(root: Path, sizes: list[int]) -> list[Path]:
    """JPEG-shaped files (SOI ... EOI) of the given sizes, each with distinct random content."""
    rng = np.random.default_rng(7)
    paths = []
    for n, size in enumerate(sizes):
        path = root / f"f{n}.JPEG"
        path.write_bytes(b"\xff\xd8" + rng.integers(0, 256, size - 4, dtype=np.uint8).tobytes() + b"\xff\xd9")
        paths.append(path)
    return paths


def test_read_encoded_arrays_keep_their_bytes_while_later_reads_recycle_memory(tmp_path):
    """More bytes than several slabs: held arrays stay intact, dropped ones' memory is reused."""
    paths = _files(tmp_path, [150_000 + 1000 * n for n in range(24)])
    held = [(p, read_encoded(str(p))) for p in paths[:4]]
    for _ in range(20):  # ~60 MB through the arena: far past one slab
        for p in paths[4:]:
            data = read_encoded(str(p))
            assert data.tobytes() == p.read_bytes()
    for p, data in held:
        assert data.tobytes() == p.read_bytes()
    assert len(feed._ARENA.slabs) <= feed._KEPT_SLABS


def test_read_encoded_gives_large_files_their_own_array(tmp_path):
    (path,) = _files(tmp_path, [feed._LARGE_FILE + 1])
    data = read_encoded(str(path))
    assert data.base is None and len(data) == path.stat().st_size and data.tobytes() == path.read_bytes()


def test_read_encoded_finds_the_end_marker_before_a_trailer_and_rejects_a_cut_file(tmp_path):
    (path,) = _files(tmp_path, [5000])
    whole = path.read_bytes()
    path.write_bytes(whole + b"\0" * 100)  # data after EOI: accepted
    assert len(read_encoded(str(path))) == len(whole) + 100
    path.write_bytes(whole[:-2])
    with pytest.raises(CorruptImageError, match="truncated JPEG"):
        read_encoded(str(path))
    with pytest.raises(CorruptImageError, match="cannot read"):
        read_encoded(str(tmp_path))  # a folder


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_file_reader_returns_each_steps_files_in_order(tmp_path, threads):
    paths = _files(tmp_path, [3000 + 10 * n for n in range(7)])
    index = DatasetIndex(root=str(tmp_path), paths=[p.name for p in paths], classes=np.zeros(7, np.int32),
                         sizes=np.ones((7, 2), np.int32), nbytes=np.array([p.stat().st_size for p in paths]),
                         class_names=["c"])
    images = np.array([6, 0, 5, 1, 4, 2, 3])
    blocks = [slice(0, 3), slice(3, 6), slice(6, 7)]
    reader = FileReader(index, threads)
    try:
        steps = list(reader.steps(images, blocks))
    finally:
        reader.close()
    assert [len(p) for p, _ in steps] == [3, 3, 1]
    for (got_paths, data), block in zip(steps, blocks):
        expected = [paths[i] for i in images[block]]
        assert got_paths == [str(p) for p in expected]
        assert [d.tobytes() for d in data] == [p.read_bytes() for p in expected]

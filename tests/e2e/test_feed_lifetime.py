"""Zero-copy feeding: DALI reads file bytes in place, from memory that `read_encoded` recycles.

The replay hands DALI its arrays without a copy (`no_copy`), and the file bytes live in
slabs that are reused once nothing references them; the source keeps its last batches
referenced for as long as DALI's documented contract requires (`zero_copy_ok`). With
slabs shrunk so that they are recycled every step or two, the replayed crops must be
bit-identical to a replay where DALI copies everything. A stress test, not a proof: a
race needs unlucky timing, and DALI usually reads a batch soon after it is fed.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fkd_dali.loaders import feed
from fkd_dali.loaders.replay import ReplayLoader
from fkd_dali.loaders.sources import StoreCrops
from fkd_dali.pipelines.crops import zero_copy_ok
from fkd_dali.store.opening import open_store

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _CopyingSource(feed.BatchSource):
    """A source that keeps nothing: the pipeline must copy what it is fed."""

    def __init__(self, remember: int = 8) -> None:
        super().__init__(remember, keeps=0)


class _CountingArena(feed._Arena):
    """The arena, counting (over all threads) the slabs it hands out again."""

    reuses = 0

    def _unused_slab(self) -> np.ndarray:
        known = {id(s) for s in self.slabs}  # ids, not references: a reference would keep slabs busy
        slab = super()._unused_slab()
        if id(slab) in known:
            type(self).reuses += 1
        return slab


def _replay(store, index, passes: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = ReplayLoader(StoreCrops(store, index.sizes, fields=frozenset()), index, m=4, batch_size=12, size=48,
                          mean=MEAN, std=STD, interpolation="bilinear", seed=5, threads=2)
    try:
        return [(b.images.clone(), b.meta.clone()) for p in range(passes) for b in loader.pass_batches(p)]
    finally:
        loader.close()


def test_the_replay_feeds_dali_without_copies():
    assert zero_copy_ok(feed.BatchSource(), prefetch=2) and not zero_copy_ok(_CopyingSource(), prefetch=2)
    assert not zero_copy_ok(lambda: None, prefetch=2)  # a plain callable keeps nothing


def test_recycled_file_memory_never_changes_crops_in_flight(small_store, photo_index, monkeypatch):
    store = open_store(str(small_store))
    monkeypatch.setattr(feed, "BatchSource", _CopyingSource)
    copied = _replay(store, photo_index, passes=3)
    monkeypatch.undo()
    largest = int(photo_index.nbytes.max())
    monkeypatch.setattr(feed, "_SLAB_BYTES", 2 * largest + 2 * feed._ALIGN)  # 2-4 files per slab
    monkeypatch.setattr(feed, "_LARGE_FILE", largest)
    monkeypatch.setattr(feed, "_KEPT_SLABS", 2)
    monkeypatch.setattr(feed, "_ARENA", _CountingArena())
    in_place = _replay(store, photo_index, passes=3)
    assert _CountingArena.reuses >= 3  # slabs really were recycled while the replay ran
    assert len(in_place) == len(copied) == 3 * 7
    for (a, meta_a), (b, meta_b) in zip(copied, in_place):
        assert torch.equal(meta_a, meta_b)
        assert torch.equal(a, b), f"images {np.unique(meta_a[:, 0].numpy()).tolist()} differ"

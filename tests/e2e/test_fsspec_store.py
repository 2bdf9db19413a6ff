"""Stores behind fsspec URLs (what multi-node users point at object stores) work like local ones."""
from __future__ import annotations

import numpy as np

from fkd_dali.config import LabelGenConfig
from fkd_dali.labels.generate import generate_labels
from fkd_dali.store.opening import open_store
from fkd_dali.store.tools import verify_store


def _generate(photo_root, url: str) -> None:
    generate_labels(LabelGenConfig(data=str(photo_root), out=url, crops_per_image=4, top_k=3, batch_size=32,
                                   crops_per_round=4, images_per_chunk=8, slots_per_chunk=2, input_size=64,
                                   threads=2, progress=False))


def test_generate_into_fsspec_urls_equals_local(photo_root, tmp_path):
    local = tmp_path / "local.zarr"
    _generate(photo_root, str(local))
    urls = ["memory://fkd-test/store.zarr", f"file://{tmp_path}/remote/store.zarr"]
    want = open_store(str(local)).read_images(0, open_store(str(local)).n_images)
    for url in urls:
        _generate(photo_root, url)
        store = open_store(url)
        assert store.missing_chunks() == []
        got = store.read_images(0, store.n_images)
        for field in ("boxes", "flips", "index", "prob"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
        slots = store.read_slots([3, 0])  # a pass-table read with wrap-around, through fsspec
        np.testing.assert_array_equal(slots.index, want.index[:, [3, 0]])
    assert verify_store(urls[0]).ok

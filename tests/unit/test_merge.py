"""Teacher ensembles: sparse top-K averaging, hand-computed, and a store-level merge."""
from __future__ import annotations

import numpy as np
import pytest

from fkd_dali.errors import StoreMismatchError
from fkd_dali.labels.merge import merge_stores, merge_topk
from fkd_dali.store.opening import open_store
from fkd_dali.store.schema import CHECKSUM_KEY, attrs_checksum


@pytest.mark.parametrize("weights, expect_i, expect_p", [
    # class 2: .5*.3 + .5*.6 = .45; class 1: .5*.5 + .5*.1 = .30; class 4: .5*.2 = .10
    ((0.5, 0.5), [2, 1, 4], [0.45, 0.30, 0.10]),
    # class 1: .75*.5 + .25*.1 = .40; class 2: .75*.3 + .25*.6 = .375; class 3: .75*.1 = .075
    ((0.75, 0.25), [1, 2, 3], [0.40, 0.375, 0.075]),
])
def test_merge_topk_hand_computed(weights, expect_i, expect_p):
    i1, p1 = np.array([[1, 2, 3]]), np.array([[0.5, 0.3, 0.1]])
    i2, p2 = np.array([[2, 4, 1]]), np.array([[0.6, 0.2, 0.1]])
    idx, prob = merge_topk([i1, i2], [p1, p2], weights, k=3)
    assert idx.tolist() == [expect_i]
    np.testing.assert_allclose(prob[0].astype(np.float64), expect_p, atol=1e-3)


def test_merge_of_a_store_with_itself_is_the_store(small_store, tmp_path):
    merged = merge_stores([str(small_store), str(small_store)], str(tmp_path / "ens.zarr"))
    a = open_store(str(small_store)).read_images(0, merged.n_images)
    b = merged.read_images(0, merged.n_images)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.flips, b.flips)
    np.testing.assert_allclose(a.prob.astype(np.float32), b.prob.astype(np.float32), atol=1e-3)
    # ties between equal probabilities may reorder; the sets of classes must agree
    assert (np.sort(a.index, -1) == np.sort(b.index, -1)).mean() > 0.99
    assert merged.spec.teacher.name.startswith("ensemble(")
    assert merged.missing_chunks() == []


def test_merge_refuses_stores_with_other_crops(small_store, copy_store):
    other = copy_store(small_store)
    import zarr

    g = zarr.open_group(str(other), mode="r+")
    meta = dict(g.attrs["fkd_dali"])
    meta["crop"] = {**meta["crop"], "seed": 99}
    g.attrs.update({"fkd_dali": meta, CHECKSUM_KEY: attrs_checksum(meta)})  # a consistent store, other crops
    with pytest.raises(StoreMismatchError, match="different crops"):
        merge_stores([str(small_store), str(other)], str(other) + "-ens")


def test_cli_merge(small_store, tmp_path, capsys):
    from fkd_dali.cli import main

    out = tmp_path / "cli-ens.zarr"
    assert main(["labels", "merge", str(small_store), str(small_store), "--out", str(out), "-K", "3"]) == 0
    assert open_store(str(out)).spec.label.k == 3
    assert main(["labels", "merge", str(small_store), "--out", str(tmp_path / "one.zarr")]) == 2
    assert "at least two stores" in capsys.readouterr().err


def test_info_of_a_merged_store_shows_every_teacher_whole(small_store, photo_root, tmp_path):
    """`labels info` on an ensemble: each teacher's hash, weight, input and normalization, not the first one's."""
    from fkd_dali.config import LabelGenConfig
    from fkd_dali.labels.generate import generate_labels
    from fkd_dali.store.tools import format_store_info, store_info
    from tests.conftest import random_teacher

    other = tmp_path / "other.zarr"
    generate_labels(LabelGenConfig(data=str(photo_root), out=str(other), teacher="resnet10t",
                                   checkpoint=str(random_teacher(tmp_path / "r10.pth")), reference=str(small_store),
                                   input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), batch_size=64,
                                   threads=2, progress=False))
    merged = merge_stores([str(small_store), str(other)], str(tmp_path / "ens.zarr"), weights=[1, 3])
    hashes = [open_store(str(u)).spec.teacher.checkpoint_sha256 for u in (small_store, other)]
    info = store_info(merged.url)
    assert info["teacher"]["checkpoint_sha256"] == ",".join(h[:12] for h in hashes)  # not cut to 16 characters
    text = format_store_info(info)
    teachers = [line for line in text.splitlines() if line.startswith("  teacher ")]
    assert len(teachers) == 2, text
    assert "weight 0.25" in teachers[0] and "weight 0.75" in teachers[1]
    assert hashes[0][:16] in teachers[0] and hashes[1][:16] in teachers[1]
    assert "mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25]" in teachers[1] and "input 3x32x32" in teachers[1]
    assert "std [0.25" not in teachers[0]

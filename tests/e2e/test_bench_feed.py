"""`bench feed`: the replay's host path with a pass-through graph, checked for what DALI receives, and a tiny run.

The pass-through graph hands back each image's ROI corners in place of its crops, so
the replay's feed can be compared with the store: every crop of every step must carry
its stored box (flipped as stored) and the meta of its own image. The tiny run goes
through `fkd-dali bench feed` and checks the JSON and PNG. No timing is asserted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.bench_feed import STAGES, FeedConfig, PassThroughReplay
from bench.corpus import CorpusConfig, build_corpus, build_linked_corpus
from fkd_dali.crops.boxes import decode_boxes, roi_corners
from fkd_dali.data.index import build_index
from fkd_dali.loaders.feed import flipped_rois
from fkd_dali.loaders.sources import StoreCrops
from fkd_dali.store.opening import open_store

REPO = Path(__file__).resolve().parents[2]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("threads", [1, 2])
def test_the_feed_hands_dali_each_crops_stored_box_and_flip(photo_index, small_store, threads):
    store = open_store(str(small_store))
    stored = store.read_images(0, store.n_images)
    replay = PassThroughReplay(StoreCrops(store, photo_index.sizes), photo_index, m=4, batch_size=8, size=32, mean=MEAN,
                               std=STD, seed=3, threads=threads, read_threads=threads)
    try:
        for pass_idx in (0, 1):
            seen = []
            for batch in replay.pass_batches(pass_idx):
                ids, slots = batch.meta[:, 0].numpy(), batch.meta[:, 1].numpy()
                boxes = decode_boxes(stored.boxes[ids, slots], photo_index.sizes[ids])
                expected = flipped_rois(roi_corners(boxes), stored.flips[ids, slots])
                np.testing.assert_allclose(batch.images.numpy(), expected, rtol=0, atol=1e-4)
                np.testing.assert_array_equal(batch.field("index").numpy(), stored.index[ids, slots])
                seen += ids[::4].tolist()
            assert seen == replay.plan(pass_idx).images[:len(seen)].tolist() and len(seen) == 20
    finally:
        replay.close()


def test_linked_corpus_is_imagenet_shaped_hard_links(tmp_path: Path) -> None:
    source = build_corpus(tmp_path / "src", CorpusConfig(n_images=2, seed=1))
    info = build_linked_corpus(tmp_path / "linked", 10, source, n_classes=3)
    index = build_index(info.root)
    assert len(index) == 10 and index.class_names == ["n00000", "n00001", "n00002"]
    inodes = {os.stat(index.abspath(i)).st_ino for i in range(10)}
    assert len(inodes) == 2  # links, not copies
    assert build_linked_corpus(tmp_path / "linked", 10, source, n_classes=3) == info  # reused as is


def test_config_refuses_a_batch_that_m_does_not_divide() -> None:
    from fkd_dali.errors import ConfigError

    with pytest.raises(ConfigError, match="divide"):
        FeedConfig(m=3, batch_size=256)


def test_tiny_feed_benchmark(tmp_path: Path) -> None:
    """Through `fkd-dali bench feed`: every stage and thread count measured, breakdown, target, PNG."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "fkd_dali", "bench", "feed", "--images", "40", "--classes", "4", "--sources", "2",
           "-M", "8", "--m", "2", "--batch-size", "8", "--rounds", "2", "--warmup", "1", "--batches", "3",
           "--threads", "1", "2", "--out", str(out), "--no-progress"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    doc = json.loads((out / "feed.json").read_text())
    assert doc["benchmark"] == "feed" and doc["machine"]["cpu_model"] and len(doc["load_average"]["end"]) == 3
    assert doc["dataset"]["n_images"] == 40 and doc["dataset"]["crops_per_image"] == 8
    labels = {r["label"] for r in doc["rows"]}
    assert labels == {f"{s} (1 thread)" for s, _ in STAGES} | {"feed (2 threads)", "labels (2 threads)"}
    for row in doc["rows"]:
        assert [r["images"] for r in row["rounds"]] == [12, 12]  # 3 steps of 4 images
        assert row["images_per_s"] > 0 and row["cpu_us_per_image"] >= 0
    assert [p["stage"] for p in doc["breakdown"]] == [name for _, name in STAGES]
    assert all(p["cpu_us_per_image"] >= 0 for p in doc["breakdown"])
    assert {(h["path"], h["threads"]) for h in doc["headline"]} == {
        (p, t) for p in ("feed alone", "through external source") for t in (1, 2)}
    assert doc["target"]["minimum"] == 10_000 and isinstance(doc["target"]["met"], bool)
    assert set(summary["cpu_us_per_image"]) == {name for _, name in STAGES}
    with Image.open(out / "feed.png") as png:
        assert png.format == "PNG" and png.size[0] > 500

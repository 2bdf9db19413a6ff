"""The loader benchmark end to end on CPU: corpus, baseline loaders' outputs, and a tiny full run.

The baselines are checked against what their papers define (FKD: the crops are the
stored boxes; ReLabel: a whole-image box gets softmax of the mean map). The full run
goes through `python -m bench loaders` in a subprocess with a tiny random teacher and
checks the JSON and PNG it writes. No timing is asserted anywhere.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from bench.corpus import CorpusConfig, build_corpus
from bench.harness import RoundResult, ratios
from bench.loaders import LOADERS, FkdReferenceDataset, LoaderSpec, ReLabelDataset, create_loader
from fkd_dali.data.index import build_index
from fkd_dali.interop.fkd_files import fkd_file_path, write_fkd_file
from fkd_dali.interop.relabel_maps import label_map_path, relabel_targets, write_label_map

REPO = Path(__file__).resolve().parents[2]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZES = [(48, 64), (64, 48), (40, 40), (56, 72)]  # (height, width) of the 4 test images
NUM_CLASSES, K, SIDE = 20, 3, 16


@pytest.fixture(scope="module")
def noise_index(tmp_path_factory):
    """2 classes x 2 lossless PNGs of random pixels, so a crop identifies its box exactly."""
    root = tmp_path_factory.mktemp("noise") / "train"
    rng = np.random.default_rng(0)
    for n, (h, w) in enumerate(SIZES):
        path = root / f"c{n // 2}" / f"img{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return build_index(root)


def _denormalize(crop: torch.Tensor) -> np.ndarray:
    pixels = crop * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    return (pixels.permute(1, 2, 0).numpy() * 255).round()


def test_fkd_reference_crops_are_the_stored_boxes(noise_index, tmp_path: Path) -> None:
    """Square SIDE-pixel boxes resize to SIDE: each crop must be the box's pixels, flipped as stored."""
    rng = np.random.default_rng(1)
    stored = {}
    for i, rel in enumerate(noise_index.paths):
        h, w = SIZES[i]
        ys, xs = rng.integers(0, h - SIDE + 1, 5), rng.integers(0, w - SIDE + 1, 5)
        coords = np.stack([ys / h, xs / w, np.full(5, SIDE / h), np.full(5, SIDE / w)], 1).astype(np.float32)
        flip = np.array([True, False, True, False, False])
        write_fkd_file(fkd_file_path(tmp_path, rel), coords, flip,
                       np.stack([rng.permutation(NUM_CLASSES)[:K] for _ in range(5)]),
                       np.full((5, K), 0.2, np.float32))
        stored[i] = (ys, xs, flip)
    spec = LoaderSpec(index=noise_index, batch_size=6, workers=0, m=3, image_size=SIDE, mean=MEAN, std=STD,
                      num_classes=NUM_CLASSES, fkd_labels=str(tmp_path))
    dataset = FkdReferenceDataset(spec)
    for i in range(len(noise_index)):
        crops, labels, slots = dataset[i]
        assert crops.shape == (3, 3, SIDE, SIDE) and labels.shape == (3, 2, K)
        image = np.asarray(Image.open(noise_index.abspath(i)), dtype=np.float64)
        ys, xs, flip = stored[i]
        for crop, s in zip(crops, slots.tolist()):
            expected = image[ys[s]:ys[s] + SIDE, xs[s]:xs[s] + SIDE]
            np.testing.assert_array_equal(_denormalize(crop), expected[:, ::-1] if flip[s] else expected)
    # Through the loader: 2 images x 3 crops, soft targets recovered in the main process.
    loader = create_loader("fkd-reference", spec)
    images, targets = next(loader.batches())
    loader.close()
    assert images.shape == (6, 3, SIDE, SIDE) and targets.shape == (6, NUM_CLASSES)
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    assert bool(((targets == 0.2).sum(1) >= K).all())  # the stored top-K probabilities are kept


def test_relabel_whole_image_box_is_softmax_of_pooled_map(noise_index, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    maps = []
    for rel in noise_index.paths:
        scores = torch.randn(K, 15, 15, generator=gen)
        ids = torch.stack([torch.randperm(NUM_CLASSES, generator=gen)[:K] for _ in range(225)]).T.reshape(K, 15, 15)
        write_label_map(label_map_path(tmp_path, rel), scores, ids)
        maps.append(torch.zeros(NUM_CLASSES, 15, 15).scatter_(0, ids, scores))
    spec = LoaderSpec(index=noise_index, batch_size=4, workers=0, image_size=SIDE, num_classes=NUM_CLASSES,
                      label_maps=str(tmp_path))
    for i, (h, w) in enumerate(SIZES):
        whole = ReLabelDataset(spec, scale=(1.0, 1.0), ratio=(w / h, w / h))  # the crop is the whole image
        _, label_map, box = whole[i]
        assert box.tolist() == [0.0, 0.0, 1.0, 1.0]
        target = relabel_targets(label_map[None], box[None], NUM_CLASSES)[0]
        torch.testing.assert_close(target, maps[i].mean(dim=(1, 2)).softmax(0), rtol=1e-5, atol=1e-6)
    loader = create_loader("relabel", spec)
    images, targets = next(loader.batches())
    loader.close()
    assert images.shape == (4, 3, SIDE, SIDE) and targets.shape == (4, NUM_CLASSES)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))


@pytest.mark.parametrize("name", ["torchvision", "dali"])
def test_vanilla_loaders_give_normalized_crops_and_hard_labels(noise_index, name: str) -> None:
    spec = LoaderSpec(index=noise_index, batch_size=4, workers=1, image_size=SIDE)
    loader = create_loader(name, spec)
    stream = loader.batches()
    for _ in range(3):  # more batches than images: the loaders never run dry
        images, labels = next(stream)
        assert images.shape == (4, 3, SIDE, SIDE) and images.dtype == torch.float32
        assert labels.shape == (4,) and set(labels.tolist()) <= {0, 1}
        assert -3.0 < float(images.mean()) < 3.0
    stream.close()
    loader.close()


def test_registry_lists_the_baselines() -> None:
    assert {"torchvision", "dali", "relabel", "fkd-reference"} <= set(LOADERS.names())
    assert LOADERS.get("fkd-reference").multi_crop and "fkd_labels" in LOADERS.get("fkd-reference").needs


def test_corpus_is_imagenet_shaped_and_deterministic(tmp_path: Path) -> None:
    config = CorpusConfig(n_images=4, seed=3)
    a, b = build_corpus(tmp_path / "a", config), build_corpus(tmp_path / "b", config)
    files_a = sorted(Path(a.root).rglob("*.JPEG"))
    assert len(files_a) == 4
    for fa in files_a:
        fb = Path(b.root) / fa.relative_to(a.root)
        assert fa.read_bytes() == fb.read_bytes()
        with Image.open(fa) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 300 <= max(im.size) <= 500 and min(im.size) >= 150
    assert 40 < a.mean_kb < 250


def test_paired_ratios() -> None:
    def r(crops_per_s: float, cpu_per_crop: float) -> RoundResult:
        return RoundResult(crops=1000, seconds=1000 / crops_per_s, cpu_seconds=1000 * cpu_per_crop,
                           peak_rss_mb=1.0, end_pss_mb=None, rss_before_mb=1.0)

    results = {"fast": [r(200, 0.01), r(300, 0.01), r(100, 0.02)],
               "slow": [r(100, 0.02), r(100, 0.04), r(100, 0.04)]}
    (row,) = ratios(["fast"], ["slow"], results)
    assert row["speed"] == pytest.approx(2.0)  # median of 2, 3, 1
    assert row["cpu_efficiency"] == pytest.approx(2.0)  # median of 2, 4, 2


@pytest.mark.slow
def test_tiny_benchmark_writes_json_and_png(tmp_path: Path) -> None:
    """`python -m bench loaders` with a random resnet10t as teacher: completes, valid JSON, a PNG."""
    checkpoint = tmp_path / "tiny.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), checkpoint)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench", "loaders", "--corpus-images", "8", "--batch-size", "8",
           "--workers", "1", "--rounds", "2", "--warmup", "1", "--batches", "2", "--m", "2",
           "--fkd-crops", "2", "--teacher", "resnet10t", "--checkpoint", str(checkpoint),
           "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    doc = json.loads((out / "loaders.json").read_text())
    labels = [row["label"] for row in doc["rows"]]
    assert sorted(labels) == ["dali", "fkd-dali m=2", "fkd-dali-nolabels m=2", "fkd-reference m=2", "relabel",
                              "torchvision"]
    assert set(summary["crops_per_s"]) == set(labels)
    for row in doc["rows"]:
        assert len(row["rounds"]) == 2 and all(r["crops"] == 16 for r in row["rounds"])
        assert row["crops_per_s"] > 0 and row["cpu_s_per_1000_crops"] >= 0 and row["peak_rss_mb"] > 0
    machine = doc["machine"]
    assert machine["cpu_model"] and machine["logical_cores"] >= 1 and "torch" in machine["versions"]
    # FKD's published shape (M=500), built from the very store the fkd-dali rows replay (M=2)
    assert doc["dataset"]["n_images"] == 8 and doc["labels"]["fkd_labels"]["crops_per_image"] == 500
    assert doc["labels"]["fkd_labels"]["kind"] == "fkd-published"
    assert doc["labels"]["store"]["kind"] == "store" and doc["labels"]["store"]["crops_per_image"] == 2
    assert doc["labels"]["fkd_labels"]["source"]
    assert doc["num_classes"] == 1000 and len(machine["load_average"]) == 3
    assert {(r["subject"], r["baseline"]) for r in doc["ratios"]} == {
        ("fkd-dali m=2", b) for b in ("dali", "fkd-reference m=2", "relabel", "torchvision")}
    assert all(r["speed"] > 0 and r["cpu_efficiency"] > 0 for r in doc["ratios"])
    (overhead,) = doc["label_overhead"]
    assert overhead["m"] == 2 and overhead["time_overhead"] > -1
    assert doc["targets"] == []  # the design's targets are stated for m=4
    with Image.open(out / "loaders.png") as png:
        assert png.format == "PNG" and png.size[0] > 500

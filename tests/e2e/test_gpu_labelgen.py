"""GPU label generation and demo: `mixed` (nvJPEG) decoding and the bf16 teacher.

Needs a CUDA GPU; skipped on CPU-only machines. The CPU pipeline is the
reference: nvJPEG and libjpeg-turbo may differ by a grey level or two (IDCT and
chroma upsampling), and bf16 autocast moves probabilities by about 1e-2.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fkd_dali.config import LabelGenConfig
from fkd_dali.crops.boxes import decode_boxes, roi_corners
from fkd_dali.labels.generate import generate_labels
from fkd_dali.loaders.feed import BatchSource, CropIterator, FeedBatch, read_encoded
from fkd_dali.pipelines.crops import make_crop_pipeline
from fkd_dali.store.opening import open_store

pytestmark = pytest.mark.gpu

# nvJPEG vs libjpeg-turbo, after the same crop + resize, in 0..255 pixel units
GPU_CPU_MEAN_TOL = 1.5
GPU_CPU_P99_TOL = 6.0


def _crops(index, spec, boxes, flips, device_id):
    source = BatchSource()
    pipe = make_crop_pipeline(source, n_crops=boxes.shape[1], size=spec.input_size[1],
                              interpolation=spec.interpolation, mean=(0, 0, 0), std=(1 / 255,) * 3,
                              batch_size=4, num_threads=2, device_id=device_id, half=False)
    it = CropIterator(pipe, source)

    def feed():
        for a in range(0, len(index), 4):
            ids = range(a, min(a + 4, len(index)))
            yield FeedBatch(encoded=[read_encoded(index.abspath(i)) for i in ids],
                            rois=[roi_corners(boxes[i]) for i in ids],
                            flips=[flips[i].astype(np.int32) for i in ids],
                            meta=[np.array([i], np.int64) for i in ids])

    out = {}
    for crops, meta in it.epoch(feed()):
        for c, (i,) in zip(crops.float().cpu().numpy(), meta.numpy()):
            out[int(i)] = c
    return out


def test_mixed_decoding_cuts_the_cpu_pixels(small_store, photo_index):
    store = open_store(str(small_store))
    stored = store.read_images(0, store.n_images)
    boxes = decode_boxes(stored.boxes, photo_index.sizes)
    cpu = _crops(photo_index, store.spec.teacher, boxes, stored.flips, None)
    gpu = _crops(photo_index, store.spec.teacher, boxes, stored.flips, 0)
    diff = np.abs(np.stack([gpu[i] for i in sorted(cpu)]) - np.stack([cpu[i] for i in sorted(cpu)]))
    assert diff.mean() <= GPU_CPU_MEAN_TOL, diff.mean()
    assert np.percentile(diff, 99) <= GPU_CPU_P99_TOL, np.percentile(diff, 99)


def test_gpu_labels_match_cpu_labels(small_store, photo_root, tmp_path):
    cpu = open_store(str(small_store))
    s = cpu.spec
    generate_labels(LabelGenConfig(data=str(photo_root), out=str(tmp_path / "gpu.zarr"), crops_per_image=8, top_k=5,
                                   batch_size=64, crops_per_round=8, images_per_chunk=s.layout.images_per_chunk,
                                   slots_per_chunk=s.layout.slots_per_chunk, device="cuda", progress=False))
    gpu = open_store(str(tmp_path / "gpu.zarr"))
    a, b = cpu.read_images(0, cpu.n_images), gpu.read_images(0, gpu.n_images)
    np.testing.assert_array_equal(a.boxes, b.boxes)  # boxes never depend on the device
    np.testing.assert_array_equal(a.flips, b.flips)
    assert (a.index[..., 0] == b.index[..., 0]).mean() >= 0.9
    assert np.abs(a.prob.astype(np.float32) - b.prob.astype(np.float32)).mean() <= 0.02


def test_demo_on_gpu(tmp_path):
    from fkd_dali.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--images-per-class", "2", "-M", "8", "--passes", "2",
                 "--device", "cuda", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["device"].startswith("cuda")
    assert report["imagenet_top1_val"]["teacher"] >= 50.0
    assert torch.cuda.is_available()

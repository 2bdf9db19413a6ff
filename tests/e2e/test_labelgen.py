"""Label generation end to end on CPU: the teacher's pixels, its labels, resume, shards, relabel, bad inputs.

Pixels and probabilities are checked against an independent reference (PIL decode,
integer crop, flip, antialiased bicubic resize, normalize; the teacher run on that).
The crash/parallel tests run `python -m fkd_dali labels generate` in subprocesses at
a 64-pixel teacher input (the determinism under test does not depend on the size,
and it keeps them fast on 2 shared cores).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from fkd_dali.cli import main as cli_main
from fkd_dali.config import LabelGenConfig
from fkd_dali.crops.boxes import decode_boxes, roi_corners
from fkd_dali.data.sample_data import SAMPLE_PHOTOS
from fkd_dali.errors import StoreMismatchError
from fkd_dali.labels import generate as labelgen
from fkd_dali.labels.generate import generate_labels
from fkd_dali.labels.teacher import Teacher, load_teacher
from fkd_dali.loaders.feed import BatchSource, CropIterator, FeedBatch, read_encoded
from fkd_dali.pipelines.crops import make_crop_pipeline
from fkd_dali.store.checks import check_dataset
from fkd_dali.store.opening import open_store
from fkd_dali.store.schema import ATTR_KEY

from ..conftest import random_teacher

REPO = Path(__file__).resolve().parents[2]

# DALI (libjpeg-turbo decode, antialiased cubic resize of the ROI) vs the PIL reference,
# in 0-255 pixel units after undoing the normalization. Measured on the 21 bundled photos
# (M=8, including the PNG, the CMYK JPEG and the grayscale class): per-image mean |diff|
# 0.05-0.22, 99th percentile 1.0, max 7-37 (single pixels where a small box is upscaled
# and the two cubic kernels treat the border differently). CMYK needs no exception:
# DALI and PIL both convert Adobe-inverted CMYK the same way (mean diff 0.15).
# A box off by 2 pixels or a missed flip gives means of several units, far above these.
PIXEL_MEAN_TOL = 0.6
PIXEL_P99_TOL = 2.0
PIXEL_MAX_TOL = 64.0
# Stored probabilities (float16, teacher fed DALI pixels) vs the teacher on the PIL reference.
PROB_TOL = 0.03
TOP1_AGREEMENT = 0.9

ESPRESSO = 967
TRIPOD = 872


def wnid_of(imagenet_index: int) -> str:
    return next(p.wnid for p in SAMPLE_PHOTOS if p.imagenet_index == imagenet_index)


def pil_reference(path: str, box, flip: bool, size: int, mean, std) -> np.ndarray:
    """The crop as a PIL pipeline would cut it: (3, size, size) float32, normalized."""
    y, x, h, w = (int(v) for v in box)
    with Image.open(path) as im:  # no EXIF transpose: boxes are on the stored pixels
        rgb = im.convert("RGB")
    crop = rgb.crop((x, y, x + w, y + h))
    if flip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    crop = crop.resize((size, size), Image.Resampling.BICUBIC)  # PIL's resize antialiases when reducing
    arr = np.asarray(crop, np.float32).transpose(2, 0, 1) / 255.0
    return (arr - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]


def to_pixels(x: np.ndarray, mean, std) -> np.ndarray:
    return (x * np.array(std)[:, None, None] + np.array(mean)[:, None, None]) * 255.0


def pixel_stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    d = np.abs(a - b)
    return float(d.mean()), float(np.percentile(d, 99)), float(d.max())


@pytest.fixture(scope="module")
def lite0() -> Teacher:
    return load_teacher("efficientnet_lite0")


@pytest.fixture(scope="module")
def store_contents(small_store, photo_index):
    store = open_store(str(small_store))
    return store, store.read_images(0, store.n_images), decode_boxes(store.read_images(0, store.n_images).boxes,
                                                                     photo_index.sizes)


# -- pixels and labels -----------------------------------------------------------------------

def _dali_crops(photo_index, spec, ids, boxes, flips, per_round: int) -> dict[int, np.ndarray]:
    """Crops of images `ids` through the crop pipeline built as labelgen builds it."""
    source = BatchSource()
    pipe = make_crop_pipeline(source, n_crops=per_round, size=spec.input_size[1], interpolation=spec.interpolation,
                              mean=spec.mean, std=spec.std, batch_size=2, num_threads=2, device_id=None)
    it = CropIterator(pipe, source)

    def batches():
        for a in range(0, len(ids), 2):
            part = ids[a:a + 2]
            yield FeedBatch(encoded=[read_encoded(photo_index.abspath(i)) for i in part],
                            rois=[roi_corners(boxes[i]) for i in part],
                            flips=[flips[i].astype(np.int32) for i in part],
                            meta=[np.array([i], np.int64) for i in part])

    out = {}
    for crops, meta in it.epoch(batches()):
        for c, (i,) in zip(crops.numpy(), meta.numpy()):
            out[int(i)] = c
    return out


def _odd_and_plain_ids(photo_index) -> list[int]:
    """The PNG, the CMYK JPEG, a grayscale JPEG and a plain RGB JPEG."""
    modes = {}
    for i, p in enumerate(photo_index.paths):
        with Image.open(photo_index.abspath(i)) as im:
            modes.setdefault(("png" if p.endswith(".png") else im.mode), i)
    assert {"png", "CMYK", "L", "RGB"} <= set(modes), modes
    return [modes["png"], modes["CMYK"], modes["L"], modes["RGB"]]


def test_pipeline_pixels_equal_pil_reference(store_contents, photo_index):
    store, labels, boxes = store_contents
    spec = store.spec.teacher
    ids = _odd_and_plain_ids(photo_index)
    crops = _dali_crops(photo_index, spec, ids, boxes, labels.flips, per_round=store.crops_per_image)
    assert sorted(crops) == sorted(ids)
    for i in ids:
        ours = to_pixels(crops[i], spec.mean, spec.std)
        ref = np.stack([to_pixels(pil_reference(photo_index.abspath(i), boxes[i, s], labels.flips[i, s],
                                                spec.input_size[1], spec.mean, spec.std), spec.mean, spec.std)
                        for s in range(store.crops_per_image)])
        mean, p99, mx = pixel_stats(ours, ref)
        assert mean <= PIXEL_MEAN_TOL and p99 <= PIXEL_P99_TOL and mx <= PIXEL_MAX_TOL, \
            f"{photo_index.paths[i]}: mean {mean:.3f} p99 {p99:.2f} max {mx:.1f}"
        # the tolerance has teeth: the unflipped crop, or the box moved by 2 pixels, fails it
        y, x, h, w = boxes[i, 0]
        moved = (min(y + 2, photo_index.sizes[i][0] - h), min(x + 2, photo_index.sizes[i][1] - w), h, w)
        wrong = [pil_reference(photo_index.abspath(i), boxes[i, 0], not labels.flips[i, 0], spec.input_size[1],
                               spec.mean, spec.std)]
        if moved != tuple(boxes[i, 0]):
            wrong.append(pil_reference(photo_index.abspath(i), moved, labels.flips[i, 0], spec.input_size[1],
                                       spec.mean, spec.std))
        for bad in wrong:
            assert pixel_stats(ours[0], to_pixels(bad, spec.mean, spec.std))[0] > 2 * PIXEL_MEAN_TOL


def test_exif_orientation_is_ignored(tmp_path):
    """A photo tagged 'rotate 90' is cut on its stored pixels, exactly as the index measured them."""
    from fkd_dali.data.index import build_index

    path = tmp_path / "d" / "c" / "rotated.JPEG"
    path.parent.mkdir(parents=True)
    yy, xx = np.mgrid[0:120, 0:200]
    pixels = np.stack([xx * 255 // 199, yy * 255 // 119, (xx + yy) % 256], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    index = build_index(tmp_path / "d")
    assert tuple(index.sizes[0]) == (120, 200)
    spec = dataclasses.replace(_spec_like_lite0(), input_size=(3, 64, 64))
    boxes = np.array([[[10, 30, 80, 150], [0, 0, 120, 200]]])
    flips = np.array([[False, True]])
    crops = _dali_crops(index, spec, [0], boxes, flips, per_round=2)
    for s in range(2):
        ref = pil_reference(str(path), boxes[0, s], flips[0, s], 64, spec.mean, spec.std)
        mean, p99, _ = pixel_stats(to_pixels(crops[0][s], spec.mean, spec.std), to_pixels(ref, spec.mean, spec.std))
        assert mean <= PIXEL_MEAN_TOL and p99 <= PIXEL_P99_TOL, (s, mean, p99)


def _spec_like_lite0():
    from fkd_dali.store.schema import TeacherSpec

    return TeacherSpec(name="x", timm_name="x", checkpoint_sha256="0" * 64, input_size=(3, 224, 224),
                       interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


class _RecordingModel(torch.nn.Module):
    """Records each input crop; its top-1 class is the crop's arrival number, so the
    stored index tells which recorded tensor the teacher saw for each stored slot."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.num_classes = 1000

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = sum(len(s) for s in self.seen)
        self.seen.append(x.detach().float().contiguous().clone())
        logits = torch.zeros(len(x), self.num_classes)
        logits[torch.arange(len(x)), (first + torch.arange(len(x))) % self.num_classes] = 30.0
        return logits


def test_teacher_receives_reference_pixels_for_each_stored_slot(photo_root, photo_index, tmp_path, monkeypatch):
    """Through generate_labels itself: 3 crops per round for M=4 (a padded last round), 2 images a batch."""
    model = _RecordingModel()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    fake = Teacher(name="recorder", timm_name="resnet10t", model=model, checkpoint_sha256="0" * 64,
                   input_size=(3, 96, 96), interpolation="bicubic", mean=mean, std=std, num_classes=1000)
    monkeypatch.setattr(labelgen, "load_teacher", lambda name, checkpoint=None, num_classes=None: fake)
    out = tmp_path / "rec.zarr"
    generate_labels(LabelGenConfig(data=str(photo_root), out=str(out), crops_per_image=4, top_k=2, batch_size=6,
                                   crops_per_round=3, images_per_chunk=5, slots_per_chunk=2, threads=2,
                                   progress=False))
    store = open_store(str(out))
    lab = store.read_images(0, store.n_images)
    boxes = decode_boxes(lab.boxes, photo_index.sizes)
    seen = torch.cat(model.seen).numpy()
    assert len(seen) == 21 * 6  # 2 rounds of 3 per image; the 2 padding crops per image are discarded
    arrival = lab.index[..., 0].astype(np.int64)
    assert len(np.unique(arrival)) == arrival.size  # every stored slot maps to its own crop
    for i in range(0, 21, 3):
        for s in range(4):
            ref = pil_reference(photo_index.abspath(i), boxes[i, s], lab.flips[i, s], 96, mean, std)
            mean_d, p99, mx = pixel_stats(to_pixels(seen[arrival[i, s]], mean, std), to_pixels(ref, mean, std))
            assert mean_d <= PIXEL_MEAN_TOL and p99 <= PIXEL_P99_TOL and mx <= PIXEL_MAX_TOL, \
                f"{photo_index.paths[i]} slot {s}: mean {mean_d:.3f} p99 {p99:.2f} max {mx:.1f}"


def test_stored_probabilities_equal_teacher_on_reference(store_contents, photo_index, lite0):
    store, labels, boxes = store_contents
    spec = store.spec.teacher
    assert (spec.name, spec.checkpoint_sha256) == ("efficientnet_lite0", lite0.checkpoint_sha256)
    ids = _odd_and_plain_ids(photo_index)
    ref = np.stack([pil_reference(photo_index.abspath(i), boxes[i, s], labels.flips[i, s], spec.input_size[1],
                                  spec.mean, spec.std) for i in ids for s in range(store.crops_per_image)])
    with torch.inference_mode():
        probs = torch.softmax(lite0.model(torch.from_numpy(ref)), dim=1).numpy()
    k = store.spec.label.k
    stored_i = labels.index[ids].reshape(-1, k).astype(np.int64)
    stored_p = labels.prob[ids].reshape(-1, k).astype(np.float32)
    ref_top = np.argsort(-probs, axis=1)[:, :k]
    assert (stored_i[:, 0] == ref_top[:, 0]).mean() >= TOP1_AGREEMENT
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(stored_i, ref_top)])
    assert overlap >= 0.8, f"top-{k} overlap {overlap:.2f}"
    # the reference probability of every stored class is the stored probability
    np.testing.assert_allclose(np.take_along_axis(probs, stored_i, 1), stored_p, atol=PROB_TOL)
    assert (np.diff(stored_p, axis=1) <= 0).all()  # most probable first
    assert (stored_p.sum(1) <= 1.0 + 1e-2).all()


@pytest.mark.parametrize("imagenet_class,min_share", [(ESPRESSO, 0.5), (TRIPOD, 0.5)])
def test_real_teacher_recognises_the_photos(store_contents, photo_index, imagenet_class, min_share):
    store, labels, _ = store_contents
    cls = photo_index.class_names.index(wnid_of(imagenet_class))
    top1 = labels.index[photo_index.classes == cls][..., 0]
    assert top1.size == 3 * store.crops_per_image
    share = (top1 == imagenet_class).mean()
    assert share >= min_share, f"{share:.0%} of crops of class {imagenet_class} have it as top-1: {top1}"


def test_small_store_is_complete_and_consistent(store_contents, photo_index):
    store, labels, boxes = store_contents
    store.check_complete()
    check_dataset(store, photo_index)
    assert store.meta["dataset"]["skipped"] == []
    assert (labels.index >= 0).all() and np.isfinite(labels.prob.astype(np.float32)).all()
    assert (boxes[..., 2:] >= 1).all()
    assert (boxes[..., 0] + boxes[..., 2] <= photo_index.sizes[:, None, 0]).all()
    assert (boxes[..., 1] + boxes[..., 3] <= photo_index.sizes[:, None, 1]).all()


# -- resume after SIGKILL, concurrent shards --------------------------------------------------

def _gen_args(data, out, *extra) -> list[str]:
    return ["labels", "generate", "--data", str(data), "--out", str(out), "-M", "8", "-K", "5",
            "--images-per-chunk", "3", "--slots-per-chunk", "4", "--batch-size", "16", "--crops-per-round", "8",
            "--input-size", "64", "--threads", "1", "--no-progress", *extra]


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fkd_dali", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{err[-3000:]}"
    return out


def _arrays(url) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(url), mode="r")
    return {k: np.asarray(g[k][:]) for k in ("crops/box", "crops/flip", "labels/index", "labels/prob",
                                              "progress/done", "images/path", "images/size")}


def _assert_same_store(got_url, want_url) -> None:
    got, want = _arrays(got_url), _arrays(want_url)
    for key in want:  # CPU batches depend only on the chunk, so even the probabilities are bit-equal
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert open_store(str(got_url)).spec == open_store(str(want_url)).spec


@pytest.fixture(scope="module")
def uninterrupted(photo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "uninterrupted.zarr"
    _finish(_spawn(_gen_args(photo_root, out)))
    return out


def _done_flags(out: Path) -> list[str]:
    """Committed done flags; zarr writes each through a `<name>.<uuid>.partial` file first."""
    folder = out / "progress" / "done" / "c"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".partial")) if folder.is_dir() else []


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(photo_root, tmp_path, uninterrupted):
    out = tmp_path / "killed.zarr"
    proc = _spawn(_gen_args(photo_root, out))
    deadline = time.monotonic() + 180
    while not _done_flags(out):
        assert proc.poll() is None, f"writer exited before its first chunk: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no chunk finished in time"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    # the killed store is valid: it opens, and every chunk flagged done is complete
    store = open_store(str(out))
    done = store.done()
    assert 1 <= done.sum() < store.n_chunks, f"kill landed after {done.sum()} of {store.n_chunks} chunks"
    lab = store.read_images(0, store.n_images)
    for c in np.flatnonzero(done):
        a, b = store.chunk_range(int(c))
        assert (lab.index[a:b] >= 0).all() and not np.isnan(lab.prob[a:b].astype(np.float32)).any(), c
    with pytest.raises(Exception, match="incomplete"):
        store.check_complete()

    out_text = _finish(_spawn(_gen_args(photo_root, out)))
    assert f'"chunks_skipped": {int(done.sum())}' in out_text
    open_store(str(out)).check_complete()
    _assert_same_store(out, uninterrupted)


@pytest.mark.slow
def test_two_concurrent_shards_equal_single_process(photo_root, tmp_path, uninterrupted):
    out = tmp_path / "sharded.zarr"
    procs = [_spawn(_gen_args(photo_root, out, "--shard", f"{i}/2")) for i in range(2)]
    texts = [_finish(p) for p in procs]
    assert '"chunks_written": 4' in texts[0] and '"chunks_written": 3' in texts[1]  # chunks 0,2,4,6 / 1,3,5
    open_store(str(out)).check_complete()
    _assert_same_store(out, uninterrupted)


# -- relabelling with another teacher --------------------------------------------------------

@pytest.fixture(scope="module")
def resnet10t_ckpt(tmp_path_factory) -> Path:
    return random_teacher(tmp_path_factory.mktemp("ckpt") / "resnet10t_random.pth")


def test_reference_relabels_same_crops_with_new_teacher(photo_root, small_store, resnet10t_ckpt, tmp_path):
    out = tmp_path / "relabel.zarr"
    code = cli_main(["labels", "generate", "--data", str(photo_root), "--out", str(out), "--reference",
                     str(small_store), "--teacher", "resnet10t", "--checkpoint", str(resnet10t_ckpt),
                     "--input-size", "64", "--batch-size", "32", "--images-per-chunk", "8", "--threads", "2",
                     "--no-progress"])
    assert code == 0
    ref, new = open_store(str(small_store)), open_store(str(out))
    a, b = ref.read_images(0, ref.n_images), new.read_images(0, new.n_images)
    np.testing.assert_array_equal(b.boxes, a.boxes)
    np.testing.assert_array_equal(b.flips, a.flips)
    assert new.spec.crop == ref.spec.crop and new.crops_per_image == ref.crops_per_image
    assert new.fingerprint == ref.fingerprint
    assert new.spec.teacher.timm_name == "resnet10t" and new.spec.teacher.input_size == (3, 64, 64)
    assert (b.index >= 0).all()
    assert (b.index[..., 0] != a.index[..., 0]).mean() > 0.9  # a random teacher agrees with lite0 by chance only
    assert not np.allclose(b.prob.astype(np.float32), a.prob.astype(np.float32), atol=0.01)


def test_reference_for_another_dataset(photo_root, small_store, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(photo_root, other)
    victim = sorted(other.rglob("*.JPEG"))[4]
    with open(victim, "ab") as f:
        f.write(b"\0\0")
    rel = victim.relative_to(other).as_posix()
    with pytest.raises(StoreMismatchError) as e:
        generate_labels(LabelGenConfig(data=str(other), out=str(tmp_path / "x.zarr"), reference=str(small_store),
                                       progress=False))
    assert "--reference" in str(e.value) and "fingerprint" in str(e.value) and rel in str(e.value)
    assert not (tmp_path / "x.zarr").exists()
    # and through the CLI
    code = cli_main(["labels", "generate", "--data", str(other), "--out", str(tmp_path / "y.zarr"),
                     "--reference", str(small_store)])
    err = capsys.readouterr().err
    assert code == 2 and "fingerprint" in err and rel in err


# -- bad inputs through the CLI --------------------------------------------------------------

@pytest.fixture
def tiny_data(photo_root, tmp_path) -> Path:
    """Two classes x 2 real photos."""
    root = tmp_path / "tiny"
    for cls in (wnid_of(ESPRESSO), wnid_of(TRIPOD)):
        (root / cls).mkdir(parents=True)
        for src in sorted((photo_root / cls).glob("*.JPEG"))[:2]:
            shutil.copy(src, root / cls / src.name)
    return root


def _run_cli(capsys, data, out, *extra) -> tuple[int, str]:
    code = cli_main(["labels", "generate", "--data", str(data), "--out", str(out), "-M", "2", "--input-size", "64",
                     "--batch-size", "8", "--threads", "1", "--no-progress", *extra])
    return code, capsys.readouterr().err


def _garbage_jpeg(root: Path) -> str:
    path = root / wnid_of(TRIPOD) / "aaa_garbage.JPEG"
    path.write_bytes(os.urandom(5000))
    return path.relative_to(root).as_posix()


def _truncated_jpeg(root: Path) -> str:
    src = sorted((root / wnid_of(TRIPOD)).glob("*.JPEG"))[0]
    path = src.with_name("aaa_truncated.JPEG")
    data = src.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.relative_to(root).as_posix()


@pytest.mark.parametrize("damage,words", [(_garbage_jpeg, ["cannot decode image"]),
                                          (_truncated_jpeg, ["cannot decode image", "truncated JPEG"])])
def test_cli_corrupt_image_named(tiny_data, tmp_path, capsys, damage, words):
    rel = damage(tiny_data)
    code, err = _run_cli(capsys, tiny_data, tmp_path / "s.zarr")
    assert code == 2, err
    assert rel in err and "Traceback" not in err
    for w in words:
        assert w in err


@pytest.mark.parametrize("damage", [_garbage_jpeg, _truncated_jpeg])
def test_cli_skip_corrupt_completes_and_records(tiny_data, tmp_path, capsys, damage):
    rel = damage(tiny_data)
    out = tmp_path / "s.zarr"
    code, err = _run_cli(capsys, tiny_data, out, "--skip-corrupt")
    assert code == 0, err
    store = open_store(str(out))
    store.check_complete()
    assert store.meta["dataset"]["skipped"] == [rel]
    assert store.n_images == 4 and rel not in store.load_index().paths


def test_cli_missing_data_folder(tmp_path, capsys):
    code, err = _run_cli(capsys, tmp_path / "no_such_folder", tmp_path / "s.zarr")
    assert code == 2 and "no_such_folder" in err and "does not exist" in err
    assert not (tmp_path / "s.zarr").exists()


def test_cli_empty_class_folder(tiny_data, tmp_path, capsys):
    (tiny_data / "n99999999").mkdir()
    code, err = _run_cli(capsys, tiny_data, tmp_path / "s.zarr")
    assert code == 2 and "n99999999" in err and "holds no images" in err


def test_cli_unknown_teacher(tiny_data, tmp_path, capsys):
    code, err = _run_cli(capsys, tiny_data, tmp_path / "s.zarr", "--teacher", "efficientnet_lite9")
    assert code == 2 and "efficientnet_lite9" in err and "efficientnet_lite0" in err
    assert not (tmp_path / "s.zarr").exists()


def test_cli_timm_teacher_without_checkpoint(tiny_data, tmp_path, capsys):
    code, err = _run_cli(capsys, tiny_data, tmp_path / "s.zarr", "--teacher", "resnet10t")
    assert code == 2 and "--checkpoint" in err and "never downloads" in err


def test_cli_checkpoint_not_fitting(tiny_data, tmp_path, capsys, resnet10t_ckpt):
    code, err = _run_cli(capsys, tiny_data, tmp_path / "s.zarr", "--teacher", "tf_efficientnet_lite0",
                         "--checkpoint", str(resnet10t_ckpt))
    assert code == 2 and str(resnet10t_ckpt) in err and "does not fit" in err


def test_cli_missing_checkpoint(tiny_data, tmp_path, capsys):
    code, err = _run_cli(capsys, tiny_data, tmp_path / "s.zarr", "--teacher", "resnet10t",
                         "--checkpoint", str(tmp_path / "nope.pth"))
    assert code == 2 and "nope.pth" in err and "does not exist" in err


def _small_store_args(photo_root, out, *extra) -> list[str]:
    """The conftest small_store's settings, so only what a test changes differs."""
    return ["labels", "generate", "--data", str(photo_root), "--out", str(out), "-M", "8", "-K", "5",
            "--batch-size", "64", "--crops-per-round", "8", "--images-per-chunk", "8", "--slots-per-chunk", "4",
            "--threads", "2", "--no-progress", *extra]


def test_cli_store_of_another_dataset(tiny_data, small_store, copy_store, capsys):
    out = copy_store(small_store)
    code = cli_main(_small_store_args(tiny_data, out))
    err = capsys.readouterr().err
    assert code == 2 and "another dataset" in err and "fingerprint" in err
    assert "class folders differ (7 in store vs 2 on disk)" in err


def test_cli_unknown_schema_version(photo_root, small_store, copy_store, capsys):
    out = copy_store(small_store)
    g = zarr.open_group(str(out), mode="r+")
    g.attrs[ATTR_KEY] = {**g.attrs[ATTR_KEY], "schema_version": 99}
    code = cli_main(_small_store_args(photo_root, out))
    err = capsys.readouterr().err
    assert code == 2 and "schema version 99" in err and "reads only versions 1 and 2" in err


@pytest.mark.parametrize("extra,field", [(["--seed", "1"], "crop.seed: store has 0, run asks 1"),
                                         (["--top-k", "3"], "label.k: store has 5, run asks 3"),
                                         (["--scale", "0.2,1.0"], "crop.scale"),
                                         (["--input-size", "64"], "teacher.input_size")])
def test_cli_resume_with_other_settings(photo_root, small_store, copy_store, capsys, extra, field):
    out = copy_store(small_store)
    before = _arrays(out)
    code = cli_main(_small_store_args(photo_root, out, *extra))
    err = capsys.readouterr().err
    assert code == 2 and field in err and "other settings" in err
    for key, arr in _arrays(out).items():  # nothing was touched
        np.testing.assert_array_equal(arr, before[key])


def test_cli_rerun_on_complete_store_is_a_no_op(photo_root, small_store, copy_store, capsys):
    out = copy_store(small_store)
    code = cli_main(_small_store_args(photo_root, out))
    text = capsys.readouterr().out
    assert code == 0 and '"chunks_written": 0' in text and '"chunks_skipped": 3' in text
    _assert_same_store(out, small_store)


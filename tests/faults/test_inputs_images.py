"""Hostile inputs, images: corrupt JPEG data, files ImageFolder would see, links, names.

Corrupt data is made from the real photos of `photo_root` the way the hostile trials
did: an 8 KB block of zeros, or 64 random bytes, written into the entropy-coded data
(after the start-of-scan marker, before the end marker), so the header and the end
marker stay valid. Known limit: a zeroed block was caught in 200 of 200 trials (21
photos x 10 offsets), 64 random bytes in 167 of 200; in the other 33 the Huffman code
re-synchronised and libjpeg-turbo decoded to the end without any warning, so no
decoder can tell (the seeds used here are ones that libjpeg-turbo reports).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from fkd_dali.cli import main
from fkd_dali.data.index import build_index, check_image_data, scan_folder
from fkd_dali.errors import CorruptImageError, DatasetIndexError
from fkd_dali.loaders.feed import read_encoded
from fkd_dali.store.tools import verify_store

CAT = "n02123045"  # tabby cat class of photo_root


def _damage(path: Path, kind: str, seed: int = 0) -> None:
    """Overwrite part of the entropy-coded data of a JPEG in place (same size, same markers)."""
    data = bytearray(path.read_bytes())
    scan = data.index(b"\xff\xda") + 2 + int.from_bytes(data[data.index(b"\xff\xda") + 2:][:2], "big")
    end = data.rindex(b"\xff\xd9")
    if kind == "zeros":
        start = scan + max(0, (end - scan - 8192) // 2)
        data[start:start + min(8192, end - scan)] = bytes(min(8192, end - scan))
    else:
        rng = np.random.default_rng(seed)
        start = scan + (end - scan) // 2
        data[start:start + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    path.write_bytes(bytes(data))


@pytest.fixture
def two_classes(photo_root, tmp_path) -> Path:
    """2 classes x 3 real photos, copied so they can be damaged."""
    root = tmp_path / "data"
    for cls in sorted(os.listdir(photo_root))[:2]:
        shutil.copytree(photo_root / cls, root / cls)
    return root


def _first_jpeg(root: Path, cls: str | None = None) -> Path:
    return sorted((root / cls).glob("*.JPEG") if cls else root.rglob("*.JPEG"))[0]


@pytest.mark.parametrize("kind", ["zeros", "random"])
def test_corrupt_entropy_data_is_named(photo_root, tmp_path, kind):
    path = tmp_path / "bad.JPEG"
    shutil.copy(_first_jpeg(photo_root, CAT), path)
    _damage(path, kind)
    with Image.open(path) as im:
        im.load()  # PIL (and DALI) decode it without complaint: that was the hole
    with pytest.raises(CorruptImageError, match=r"bad\.JPEG.*Corrupt JPEG data"):
        check_image_data(path.read_bytes(), str(path))
    with pytest.raises(CorruptImageError, match="Corrupt JPEG data"):
        read_encoded(str(path), check=True)


def test_good_images_pass_the_strict_check(photo_index):
    for i, rel in enumerate(photo_index.paths):  # JPEG, PNG, CMYK and grayscale
        assert check_image_data(read_encoded(photo_index.abspath(i)), rel) == tuple(photo_index.sizes[i])


@pytest.mark.parametrize("kind", ["zeros", "random"])
def test_label_generation_refuses_a_corrupt_image_before_making_a_store(two_classes, tmp_path, capsys, kind):
    bad = _first_jpeg(two_classes)
    _damage(bad, kind)
    out = tmp_path / "s.zarr"
    assert main(["labels", "generate", "--data", str(two_classes), "--out", str(out), "-M", "2", "-K", "3",
                 "--input-size", "64", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Corrupt JPEG data" in err and "--skip-corrupt" in err
    assert not out.exists()


def test_skip_corrupt_records_a_corrupt_image_and_lists_it(two_classes, tmp_path, capsys):
    bad = _first_jpeg(two_classes)
    _damage(bad, "zeros")
    out = tmp_path / "s.zarr"
    assert main(["labels", "generate", "--data", str(two_classes), "--out", str(out), "-M", "2", "-K", "3",
                 "--input-size", "64", "--skip-corrupt", "--threads", "1", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rel = bad.relative_to(two_classes).as_posix()
    assert summary["images"] == 5 and summary["left_out"] == 1
    assert summary["left_out_files"][0].startswith(f"{rel}: cannot be decoded: Corrupt JPEG data")
    report = verify_store(str(out), str(two_classes))
    assert report.ok, report.summary()  # the skipped file is recorded, so the folder still matches


def test_verify_data_names_corrupt_and_resized_images(small_store, photo_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(photo_root, data)
    index = build_index(data)
    corrupt = data / index.paths[4]
    size_before = corrupt.stat().st_size
    _damage(corrupt, "zeros")
    assert corrupt.stat().st_size == size_before  # same bytes count: the fingerprint cannot see it
    resized = data / index.paths[9]  # replaced by another picture of the same byte size
    with Image.open(resized) as im:
        w, h = im.size
    _same_size_jpeg(Image.new("RGB", (w + 8, h), (120, 60, 30)), resized)
    report = verify_store(str(small_store), str(data))
    assert report.problem("image_corrupt").count == 1
    assert index.paths[4] in report.problem("image_corrupt").examples[0][0]
    assert report.problem("image_size").count == 1
    assert f"{w + 8}x{h} on disk, {w}x{h} stored" in report.problem("image_size").examples[0][0]


def _same_size_jpeg(image: Image.Image, path: Path) -> None:
    """Write `image` as a JPEG padded with comment segments to exactly the byte size `path` has now."""
    import io

    target = path.stat().st_size
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    pad = target - len(data)
    assert pad >= 4, "the replacement must be smaller than the original"
    segments = b""
    while pad > 0:
        size = min(pad, 65537)
        if 0 < pad - size < 4:  # never leave a remainder too small for a segment
            size = pad - 4
        segments += b"\xff\xfe" + (size - 2).to_bytes(2, "big") + b"\0" * (size - 4)
        pad -= size
    path.write_bytes(data[:2] + segments + data[2:])
    assert path.stat().st_size == target


# -- the folder rules --------------------------------------------------------------------------
def test_sub_folders_follow_imagefolder(two_classes):
    cls = sorted(os.listdir(two_classes))[0]
    src = _first_jpeg(two_classes, cls)
    for rel in ("sub/x.JPEG", "sub-b/y.JPEG", "sub/deeper/z.JPEG", "a_first.JPEG"):
        (two_classes / cls / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, two_classes / cls / rel)
    index = build_index(two_classes)
    tv = ImageFolder(str(two_classes))
    assert [os.path.relpath(p, two_classes) for p, _ in tv.samples] == index.paths
    assert [c for _, c in tv.samples] == list(index.classes)
    assert scan_folder(two_classes)[1] == index.paths and index.left_out == []


def test_links_and_bad_names_are_left_out_and_listed(two_classes):
    cls = sorted(os.listdir(two_classes))[1]
    folder = two_classes / cls
    photo = _first_jpeg(two_classes, cls)
    os.symlink(folder / "missing.JPEG", folder / "dangling.JPEG")
    os.symlink(folder / "loop2.JPEG", folder / "loop1.JPEG")
    os.symlink(folder / "loop1.JPEG", folder / "loop2.JPEG")
    os.symlink(folder, folder / "again")  # a folder loop
    shutil.copy(photo, os.fsdecode(bytes(folder) + b"/caf\xe9.JPEG"))
    (folder / "scan.bmp").write_bytes(b"BM")
    (folder / "notes.txt").write_text("ignored like ImageFolder does")
    index = build_index(two_classes)
    why = dict(index.left_out)
    assert why[f"{cls}/dangling.JPEG"] == "dangling symbolic link"
    assert why[f"{cls}/loop1.JPEG"] == why[f"{cls}/loop2.JPEG"] == "symbolic link loop"
    assert "already listed" in why[f"{cls}/again"]
    assert why[f"{cls}/caf\\xe9.JPEG"] == "file name is not valid UTF-8 (rename it)"
    assert "not decoded by fkd-dali" in why[f"{cls}/scan.bmp"]
    assert len(index.left_out) == 6 and len(index) == 6  # the 6 real photos, each once
    assert scan_folder(two_classes)[1] == index.paths


def test_class_folder_with_a_bad_name_is_refused(two_classes):
    os.mkdir(bytes(two_classes) + b"/cl\xffass")
    with pytest.raises(DatasetIndexError, match=r"cl\\xffass.*not valid UTF-8"):
        build_index(two_classes)


def test_class_folder_of_only_broken_links_says_why(two_classes):
    (two_classes / "zz").mkdir()
    os.symlink(two_classes / "nowhere.JPEG", two_classes / "zz" / "a.JPEG")
    with pytest.raises(DatasetIndexError, match="holds no images.*zz/a.JPEG: dangling symbolic link"):
        build_index(two_classes)


def test_dali_errors_keep_their_reason():
    """DALI's message starts with "Critical error in pipeline:"; the reason must survive into the one line."""
    from nvidia.dali import fn, pipeline_def, types

    from fkd_dali.loaders.feed import dali_reason

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def decode_garbage():
        data = fn.external_source(source=lambda: [np.frombuffer(b"\xff\xd8garbage\xff\xd9", np.uint8)],
                                  batch=True, dtype=types.UINT8)
        return fn.decoders.image(data, device="cpu")

    pipe = decode_garbage()
    pipe.build()
    with pytest.raises(RuntimeError) as e:
        pipe.run()
    assert str(e.value).startswith("Critical error in pipeline:")
    reason = dali_reason(e.value)
    assert "decoders.image" in reason and not reason.startswith("Critical") and len(reason) > 40, reason
    assert "DALI gave no reason" in dali_reason(RuntimeError("Critical error in pipeline:\n"))

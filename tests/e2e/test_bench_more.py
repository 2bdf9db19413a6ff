"""The fkd-dali rows of the loader benchmark and the store, labelgen and train benchmarks, on CPU.

Correctness: the fkd-dali loader's targets are `recover_labels` of the store's labels
of exactly the (image, slot) pairs it emits, pass after pass; the FKD-reference loader,
reading files of FKD's published shape (M=500) built from the same store, finds the
store's boxes, flips and labels in their first crops and cuts (within resize rounding)
the same pixels from them. Tiny runs of `python -m bench
store|labelgen|train` (and `fkd-dali bench ...`) complete and write valid JSON and a
PNG. No timing is asserted anywhere.
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

from bench.labels import fkd_published_path, write_fkd_published
from bench.loaders import LOADERS, FkdDaliLoader, FkdReferenceDataset, LoaderSpec, create_loader, load_pil_rgb
from fkd_dali.crops.boxes import decode_boxes, sample_crops
from fkd_dali.crops.plan import pass_slots
from fkd_dali.store.opening import open_store
from fkd_dali.targets.recovery import recover_labels

REPO = Path(__file__).resolve().parents[2]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fkd_files(small_store, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fkd-published")
    info = write_fkd_published(str(small_store), root, 500)
    assert info.crops_per_image == 500 and info.top_k == 5 and info.source
    assert write_fkd_published(str(small_store), root, 500) == info  # reused while the store is the same
    return root


def spec(photo_index, small_store, fkd_files=None, m=4, batch=8, size=32) -> LoaderSpec:
    return LoaderSpec(index=photo_index, batch_size=batch, workers=1, m=m, image_size=size, store=str(small_store),
                      fkd_labels=str(fkd_files) if fkd_files else None, fkd_unpickle=True)


def test_registry_has_the_fkd_dali_rows() -> None:
    info = LOADERS.get("fkd-dali")
    assert info.group == "fkd-dali" and info.multi_crop and info.needs == ("store",) and info.targets == "soft"
    twin = LOADERS.get("fkd-dali-nolabels")
    assert twin.group == "ablation" and twin.multi_crop and twin.targets == "hard"


def test_fkd_dali_targets_are_the_recovered_store_labels(photo_index, small_store) -> None:
    """Two passes and more (21 images, 2 per step): targets = recover_labels(store[image, slot])."""
    store = open_store(str(small_store))
    stored = store.read_images(0, store.n_images)
    loader = FkdDaliLoader(spec(photo_index, small_store))
    steps = loader.loader.steps_per_pass
    stream = loader.batches_with_meta()
    seen: dict[int, set[int]] = {}
    for step in range(steps + 3):  # into pass 1
        images, targets, meta = next(stream)
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32 and targets.shape == (8, 1000)
        image, slot = meta[:, 0].numpy(), meta[:, 1].numpy()
        pass_idx = step // steps
        np.testing.assert_array_equal(slot.reshape(2, 4), np.tile(pass_slots(pass_idx, 4, 8), (2, 1)))
        assert (image.reshape(2, 4) == image.reshape(2, 4)[:, :1]).all()  # crops of one image adjacent
        expected = recover_labels(torch.from_numpy(stored.index[image, slot].astype(np.int64)),
                                  torch.from_numpy(stored.prob[image, slot].astype(np.float32)), 1000,
                                  "marginal_smoothing")
        torch.testing.assert_close(targets, expected)
        if pass_idx == 0:
            for i in image.tolist():
                seen.setdefault(i, set()).update(slot.tolist())
    stream.close()
    loader.close()
    assert len(seen) == 2 * steps and all(s == {0, 1, 2, 3} for s in seen.values())


def test_fkd_dali_without_labels_gives_folder_classes(photo_index, small_store) -> None:
    loader = create_loader("fkd-dali-nolabels", spec(photo_index, small_store))
    stream = loader.batches_with_meta()  # type: ignore[attr-defined]
    images, targets, meta = next(stream)
    assert images.shape == (8, 3, 32, 32)
    np.testing.assert_array_equal(targets.numpy(), photo_index.classes[meta[:, 0].numpy()])
    stream.close()
    loader.close()


def test_fkd_files_have_fkds_published_shape_and_start_with_the_stores_crops(photo_index, small_store, fkd_files):
    """As FKD's generator writes them (numpy arrays: float32 coords, bool flips, float32 (M, 2, K) labels);
    crops 0-7 are the store's; crops 8-499 are what label generation would have drawn for those slots."""
    store = open_store(str(small_store))
    stored = store.read_images(0, store.n_images)
    for i, rel in enumerate(photo_index.paths):
        path = fkd_published_path(fkd_files, rel)
        assert path.name == rel.split("/")[-1].split(".")[0] + ".tar"
        coords, flip, labels = torch.load(path, map_location="cpu", weights_only=False)  # our own test files
        assert isinstance(coords, np.ndarray) and coords.dtype == np.float32 and coords.shape == (500, 4)
        assert flip.dtype == np.bool_ and flip.shape == (500,)
        assert labels.dtype == np.float32 and labels.shape == (500, 2, 5)
        h, w = photo_index.sizes[i]
        pixels = np.rint(coords * [h, w, h, w]).astype(np.int64)
        np.testing.assert_array_equal(pixels[:8], decode_boxes(stored.boxes[i], photo_index.sizes[i][None]))
        np.testing.assert_array_equal(flip[:8], stored.flips[i])
        np.testing.assert_array_equal(labels[:8, 0], stored.index[i])
        np.testing.assert_array_equal(labels[:8, 1], stored.prob[i].astype(np.float32))
        more, more_flips = sample_crops(photo_index.sizes[i][None], np.array([i]), np.arange(8, 500), store.spec.crop)
        np.testing.assert_array_equal(pixels[8:], more[0])
        np.testing.assert_array_equal(flip[8:], more_flips[0])
        ids = labels[:, 0]
        assert (ids == np.round(ids)).all() and ids.min() >= 0 and ids.max() < 1000
        assert (np.diff(labels[:, 1], axis=1) <= 0).all() and (labels[:, 1].sum(1) <= 1 + 1e-3).all()


def test_fkd_reference_replays_the_same_crops_as_fkd_dali(photo_index, small_store, fkd_files):
    """The stored crops fkd-dali replays, cut by the FKD reference from its file: same labels, same pixels
    up to resize rounding."""
    store = open_store(str(small_store))
    stored = store.read_images(0, store.n_images)
    s = spec(photo_index, small_store, fkd_files, size=48)
    dataset = FkdReferenceDataset(s)
    crops, labels, slots = dataset[0]  # m random crops of the 500
    assert crops.shape == (4, 3, 48, 48) and labels.shape == (4, 2, 5) and len(set(slots.tolist())) == 4
    loader = FkdDaliLoader(s)
    stream = loader.batches_with_meta()
    for _ in range(3):
        images, _, meta = next(stream)
        for first in range(0, 8, 4):
            i, slots = int(meta[first, 0]), meta[first:first + 4, 1].numpy()
            crops, labels = dataset.cut(load_pil_rgb(dataset.paths[i]), dataset.load(i), slots)
            np.testing.assert_array_equal(labels[:, 0].numpy(), stored.index[i, slots])
            np.testing.assert_array_equal(labels[:, 1].numpy(), stored.prob[i, slots].astype(np.float32))
            diff = ((crops - images[first:first + 4]).abs() * STD * 255).flatten(1).mean(1)
            assert float(diff.max()) < 1.5, f"{photo_index.paths[i]}: mean |PIL - DALI| {diff.tolist()} px"
    stream.close()
    loader.close()


# -- tiny benchmark runs ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), path)
    return path


def run(args: list[str], cwd: Path, module: str = "bench") -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_common(doc: dict, name: str, png: Path) -> None:
    assert doc["benchmark"] == name and doc["created"]
    assert doc["machine"]["cpu_model"] and len(doc["machine"]["load_average"]) == 3
    assert len(doc["load_average"]["start"]) == 3 and len(doc["load_average"]["end"]) == 3
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 500


def test_cli_lists_the_four_benchmarks() -> None:
    done = subprocess.run([sys.executable, "-m", "fkd_dali", "bench", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0
    for name in ("loaders", "store", "labelgen", "train"):
        assert name in done.stdout


@pytest.mark.slow
def test_tiny_store_benchmark(tmp_path: Path, tiny_teacher: Path) -> None:
    """Through `fkd-dali bench store`: sizes of the three formats, pass-table timing of N=2000 x M=500."""
    out = tmp_path / "out"
    summary = run(["bench", "store", "--corpus-images", "4", "-M", "4", "--teacher", "resnet10t", "--checkpoint",
                   str(tiny_teacher), "--threads", "1", "--synthetic-images", "2000", "--repeats", "2",
                   "--out", str(out), "--no-progress"], tmp_path, module="fkd_dali")
    doc = json.loads((out / "store.json").read_text())
    check_common(doc, "store", out / "store.png")
    sizes = doc["sizes"]
    assert sizes["M"] == 4 and sizes["K"] == 5 and sizes["store"]["n_images"] == 4
    assert sizes["fkd_files"]["files"] == 4 and sizes["relabel_maps"]["files"] == 4
    for key in ("store", "fkd_files", "relabel_maps"):
        assert sizes[key]["bytes_per_image"] > 0 and summary["bytes_per_image"][key] > 0
    big = sizes["at_M500"]
    assert "extrapolated from M=4" in big["store_method"] and big["fkd_file_bytes_per_image"] > 500 * 50
    table = doc["pass_table"]
    assert table["n_images"] == 2000 and table["crops_per_image"] == 500 and table["m"] == 4
    for cache in ("cold", "warm"):
        assert len(table["timing"][cache]["read_pass_table_s"]) == 2
        assert table["extrapolated_read_pass_table_s"][cache] > 0
    assert not list((out / "assets").glob("synthetic-*"))  # deleted unless --keep-synthetic
    # sizes this small cannot judge the targets: said in the summary, the notes and the tables
    assert len(summary["warnings"]) == 2 and doc["warnings"] == summary["warnings"]
    assert big["store_target_judged"] is False and table["target_judged"] is False
    from bench.summary import store_markdown

    assert "missed" not in store_markdown(doc) and store_markdown(doc).count("not judged") == 2


@pytest.mark.slow
def test_tiny_labelgen_benchmark(tmp_path: Path, tiny_teacher: Path) -> None:
    out = tmp_path / "out"
    summary = run(["labelgen", "--corpus-images", "4", "-M", "4", "--teacher", "resnet10t", "--checkpoint",
                   str(tiny_teacher), "--batch-size", "8", "--crops-per-round", "4", "--threads", "1", "--rounds", "2",
                   "--infer-batches", "1", "--out", str(out), "--no-progress"], tmp_path)
    doc = json.loads((out / "labelgen.json").read_text())
    check_common(doc, "labelgen", out / "labelgen.png")
    r = doc["result"]
    assert r["labelgen_crops_per_s"] > 0 and r["teacher_only_crops_per_s"] > 0 and len(r["ratio_per_round"]) == 2
    assert r["target_ratio"] == 0.9 and isinstance(r["target_met"], bool) and summary["ratio"] > 0
    assert all(x["crops"] == 16 for x in doc["labelgen_rounds"])
    assert all(x["crops"] == 8 for x in doc["teacher_only_rounds"])


@pytest.mark.slow
def test_tiny_train_benchmark(tmp_path: Path, tiny_teacher: Path) -> None:
    out = tmp_path / "out"
    summary = run(["train", "--corpus-images", "8", "--batch-size", "8", "--image-size", "48", "--steps", "3",
                   "-M", "4", "--teacher", "resnet10t", "--checkpoint", str(tiny_teacher), "--threads", "1",
                   "--out", str(out), "--no-progress"], tmp_path)
    doc = json.loads((out / "train.json").read_text())
    check_common(doc, "train", out / "train.png")
    assert doc["config"]["arch"] == "resnet10t" and doc["config"]["device"] == "cpu"
    for kind in ("real", "synthetic", "online"):
        assert [x["steps"] for x in doc["rounds"][kind]] == [3, 3]
        assert all(x["crops_per_s"] > 0 and x["kind"] == kind for x in doc["rounds"][kind])
    assert doc["result"]["target_ratio"] == 0.97 and summary["ratio"] > 0
    r = doc["result"]
    speedups = [a["images_per_s"] / b["images_per_s"] for a, b in zip(doc["rounds"]["real"], doc["rounds"]["online"])]
    assert r["fkd_over_online_per_round"] == speedups and summary["fkd_over_online"] == round(r["fkd_over_online"], 2)
    cpu = [b["cpu_s_per_1000_crops"] / a["cpu_s_per_1000_crops"] for a, b in zip(doc["rounds"]["real"],
                                                                                 doc["rounds"]["online"])]
    assert r["fkd_over_online_cpu_per_round"] == cpu and all(x["cpu_s"] > 0 for x in doc["rounds"]["online"])
    from bench.summary import train_markdown

    assert "| CPU-s per 1000 images |" in train_markdown(doc)


@pytest.mark.slow
def test_tiny_stages_benchmark_and_summary(tmp_path: Path, tiny_teacher: Path) -> None:
    """`bench stages` splits each loader's CPU per crop into stages; `bench.summary` tabulates the JSON."""
    out = tmp_path / "out"
    run(["stages", "--corpus-images", "8", "--m", "2", "--batch-size", "4", "--images", "4", "--repeats", "1",
         "-M", "4", "--image-size", "32", "--teacher", "resnet10t", "--checkpoint", str(tiny_teacher),
         "--out", str(out), "--no-progress"], tmp_path)
    doc = json.loads((out / "stages.json").read_text())
    check_common(doc, "stages", out / "stages.png")
    assert set(doc["breakdown"]) == {"fkd-dali", "fkd-reference", "relabel"}
    for parts in doc["breakdown"].values():
        assert parts[0]["stage"] == "decode" and parts[0]["cpu_ms_per_crop"] > 0
        assert all(p["cpu_ms_per_crop"] >= 0 for p in parts)
    from bench.summary import summarize_dir

    text = summarize_dir(out)
    assert text.startswith("#### stages") and "| fkd-dali |" in text


def test_results_name_the_code_that_made_them() -> None:
    """Every benchmark JSON carries machine.code: the release, the commit and whether the tree was dirty."""
    import re

    from bench.harness import code_version, machine_description

    code = code_version()
    assert re.fullmatch(r"[0-9a-f]{40}", code["commit"]) and isinstance(code["dirty"], bool)
    assert machine_description()["code"] == code

"""`fkd-dali bench fidelity` at a tiny size with the real teacher: every label kind is measured
against the teacher on the replayed crops, and the rows relate as their definitions say."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_fidelity_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-m", "fkd_dali", "bench", "fidelity", "--corpus-images", "4",
                           "--crops", "12", "--threads", "1", "--out", str(out), "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    doc = json.loads((out / "fidelity.json").read_text())
    with Image.open(out / "fidelity.png") as im:
        assert im.format == "PNG"
    assert doc["benchmark"] == "fidelity" and doc["crops"] == summary["crops"] == 12  # 4 images x M=3
    rows = {r["label"]: r for r in doc["rows"]}
    assert [r["method"] for r in doc["rows"]].count("store") == 8  # hard, smoothing, marginal k=1..5, renorm
    assert {r.get("map_size") for r in doc["rows"] if r["method"] == "relabel"} == {15, 7}
    for r in doc["rows"]:
        assert r["all"]["crops"] == 12 == r["flipped"]["crops"] + r["unflipped"]["crops"]
        assert 0 <= r["all"]["top1_agreement"] <= 100 and 0 <= r["all"]["top5_overlap"] <= 100
        assert r["all"]["kl"] >= 0 and r["all"]["kl_reverse"] >= 0
    # hard, smoothing and marginal k=1 all peak at the stored top-1: one top-1 agreement (kinds that keep
    # more classes may differ where float16 storage ties the top-1 and top-2 probabilities)
    peak = [rows[f"FKD store top-5: {kind}"]["all"]["top1_agreement"]
            for kind in ("hard", "smoothing", "marginal_smoothing k=1")]
    assert len(set(peak)) == 1
    ms = [rows[f"FKD store top-5: marginal_smoothing k={k}"]["all"] for k in range(1, 6)]
    assert all(a["top5_overlap"] <= b["top5_overlap"] for a, b in zip(ms, ms[1:]))  # more kept classes
    assert all(a["kl"] > b["kl"] for a, b in zip(ms, ms[1:]))  # keeping more of the oracle gets closer
    assert rows["FKD store top-5: hard"]["all"]["top5_overlap"] == pytest.approx(20.0)  # top-1 only
    assert 0 < doc["stored_top_k_mass"] <= 1.001
    from bench.summary import summarize_dir

    text = summarize_dir(out)
    assert text.startswith("#### fidelity") and "| FKD store top-5: marginal_smoothing k=5 |" in text


@pytest.mark.slow
def test_tiny_scene_fidelity_benchmark(tmp_path: Path) -> None:
    """`--setting scenes` on a tiny scene folder whose teacher is cached: bench accuracy's `make_assets` makes the
    store and the label maps at the teacher's resolution, and the confident subset is the crops where the
    teacher's top-1 probability (stored in float16) is >= 0.5."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import timm
    import torch

    from bench.bench_accuracy import AccuracyConfig
    from bench.scene_teacher import TEACHER, RunResult, _save_result, _scene_identity, run_dir
    from bench.scenes import SceneConfig, build_scenes
    from fkd_dali.store.opening import open_store

    config = SceneConfig(classes=6, size=48, teacher=6, train=8, val=6, test=6, seed=3)
    root = AccuracyConfig(scenes=config, assets=str(tmp_path / "assets")).root
    scenes = build_scenes(root, config)
    # a cached stand-in for the trained teacher: an untrained resnet10t with the pixels fkd-dali's training
    # records (96 px), its classifier scaled up so that some crops are confident
    torch.manual_seed(0)
    model = timm.create_model(TEACHER.arch, num_classes=config.classes)
    with torch.no_grad():
        model.get_classifier().weight.mul_(40.0)
    run = run_dir(root, TEACHER)
    (run / "run").mkdir(parents=True)
    checkpoint = run / "run" / "last.pth"
    torch.save({"model": model.state_dict(), "data_config": {"size": 96, "interpolation": "bicubic",
                                                             "mean": [0.485, 0.456, 0.406],
                                                             "std": [0.229, 0.224, 0.225]}}, checkpoint)
    _save_result(run, RunResult(recipe=TEACHER, checkpoint=str(checkpoint), scenes=_scene_identity(scenes, TEACHER),
                                train_wall_s=0.0, train_cpu_s=0.0, test_top1=25.0, val_top1=None,
                                test_images=config.test))

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-m", "fkd_dali", "bench", "fidelity", "--setting", "scenes",
                           "--scenes-root", str(root), "--crops", "16", "--threads", "1", "--device", "cpu",
                           "--out", str(out), "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["json"] == str(out / "fidelity-scenes.json") and not (out / "fidelity.json").exists()
    doc = json.loads((out / "fidelity-scenes.json").read_text())
    assert (out / "fidelity-scenes.png").stat().st_size > 10_000
    assert doc["setting"] == "scenes" and doc["crops"] == 16 and doc["crops_per_image"] == 2  # 8 images x 2 slots
    assert doc["teacher"]["input_size"] == 96 and doc["dataset"]["n_classes"] == 6
    assert {r.get("map_size") for r in doc["rows"] if r["method"] == "relabel"} == {3}  # 96 px / 32: native only
    assert [r["method"] for r in doc["rows"]].count("store") == 8 and doc["rows"][-1]["method"] == "global"

    # the confident subset, recomputed from the store: the stored top-1 is the teacher's, rounded to float16
    store = open_store(doc["store"]["path"])
    assert store.crops_per_image == AccuracyConfig().crops_per_image
    top1 = store.read("labels/prob")[:, :2, 0].astype(np.float64).reshape(-1)
    conf = doc["confident_crops"]
    assert int((top1 >= 0.5 + 1e-3).sum()) <= conf["crops"] <= int((top1 >= 0.5 - 1e-3).sum())
    assert 0 < conf["crops"] < 16 and conf["share"] == pytest.approx(conf["crops"] / 16)
    for r in doc["rows"]:
        assert r["confident"]["crops"] == conf["crops"] and r["all"]["crops"] == 16
        if r["method"] == "store":  # a top-1 of >= 0.5 cannot tie with the top-2 in float16
            assert r["confident"]["top1_agreement"] == 100.0
    from bench.summary import summarize_dir

    assert "#### fidelity-scenes" in summarize_dir(out) and "16 crops" in summarize_dir(out)

"""`fkd-dali demo` end to end at a tiny size: every stage runs and the report is coherent."""
from __future__ import annotations

import json

import pytest

from fkd_dali.cli import main


@pytest.mark.slow
def test_tiny_demo_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "-o", str(out), "--images-per-class", "2", "-M", "8", "--passes", "2", "--image-size", "64",
               "--batch-size", "16", "--threads", "2", "--no-progress"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    data = report["dataset"]
    assert (data["train_images"], data["val_images"], data["classes"], data["source_photos"]) == (14, 21, 7, 7)
    assert "same 7 source photos" in data["held_out"] and "not that it generalises" in data["held_out"]
    assert report["labelgen"]["crops"] == 14 * 8
    assert report["training"]["passes"] == 2
    agreement = report["agreement_with_teacher"]
    # training on the teacher's labels must move the student towards the teacher (measured 0.0 -> 0.13)
    assert 0.0 <= agreement["before"] < agreement["after"] - 0.05 and agreement["after"] <= 1.0
    # the real teacher recognises most held-out photos of these 7 classes
    assert report["imagenet_top1_val"]["teacher"] >= 50.0
    printed = capsys.readouterr().out
    assert "fkd-dali demo report" in printed and "not that it generalises to new photos" in printed
    assert (out / "run" / "last.pth").is_file() and (out / "labels.zarr" / "zarr.json").is_file()
    # the figures beside report.json, named in it and in the printed report
    from PIL import Image

    for name in ("crops", "training"):
        path = out / f"{name}.png"
        assert report["figures"][name] == str(path) and str(path) in printed
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] >= 500
    # the estimate comes first, before any work; the report keeps it beside the measured time
    assert printed.lstrip().startswith("[0/4] expect about ")
    assert report["estimated_seconds"] > 0 and report["cpu_seconds"] > 0

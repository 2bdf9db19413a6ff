"""`train --val DIR --val-labels FILE` and `eval --data DIR --val-labels FILE` on ImageNet's flat layout give
the same top-1/top-5 as the same images in class folders."""
from __future__ import annotations

import json

import pytest

from fkd_dali.cli import main
from tests.unit.test_imagenet_val import make_flat_val


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_flat_validation_folder_scores_as_class_folders(photo_root, small_store, tmp_path, capsys):
    box = tmp_path / "ilsvrc"
    make_flat_val(photo_root, box)
    devkit_truth = box / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    out = tmp_path / "run"
    assert main(["train", "--data", str(photo_root), "--labels", str(small_store), "--arch", "resnet10t",
                 "--epochs", "4", "-b", "8", "--image-size", "48", "--opt", "adamw", "--lr", "0.002",
                 "--warmup-epochs", "0", "-j", "2", "--device", "cpu", "--amp", "off", "--no-progress",
                 "--val", str(box / "val"), "--val-labels", str(devkit_truth), "--output", str(out)]) == 0
    trained = _json_lines(capsys.readouterr().out)[-1]["val"]
    ckpt = str(out / "last.pth")
    scores = []
    for extra in ([str(photo_root)], [str(box / "val"), "--val-labels", str(box / "LOC_val_solution.csv")],
                  [str(box / "val"), "--val-labels", str(box / "ILSVRC2012_devkit_t12")]):
        assert main(["eval", "--checkpoint", ckpt, "-b", "8", "-j", "2", "--device", "cpu", "--data", *extra]) == 0
        scores.append(_json_lines(capsys.readouterr().out)[-1])
    for s in scores:
        assert (s["top1"], s["top5"], s["images"]) == (trained["top1"], trained["top5"], 21)
    assert main(["eval", "--checkpoint", ckpt, "--data", str(box / "val")]) == 2
    assert "holds images but no class folders" in capsys.readouterr().err

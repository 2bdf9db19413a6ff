"""ReLabel as a training mode: `labels relabel-maps` writes the maps, `train --labels relabel` pools them per crop."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fkd_dali.cli import main as cli_main
from fkd_dali.crops.boxes import CropDistribution, boxes_to_fractions, encode_boxes, sample_crops
from fkd_dali.errors import ConfigError
from fkd_dali.interop.relabel_maps import (
    MAPS_MANIFEST,
    dense_label_map,
    label_map_path,
    load_label_maps,
    read_label_map,
    relabel_targets,
)

from ..conftest import random_teacher, tiny_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NUM_CLASSES = 7  # a teacher of the photo folders' 7 classes, in sorted-folder order


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    return random_teacher(tmp_path_factory.mktemp("teacher") / "resnet10t.pth", num_classes=NUM_CLASSES)


@pytest.fixture(scope="module")
def maps_dir(photo_root, teacher_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("maps") / "maps"
    code = cli_main(["labels", "relabel-maps", "--data", str(photo_root), "--out", str(out), "--teacher", "resnet10t",
                     "--checkpoint", str(teacher_file), "--num-classes", str(NUM_CLASSES), "--top-k", "3",
                     "--batch-size", "4", "--device", "cpu", "--no-progress"])
    assert code == 0
    return out


def test_maps_are_the_teachers_classifier_at_each_position_of_the_whole_image(maps_dir, photo_index,
                                                                               teacher_file):
    import timm
    import torchvision.transforms.functional as TF
    from PIL import Image

    info = json.loads((maps_dir / MAPS_MANIFEST).read_text())
    assert (info["num_classes"], info["top_k"], info["n_images"]) == (NUM_CLASSES, 3, len(photo_index))
    assert info["input_size"] == 176 and info["map_size"] == 6  # resnet10t's own input: ceil(176 / 32) positions
    assert info["dataset_fingerprint"] == photo_index.fingerprint
    model = timm.create_model("resnet10t", num_classes=NUM_CLASSES)
    model.load_state_dict(torch.load(teacher_file))
    model.eval()
    cfg = model.pretrained_cfg
    for i in (0, 13):
        with Image.open(photo_index.abspath(i)) as im:
            rgb = im.convert("RGB")
        x = TF.normalize(TF.to_tensor(TF.resize(rgb, [176, 176], TF.InterpolationMode(cfg["interpolation"]),
                                                antialias=True)), cfg["mean"], cfg["std"])
        scores, ids = dense_label_map(model, x[None], k=3, size=None)
        stored = read_label_map(label_map_path(maps_dir, photo_index.paths[i]))
        assert stored.shape == (2, 3, 6, 6)
        torch.testing.assert_close(stored[0], scores[0], rtol=1e-4, atol=1e-4)
        assert torch.equal(stored[1].long(), ids[0])


def test_a_relabel_run_trains_on_each_fresh_crops_pooled_map(photo_root, photo_index, maps_dir, tmp_path,
                                                              monkeypatch):
    from fkd_dali.train import relabel
    from fkd_dali.train.loop import fit

    seen: list = []
    real = relabel.RelabelTargets.__call__

    def recording(self, batch):
        target = real(self, batch)
        seen.append((batch.meta.clone(), batch.field("box").clone(), target.clone()))
        return target

    monkeypatch.setattr(relabel.RelabelTargets, "__call__", recording)
    cfg = tiny_train_config(photo_root, "relabel", tmp_path / "run", label_maps=str(maps_dir), max_steps=3)
    result = fit(cfg)
    assert result.steps == 3 and len(seen) == 3
    maps = load_label_maps(str(maps_dir), photo_index.paths, photo_index.fingerprint)
    for meta, box, target in seen:
        # the box each crop was cut from: the counter-based sampler of (seed, image, slot), as a store holds it
        fractions = []
        for image, slot in meta.tolist():
            size = photo_index.sizes[image:image + 1]
            drawn, _ = sample_crops(size, np.array([image]), np.array([slot]), CropDistribution(seed=cfg.seed))
            fractions.append(boxes_to_fractions(encode_boxes(drawn, size), size)[0, 0])
        torch.testing.assert_close(box, torch.from_numpy(np.stack(fractions)).float(), rtol=0, atol=2e-5)
        want = relabel_targets(maps.of_images(meta[:, 0], torch.device("cpu")), box, NUM_CLASSES)
        torch.testing.assert_close(target, want)
        assert target.shape == (8, NUM_CLASSES)


def test_relabel_needs_its_maps_and_maps_of_this_folder(photo_root, maps_dir, tmp_path, capsys):
    base = ["train", "--data", str(photo_root), "--output", str(tmp_path / "o"), "--arch", "resnet10t",
            "--epochs", "1", "-b", "8", "--image-size", "32", "--threads", "1", "--no-progress"]
    assert cli_main([*base, "--labels", "relabel"]) == 2
    assert "--label-maps DIR" in capsys.readouterr().err
    assert cli_main([*base, "--labels", "none", "--label-maps", str(maps_dir)]) == 2
    assert "--label-maps only applies to --labels relabel" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(photo_root, other)
    victim = sorted(p for p in other.rglob("*") if p.is_file())[0]
    victim.unlink()
    with pytest.raises(ConfigError, match="made for another dataset"):
        load_label_maps(str(maps_dir), ["x"] * 20, "0" * 64)
    assert cli_main([base[0], "--data", str(other), *base[3:], "--labels", "relabel", "--label-maps",
                     str(maps_dir)]) == 2
    assert "made for another dataset" in capsys.readouterr().err
    (maps_dir.parent / "partial").mkdir()
    assert cli_main([*base, "--labels", "relabel", "--label-maps", str(maps_dir.parent / "partial")]) == 2
    assert "relabel-maps" in capsys.readouterr().err

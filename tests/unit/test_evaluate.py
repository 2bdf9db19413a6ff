"""Evaluation: class maps between folders and model outputs, top-1/top-5 counting, the model's pixel contract."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from fkd_dali.errors import ConfigError
from fkd_dali.train.evaluate import evaluate, model_data_config, resolve_class_map


class FixedLogits(torch.nn.Module):
    """Returns the logits stored for each image (images carry their row number in pixel [0, 0, 0])."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[images[:, 0, 0, 0].long()]


def test_top1_top5_are_counted_against_the_mapped_classes():
    # 3 images, 6 outputs; folder classes 0, 1, 2 map to outputs 5, 0, 3
    logits = torch.tensor([[0, 1, 2, 3, 4, 9.0],   # image 0: top-1 = 5 (its class): top-1 and top-5 hit
                           [9, 0, 0, 0, 0, 0.0],   # image 1: top-1 = 0 (its class): hit
                           [6, 5, 4, 0, 3, 2.0]])  # image 2: class 3 is 6th: miss both
    images = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 3, 2, 2).contiguous()
    loader = [(images[:2], torch.tensor([0, 1]), torch.tensor([0, 1])), (images[2:], torch.tensor([2]), None)]
    result = evaluate(FixedLogits(logits), loader, np.array([5, 0, 3]), "cpu")
    assert result.images == 3
    assert result.top1 == pytest.approx(200 / 3) and result.top5 == pytest.approx(200 / 3)
    logits[2] = torch.tensor([6, 5, 4, 3.5, 3, 2.0])  # class 3 now 4th: a top-5 hit only
    result = evaluate(FixedLogits(logits), loader, np.array([5, 0, 3]), "cpu")
    assert result.top1 == pytest.approx(200 / 3) and result.top5 == pytest.approx(100.0)


def test_class_maps():
    assert resolve_class_map(["b", "a"], 2, model_classes=["a", "b"]).tolist() == [1, 0]
    assert resolve_class_map(["n01440764", "n01443537"], 1000).tolist() == [0, 1]  # ImageNet WordNet ids
    assert resolve_class_map(["x", "y", "z"], 3).tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match="not among the 2 classes"):
        resolve_class_map(["c"], 2, model_classes=["a", "b"])
    with pytest.raises(ConfigError, match="cannot map the 2 validation class folders to the model's 1000"):
        resolve_class_map(["x", "y"], 1000)


def test_model_data_config_takes_overrides_over_timm_defaults():
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    dc = model_data_config(model)
    assert dc["size"] == 176 and dc["interpolation"] == "bicubic" and dc["crop_pct"] == pytest.approx(0.875)
    dc = model_data_config(model, size=96, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2),
                           crop_pct=0.8)
    assert dc == {"size": 96, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.2] * 3, "crop_pct": 0.8}

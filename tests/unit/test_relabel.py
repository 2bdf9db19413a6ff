"""Tests of fkd_dali.interop.relabel_maps: dense label maps from a timm CNN, map files, and RoI-align targets."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from fkd_dali.errors import ConfigError, LabelStoreError, TeacherError
from fkd_dali.interop.relabel_maps import (
    dense_label_map,
    label_map_path,
    read_label_map,
    relabel_targets,
    write_label_map,
)

C, K, S = 12, 4, 15


def _maps(b: int, seed: int = 0, s: int = S) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, K, s, s, generator=gen) * 3
    ids = torch.stack([torch.randperm(C, generator=gen)[:K] for _ in range(b * s * s)])
    ids = ids.view(b, s, s, K).permute(0, 3, 1, 2)
    return torch.stack([scores, ids.float()], dim=1)  # (B, 2, K, S, S)


def _dense(maps: torch.Tensor) -> torch.Tensor:
    b, _, _, sh, sw = maps.shape
    return torch.zeros(b, C, sh, sw).scatter_(1, maps[:, 1].long(), maps[:, 0])


def test_whole_image_box_is_softmax_of_mean_map() -> None:
    maps = _maps(3)
    got = relabel_targets(maps, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3), C)
    expected = _dense(maps).mean(dim=(2, 3)).softmax(dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("row, col", [(0, 0), (7, 3), (14, 14)])
def test_one_cell_box_is_softmax_of_that_cell(row: int, col: int) -> None:
    maps = _maps(2, seed=1)
    box = torch.tensor([[row / S, col / S, 1 / S, 1 / S]] * 2)
    got = relabel_targets(maps, box, C)
    torch.testing.assert_close(got, _dense(maps)[:, :, row, col].softmax(dim=1), rtol=1e-5, atol=1e-6)


def test_batch_matches_per_crop_loop() -> None:
    maps = _maps(5, seed=2)
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.3], [0.0, 0.0, 0.08, 0.9], [0.3, 0.3, 0.7, 0.7],
                          [0.5, 0.0, 0.5, 1.0], [0.21, 0.37, 0.33, 0.44]])
    got = relabel_targets(maps, boxes, C)
    dense = _dense(maps)
    for i, (y, x, h, w) in enumerate(boxes.tolist()):
        roi = torch.tensor([[0.0, x * S, y * S, (x + w) * S, (y + h) * S]])
        pooled = roi_align(dense[i:i + 1], roi, output_size=1, sampling_ratio=-1, aligned=True)
        torch.testing.assert_close(got[i], pooled.flatten().softmax(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(5))


def test_bad_inputs() -> None:
    maps = _maps(2)
    with pytest.raises(ConfigError):
        relabel_targets(maps, torch.zeros(3, 4), C)
    with pytest.raises(ConfigError):
        relabel_targets(maps[:, 0], torch.zeros(2, 4), C)
    with pytest.raises(LabelStoreError, match="outside"):
        relabel_targets(maps, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2), C - 1)


@pytest.mark.parametrize("name", ["resnet10t", "test_efficientnet"])  # ResNet fc, EfficientNet classifier
def test_dense_map_is_classifier_as_1x1_conv(name: str) -> None:
    """For pooling + linear heads, the per-position head equals the classifier used as a 1x1 conv."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=C).eval()
    images = torch.randn(2, 3, 128, 128)
    scores, ids = dense_label_map(model, images, k=K, size=4)  # stride 32: a 4x4 map, no pooling
    with torch.inference_mode():
        fc = model.get_classifier()
        logits = F.conv2d(model.forward_features(images), fc.weight[:, :, None, None], fc.bias)
    ref_scores, ref_ids = logits.topk(K, dim=1)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-4)
    assert torch.equal(ids, ref_ids)


def test_dense_map_pools_to_requested_size() -> None:
    model = timm.create_model("test_convnext2", pretrained=False, num_classes=C).eval()
    scores, ids = dense_label_map(model, torch.randn(1, 3, 64, 64), k=K)  # 2x2 features -> 15x15
    assert scores.shape == ids.shape == (1, K, S, S)
    assert ids.dtype == torch.int64
    assert bool((scores[:, :-1] >= scores[:, 1:]).all()), "top-K must be sorted, most probable first"
    with pytest.raises(ConfigError):
        dense_label_map(model, torch.randn(1, 3, 64, 64), k=C + 1, size=2)


def test_dense_map_refuses_token_models() -> None:
    model = timm.create_model("test_vit", pretrained=False, num_classes=C).eval()
    with pytest.raises(TeacherError, match="CNN"):
        dense_label_map(model, torch.randn(1, 3, *model.pretrained_cfg["input_size"][1:]), k=K)


def test_map_file_round_trip(tmp_path: Path) -> None:
    maps = _maps(1)[0]
    path = label_map_path(tmp_path, "cls/img.JPEG")
    assert path == tmp_path / "cls" / "img.pt"
    write_label_map(path, maps[0], maps[1].long())
    got = read_label_map(path)
    assert got.shape == (2, K, S, S) and got.dtype == torch.float32
    assert torch.equal(got, maps)


@pytest.mark.parametrize("content", [torch.zeros(3, K, S, S), torch.zeros(K, S, S), {"a": 1}])
def test_malformed_map_file(tmp_path: Path, content: object) -> None:
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(LabelStoreError, match="bad.pt"):
        read_label_map(path)
    with pytest.raises(LabelStoreError, match="does not exist"):
        read_label_map(tmp_path / "missing.pt")

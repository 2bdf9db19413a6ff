"""Tests of fkd_dali.interop.fkd_files: FKD's per-image label files, both ways, and their defects."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fkd_dali.errors import ConfigError, LabelStoreError
from fkd_dali.interop.fkd_files import fkd_file_path, read_fkd_file, write_fkd_file

M, K = 6, 5


def _labels(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yx = rng.uniform(0, 0.5, (M, 2))
    hw = rng.uniform(0.1, 0.5, (M, 2))
    coords = np.concatenate([yx, hw], axis=1).astype(np.float32)
    flip = rng.random(M) < 0.5
    index = np.stack([rng.choice(1000, K, replace=False) for _ in range(M)])
    prob = np.sort(rng.dirichlet(np.ones(K + 3), M)[:, :K], axis=1)[:, ::-1].astype(np.float32)
    return coords, flip, index, prob


def test_round_trip_is_exact(tmp_path: Path) -> None:
    coords, flip, index, prob = _labels()
    path = tmp_path / "n01" / "img.tar"
    write_fkd_file(path, coords, flip, index, prob)
    got = read_fkd_file(path)
    np.testing.assert_array_equal(got.coords, coords)
    np.testing.assert_array_equal(got.flip, flip)
    np.testing.assert_array_equal(got.index, index)
    np.testing.assert_array_equal(got.prob, prob)
    assert got.index.dtype == np.int64 and got.flip.dtype == np.bool_


def test_file_has_fkd_layout(tmp_path: Path) -> None:
    """What FKD's loader does with the file: `coords, flip, output = torch.load(path)`."""
    coords, flip, index, prob = _labels()
    path = tmp_path / "a.tar"
    write_fkd_file(path, torch.from_numpy(coords), torch.from_numpy(flip), torch.from_numpy(index),
                   torch.from_numpy(prob))
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, list) and len(raw) == 3
    c, f, labels = raw
    assert c.shape == (M, 4) and c.dtype == torch.float32
    assert f.shape == (M,) and f.dtype == torch.bool
    assert labels.shape == (M, 2, K) and labels.dtype == torch.float32
    assert torch.equal(labels[:, 0].long(), torch.from_numpy(index))
    assert torch.equal(labels[:, 1], torch.from_numpy(prob))


def test_reads_fkd_variants(tmp_path: Path) -> None:
    """Lists of per-crop tensors, 0/1 flips and (M, 2) labels (K = 1) as FKD's code may write."""
    path = tmp_path / "v.tar"
    coords = [torch.tensor([0.0, 0.1, 0.5, 0.5]), torch.tensor([0.2, 0.2, 0.8, 0.7])]
    torch.save([coords, torch.tensor([1, 0]), torch.tensor([[3.0, 0.9], [7.0, 0.6]])], path)
    got = read_fkd_file(path)
    assert got.coords.shape == (2, 4) and got.flip.tolist() == [True, False]
    assert got.index.tolist() == [[3], [7]]
    np.testing.assert_allclose(got.prob, [[0.9], [0.6]])


@pytest.mark.parametrize("rel, expected", [
    ("n01440764/n01440764_10026.JPEG", "n01440764/n01440764_10026.tar"),
    ("cls/a.b.jpg", "cls/a.b.tar"),
    ("deep/er/x.png", "deep/er/x.tar"),
])
def test_path_convention(tmp_path: Path, rel: str, expected: str) -> None:
    assert fkd_file_path(tmp_path, rel) == tmp_path / expected


@pytest.mark.parametrize("rel", ["/abs/x.JPEG", "../x.JPEG", "cls/../../x.JPEG"])
def test_path_outside_root_is_refused(tmp_path: Path, rel: str) -> None:
    with pytest.raises(ConfigError):
        fkd_file_path(tmp_path, rel)


def _good() -> list[torch.Tensor]:
    coords, flip, index, prob = _labels()
    labels = torch.stack([torch.from_numpy(index).float(), torch.from_numpy(prob)], 1)
    return [torch.from_numpy(coords), torch.from_numpy(flip), labels]


def _with(i: int, value: object) -> object:
    obj = _good()
    obj[i] = value  # type: ignore[call-overload]
    return obj


MALFORMED = [
    ("dict", {"coords": 1}, "expected [coords, flip, labels]"),
    ("two entries", _good()[:2], "expected [coords, flip, labels]"),
    ("coords shape", _with(0, torch.zeros(M, 3)), "coords have shape"),
    ("flip length", _with(1, torch.zeros(M - 1, dtype=torch.bool)), "flip has shape"),
    ("labels shape", _with(2, torch.zeros(M, 3, K)), "labels have shape"),
    ("box outside", _with(0, torch.tensor([[0.5, 0.5, 0.8, 0.2]] * M)), "outside the image"),
    ("zero height", _with(0, torch.tensor([[0.1, 0.1, 0.0, 0.2]] * M)), "outside the image"),
    ("negative id", _with(2, torch.stack([-torch.ones(M, K), torch.full((M, K), 0.1)], 1)), "negative"),
    ("fractional id", _with(2, torch.stack([torch.full((M, K), 1.5), torch.full((M, K), 0.1)], 1)),
     "whole numbers"),
    ("probability > 1", _with(2, torch.stack([torch.ones(M, K), torch.full((M, K), 3.0)], 1)), "probabilities"),
    ("nan box", _with(0, torch.full((M, 4), float("nan"))), "NaN"),
]


@pytest.mark.parametrize("name, content, message", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_content_names_the_file(tmp_path: Path, name: str, content: object, message: str) -> None:
    path = tmp_path / "bad.tar"
    torch.save(content, path)
    with pytest.raises(LabelStoreError, match=re.escape(message)) as err:
        read_fkd_file(path)
    assert str(path) in str(err.value)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(LabelStoreError, match="not a readable torch archive"):
        read_fkd_file(garbage)
    with pytest.raises(LabelStoreError, match="does not exist"):
        read_fkd_file(tmp_path / "missing.tar")


def test_invalid_write_leaves_no_file(tmp_path: Path) -> None:
    coords, flip, index, prob = _labels()
    path = tmp_path / "c" / "x.tar"
    with pytest.raises(LabelStoreError, match="must both be"):
        write_fkd_file(path, coords, flip, index[:, :3], prob)
    assert not path.exists() and not list(tmp_path.rglob("*.partial"))

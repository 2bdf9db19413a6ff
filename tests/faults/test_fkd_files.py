"""FKD's own label files: `torch.save` of a Python list of numpy arrays, as FKD's generator writes them.

Per image: coords (M, 4) float32 (i/H, j/W, h/H, w/W), flip_status (M,) bool, and the
quantized output (M, 2, K): top-K class ids as floats and their probabilities, float32
(float16 when FKD's teacher ran in fp16). These files need numpy's array reconstruction to
load; anything else pickled in a label file must be refused without being built.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fkd_dali.cli import main
from fkd_dali.crops.boxes import boxes_to_fractions
from fkd_dali.errors import LabelStoreError
from fkd_dali.interop.fkd_files import fkd_file_path, read_fkd_file
from fkd_dali.store.opening import open_store

from .conftest import assert_user_error

M, K = 6, 3


def fkd_arrays(seed: int, dtype) -> list[np.ndarray]:
    """One image's [coords, flip_status, output_quantized] as numpy arrays, like FKD's generator."""
    rng = np.random.default_rng(seed)
    hw = rng.uniform(0.1, 0.6, (M, 2))
    yx = rng.uniform(0, 1 - hw)
    coords = np.concatenate([yx, hw], axis=1).astype(np.float32)
    flip = rng.random(M) < 0.5
    ids = np.stack([rng.choice(1000, K, replace=False) for _ in range(M)]).astype(np.float32)
    probs = -np.sort(-rng.dirichlet(np.ones(K + 2), M)[:, :K], axis=1).astype(np.float32)
    return [coords, flip, np.stack([ids, probs], axis=1).astype(dtype)]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_reads_numpy_array_files_as_fkd_writes_them(tmp_path, dtype):
    arrays = fkd_arrays(0, dtype)
    path = tmp_path / "img.tar"
    torch.save(arrays, path)
    got = read_fkd_file(path)
    np.testing.assert_array_equal(got.coords, arrays[0])
    np.testing.assert_array_equal(got.flip, arrays[1])
    np.testing.assert_array_equal(got.index, arrays[2][:, 0, :].astype(np.int64))
    np.testing.assert_array_equal(got.prob, arrays[2][:, 1, :].astype(np.float32))


def _as_numpy1_pickle(src: Path, dst: Path) -> None:
    """The same archive as numpy 1.x pickles it (FKD's published files): `numpy.core.multiarray`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(info, data)


def test_reads_files_pickled_by_numpy_1(tmp_path):
    arrays = fkd_arrays(1, np.float16)
    torch.save(arrays, tmp_path / "new.tar")
    _as_numpy1_pickle(tmp_path / "new.tar", tmp_path / "old.tar")
    assert "numpy.core.multiarray._reconstruct" in torch.serialization.get_unsafe_globals_in_checkpoint(
        str(tmp_path / "old.tar"))
    np.testing.assert_array_equal(read_fkd_file(tmp_path / "old.tar").coords, arrays[0])


class _MakesADirectory:
    """Unpickling this would create a directory: the test checks that it never is."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("payload, named", [
    (lambda t: [_MakesADirectory(str(t / "pwned"))] + fkd_arrays(0, np.float32)[1:], "posix.mkdir"),
    (lambda t: [np.array([1, "a", None], dtype=object)] + fkd_arrays(0, np.float32)[1:], "ObjectDType"),
    (lambda t: [fkd_arrays(0, np.float32)[0].astype(np.int32)] + fkd_arrays(0, np.float32)[1:], "Int32DType"),
    (lambda t: {"coords": fkd_arrays(0, np.float32)[0], "hook": io.BytesIO(b"x")}, "BytesIO"),
])
def test_other_pickled_objects_are_refused_without_being_built(tmp_path, payload, named):
    path = tmp_path / "evil.tar"
    torch.save(payload(tmp_path), path)
    allowed_before = set(torch.serialization.get_safe_globals())
    with pytest.raises(LabelStoreError) as e:
        read_fkd_file(path)
    message = str(e.value)
    assert str(path) in message and named in message and "refused without unpickling" in message
    assert "\n" not in message
    assert not (tmp_path / "pwned").exists()
    assert set(torch.serialization.get_safe_globals()) == allowed_before  # the allowance ended with the load (order aside)


def _write_fkd_folder(store_url: str, root: Path, dtype) -> None:
    """FKD-style numpy files holding the labels of `store_url` (so the import can be compared exactly)."""
    store = open_store(store_url)
    index = store.load_index()
    labels = store.read_images(0, store.n_images)
    coords = boxes_to_fractions(labels.boxes, index.sizes)
    for i, rel in enumerate(index.paths):
        out = np.stack([labels.index[i].astype(np.float32), labels.prob[i].astype(np.float32)], axis=1)
        path = fkd_file_path(root, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save([coords[i], labels.flips[i].astype(bool), out.astype(dtype)], path)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_import_fkd_reads_a_folder_of_numpy_files(clean_store, photo_root, tmp_path, capsys, dtype):
    _write_fkd_folder(str(clean_store), tmp_path / "fkd", dtype)
    out = tmp_path / "imported.zarr"
    assert main(["labels", "import-fkd", str(tmp_path / "fkd"), "--data", str(photo_root), "--out", str(out)]) == 0
    got = open_store(str(out)).read_images(0, 21)
    want = open_store(str(clean_store)).read_images(0, 21)
    for field in ("boxes", "flips", "index", "prob"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


def test_import_fkd_refuses_a_folder_with_a_foreign_object(clean_store, photo_root, tmp_path, capsys):
    _write_fkd_folder(str(clean_store), tmp_path / "fkd", np.float16)
    rel = open_store(str(clean_store)).load_index().paths[7]
    victim = fkd_file_path(tmp_path / "fkd", rel)
    torch.save([_MakesADirectory(str(tmp_path / "pwned")), np.zeros(8, bool), np.zeros((8, 2, 5), np.float16)],
               victim)
    out = tmp_path / "imported.zarr"
    code = main(["labels", "import-fkd", str(tmp_path / "fkd"), "--data", str(photo_root), "--out", str(out)])
    assert_user_error((code, capsys.readouterr().err), str(victim), "refused without unpickling")
    assert not (tmp_path / "pwned").exists()
    # the import is resumable: what it wrote before the refused file stays, unfinished
    assert not out.exists() or open_store(str(out)).missing_chunks()

"""`--storage-options JSON` reaches zarr/fsspec in every command that opens or creates a store.

The file system under test is fsspec's in-memory one behind a protocol that refuses to
start without an option (`token`), as an object store refuses without its endpoint or
credentials: each command works with the option and fails in one line without it. The
option is not written into the run's record.
"""
from __future__ import annotations

import json

import pytest
from fsspec import register_implementation
from fsspec.implementations.memory import MemoryFileSystem

from fkd_dali.cli import main

TOKEN = "s3cr3t-token"
OPTS = json.dumps({"token": TOKEN})


class NeedsTokenFileSystem(MemoryFileSystem):
    """memory:// that, like an object store without credentials, cannot be used without its option."""

    protocol = "needstoken"

    def __init__(self, *args, token: str | None = None, **kwargs):
        if token != TOKEN:
            raise ValueError("needstoken:// needs storage option token")
        super().__init__(*args, **kwargs)


register_implementation("needstoken", NeedsTokenFileSystem, clobber=True)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_every_store_command_passes_the_options(photo_root, tmp_path, capsys):
    url, ens = "needstoken://fkd-opts/s.zarr", "needstoken://fkd-opts/ens.zarr"
    gen = ["labels", "generate", "--data", str(photo_root), "--out", url, "-M", "4", "-K", "3", "--input-size", "32",
           "--batch-size", "64", "--images-per-chunk", "8", "--slots-per-chunk", "2", "-j", "2", "--device", "cpu",
           "--no-progress"]
    code, _, err = _run(capsys, *gen)
    assert code == 2 and len(err.strip().splitlines()) == 1 and url in err, err  # without the option: one line
    assert _run(capsys, *gen, "--storage-options", OPTS)[0] == 0
    for argv in (["labels", "info", url], ["labels", "verify", url, "--data", str(photo_root)],
                 ["labels", "show", url, "--image", "0", "--data", str(photo_root), "--out", str(tmp_path / "s.png")],
                 ["labels", "merge", url, url, "--out", ens],
                 ["labels", "export-fkd", url, "--out", str(tmp_path / "fkd")],
                 ["labels", "import-fkd", str(tmp_path / "fkd"), "--data", str(photo_root), "--out",
                  "needstoken://fkd-opts/imported.zarr", "--images-per-chunk", "8", "--slots-per-chunk", "2"],
                 ["labels", "repair", url, "--data", str(photo_root), "-j", "2", "--device", "cpu", "--no-progress"],
                 ["labels", "add-gt-prob", url, "--data", str(photo_root), "--batch-size", "64", "-j", "2",
                  "--device", "cpu", "--no-progress"]):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1, (argv, err)
        code, out, err = _run(capsys, *argv, "--storage-options", OPTS)
        assert code == 0, (argv, err)
    run = tmp_path / "run"
    train = ["train", "--data", str(photo_root), "--labels", url, "--arch", "resnet10t", "-m", "2", "-b", "4",
             "--image-size", "32", "--max-steps", "1", "--epochs", "2", "--warmup-epochs", "0", "-j", "2",
             "--device", "cpu", "--amp", "off", "--no-progress", "--output", str(run)]
    assert _run(capsys, *train)[0] == 2
    code, _, err = _run(capsys, *train, "--storage-options", OPTS)
    assert code == 0, err
    assert TOKEN not in (run / "config.yaml").read_text() and TOKEN not in (run / "config.json").read_text()
    evaluate = ["eval", "--data", str(photo_root), "--checkpoint", str(run / "last.pth"), "--labels", url, "-b", "8",
                "-j", "2", "--device", "cpu"]
    assert _run(capsys, *evaluate)[0] == 2
    code, _, err = _run(capsys, *evaluate, "--storage-options", OPTS)
    assert code == 0, err


def test_storage_options_must_be_a_json_object(capsys):
    for bad in ("{token: x}", "[1, 2]"):
        with pytest.raises(SystemExit) as e:
            main(["labels", "info", "needstoken://x.zarr", "--storage-options", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--storage-options" in err and len(err.strip().splitlines()) == 1

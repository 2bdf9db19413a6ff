"""The CLI answers at once: parsing, --help and argument errors import no heavy library.

Each case runs the CLI in a fresh interpreter and lists which heavy modules ended up in
`sys.modules`; a parser that imports torch (seconds of start-up) fails here.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "timm", "nvidia.dali", "matplotlib")
STORE_LIBS = ("zarr", "numcodecs")  # what reading a store needs; not loaded for --help or bad flags

_PROBE = """
import json, sys
from fkd_dali.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
sys.stdout.flush()
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if m.split('.')[0] in
      ('torch', 'torchvision', 'timm', 'nvidia', 'matplotlib', 'zarr', 'numcodecs'))}))
"""


def run_cli(*argv: str) -> tuple[int, set[str], str]:
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120)
    last = done.stdout.strip().splitlines()[-1]
    report = json.loads(last)
    return report["code"], set(report["modules"]), done.stderr


def heavy_loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n in modules or any(m.startswith(n + ".") for m in modules))


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["train", "--help"],
    ["eval", "--help"],
    ["demo", "--help"],
    ["bench", "--help"],
    ["labels", "--help"],
    ["labels", "generate", "--help"],
    ["labels", "import-fkd", "--help"],
    ["labels", "export-fkd", "--help"],
    ["labels", "info", "--help"],
    ["labels", "verify", "--help"],
    ["labels", "show", "--help"],
    ["labels", "merge", "--help"],
])
def test_help_imports_nothing_heavy(argv):
    code, modules, _ = run_cli(*argv)
    assert code == 0
    assert heavy_loaded(modules, HEAVY + STORE_LIBS) == []


@pytest.mark.parametrize("argv", [
    ["labels", "generate", "--data", "d", "--out", "o", "--bogus"],
    ["labels", "generate", "--data", "d", "--out", "o", "--scale", "0.5"],
    ["labels", "generate", "--data", "d", "--out", "o", "--std", "0,0,0"],
    ["train", "--data", "d", "--labels", "s", "--lr", "nan"],
    ["train", "--data", "d", "--labels", "s", "--sched", "cosin"],
    ["train", "--labels", "s"],
])
def test_argument_errors_import_nothing_heavy(argv):
    code, modules, stderr = run_cli(*argv)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert heavy_loaded(modules, HEAVY + STORE_LIBS) == []


def test_store_inspection_imports_no_torch_or_dali(small_store):
    for action in ("info", "verify"):
        code, modules, stderr = run_cli("labels", action, str(small_store))
        assert code == 0, stderr
        assert heavy_loaded(modules, HEAVY) == []
        assert "zarr" in modules  # it did read the store

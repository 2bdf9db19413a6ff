"""The package keeps its part graph: every import points down the layers, DALI graphs apart, the CLI light.

Every import statement counts: module level, inside functions (lazy imports for start-up
time) and under `if TYPE_CHECKING:`; hiding an edge in a function does not remove it.
The part graph is written down once, in `LAYERS` (and in docs/design.md, "Code layout").
"""
from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The parts of fkd_dali, bottom to top. A module may import modules of its own part and of
#: lower layers only; parts in one layer do not import each other. `pipelines` (the DALI
#: graphs, the repository's top-level pipelines/ folder) is the leaf: errors and defaults only.
LAYERS: list[set[str]] = [
    {"errors", "defaults", "version", "local"},  # plain values and the stdlib only
    {"config", "registry"},  # option dataclasses (torch-free), the name registry
    {"atomic", "dist", "checkout"},  # atomic writes, processes and devices, checkout folders
    {"data"},  # the dataset index
    {"crops"},  # boxes, the crop plan, colour jitter: pure numpy
    {"store"},  # the soft-label store
    {"targets"},  # label recovery and the loss: pure torch
    {"pipelines"},  # DALI graphs only
    {"loaders"},  # pass tables, crop sources, replay / vanilla / synthetic loaders, create_loader
    {"labels"},  # label generation and teachers
    {"interop"},  # FKD's label files, ReLabel's label maps (made by a teacher)
    {"train"},  # the training loop
    {"demo"},
    {"cli"},  # the command line
    {"__main__", "fkd_dali"},  # `python -m fkd_dali` and the package facade (lazy public names)
]
PIPELINES_MAY_IMPORT = {"errors", "defaults"}
LAYER_OF = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def source_modules(package_root: Path, name: str = "fkd_dali",
                   extra: dict[str, Path] | None = None) -> dict[str, Path]:
    """Module name -> file for the package at `package_root` and folders installed under it (`extra`)."""
    out: dict[str, Path] = {}
    for base, folder in [(name, package_root), *(extra or {}).items()]:
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([base, *parts])] = path
    return out


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Modules of `modules` that `path` imports anywhere (functions and TYPE_CHECKING blocks included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m in modules}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    names = set(modules)
    return {name: imported_modules(path, names) - {name} for name, path in modules.items()}


def part_of(module: str) -> str:
    parts = module.split(".")
    return "fkd_dali" if len(parts) == 1 else parts[1]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import that points up the layers, across a layer, or out of the graphs' leaf."""
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            a, b = part_of(src), part_of(dst)
            if a == b:
                continue
            if a not in LAYER_OF or b not in LAYER_OF:
                bad.append(f"{src} -> {dst} (part {a if a not in LAYER_OF else b} is in no layer)")
            elif a == "pipelines" and b not in PIPELINES_MAY_IMPORT:
                bad.append(f"{src} -> {dst} (the DALI graphs import errors and defaults only)")
            elif LAYER_OF[b] >= LAYER_OF[a]:
                bad.append(f"{src} -> {dst} ({a} may not import {b})")
    return sorted(bad)


def module_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


MODULES = source_modules(ROOT / "fkd_dali", extra={"fkd_dali.pipelines": ROOT / "pipelines"})
GRAPH = import_graph(MODULES)


def test_every_import_points_down_the_part_graph():
    assert layer_violations(GRAPH) == []


def test_no_module_imports_itself_in_a_loop():
    assert module_cycles(GRAPH) == []


def test_every_part_is_in_a_layer():
    assert {part_of(m) for m in MODULES} <= set(LAYER_OF)


def _plant(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    root = tmp_path / "fkd_dali"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for folder in {p.parent for p in root.rglob("*.py")} - {root}:
        (folder / "__init__.py").touch()
    return import_graph(source_modules(root))


def test_the_checks_see_imports_hidden_in_functions_and_type_checking_blocks(tmp_path):
    """A planted store <-> loaders loop, one edge inside a function and one under TYPE_CHECKING, fails both checks."""
    graph = _plant(tmp_path, {
        "store/reader.py": "def read():\n    from fkd_dali.loaders.replay import Replay\n    return Replay\n",
        "loaders/replay.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from fkd_dali.store.reader import read\nclass Replay: ...\n"),
    })
    assert graph["fkd_dali.store.reader"] == {"fkd_dali.loaders.replay"}
    assert graph["fkd_dali.loaders.replay"] == {"fkd_dali.store.reader"}
    assert module_cycles(graph) == [["fkd_dali.loaders.replay", "fkd_dali.store.reader"]]
    assert layer_violations(graph) == ["fkd_dali.store.reader -> fkd_dali.loaders.replay (store may not import loaders)"]


def test_the_checks_refuse_a_graph_importing_beyond_errors_and_defaults(tmp_path):
    graph = _plant(tmp_path, {"pipelines/crops.py": "import fkd_dali.data.index\n", "data/index.py": ""})
    assert layer_violations(graph) == [
        "fkd_dali.pipelines.crops -> fkd_dali.data.index (the DALI graphs import errors and defaults only)"]


@pytest.mark.parametrize("name", ["fkd_dali.config", "fkd_dali.defaults", "fkd_dali.errors", "fkd_dali.cli",
                                  "fkd_dali.cli._common", "fkd_dali.cli.labels", "fkd_dali.cli.train",
                                  "fkd_dali", "fkd_dali.checkout"])
def test_light_modules_import_nothing_heavy(name):
    tree = ast.parse(MODULES[name].read_text())
    heavy = {"torch", "torchvision", "timm", "nvidia", "zarr", "matplotlib", "numpy"}
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert top & heavy == set()


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_every_package_is_installed_and_no_generic_top_level_name_is():
    cfg = _setup_cfg()
    listed = set(cfg["options"]["packages"].split())
    on_disk = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert on_disk <= listed
    assert "bench" not in listed and "pipelines" not in listed
    mapping = dict(line.split("=") for line in cfg["options"]["package_dir"].split("\n") if "=" in line)
    assert {k.strip(): v.strip() for k, v in mapping.items()} == {"fkd_dali.pipelines": "pipelines",
                                                                   "fkd_dali_bench": "bench"}


@pytest.mark.slow
def test_a_non_editable_install_imports_the_graphs_as_fkd_dali_pipelines(tmp_path):
    """Installed from a wheel, outside the checkout: fkd_dali.pipelines is there, `pipelines` and `bench` are not."""
    target = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                            "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    assert (target / "fkd_dali" / "pipelines" / "crops.py").is_file()
    assert not (target / "pipelines").exists() and not (target / "bench").exists()
    code = ("import importlib.util, fkd_dali, fkd_dali.pipelines.crops as c, fkd_dali_bench; "
            "print(c.__file__); print(importlib.util.find_spec('pipelines'), importlib.util.find_spec('bench'))")
    # -S: no site module, so no editable-install finder; the installed dependencies are appended after the target
    deps = [p for p in sys.path if p and not p.startswith(str(ROOT)) and Path(p).is_dir()]
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    done = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path += {deps!r}; {code}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    graphs, missing = done.stdout.strip().splitlines()
    assert graphs == str(target / "fkd_dali" / "pipelines" / "crops.py")
    assert missing == "None None"


def test_benchmarks_import_each_other_relatively_so_they_run_as_fkd_dali_bench():
    """Installed, the benchmarks are the package `fkd_dali_bench`: an absolute `bench.` import would break there."""
    for path in sorted((ROOT / "bench").glob("*.py")):
        tree = ast.parse(path.read_text())
        absolute = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0
                    and n.module and n.module.split(".")[0] == "bench"]
        absolute += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                     if a.name.split(".")[0] == "bench"]
        assert not absolute, f"{path.name} imports {absolute} absolutely"

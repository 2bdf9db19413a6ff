"""The package layout keeps its promises: no import cycles, DALI graphs apart, the CLI light, packages installed.

Imports are read from the source (module level, `if TYPE_CHECKING:` blocks included:
hiding a cycle there does not remove it); imports inside functions are deliberate
lazy imports for start-up time and do not count.
"""
from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fkd_dali"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level_imports(path: Path) -> set[str]:
    """fkd_dali modules imported at module level (including under `if` blocks), resolved to modules."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))

    visit(tree.body)
    return {m for m in found if m.startswith("fkd_dali")}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: {m for m in top_level_imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            strongconnect(v)
    assert cycles == []


def test_the_cycle_check_sees_cycles():
    assert "fkd_dali.store.label_store" in GRAPH["fkd_dali.train.checkpoint"]  # edges are read at all


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("fkd_dali.pipelines")))
def test_pipelines_hold_graphs_only(name):
    allowed = {"fkd_dali.errors", "fkd_dali.defaults"}
    outside = {m for m in GRAPH[name] if not m.startswith("fkd_dali.pipelines") and m not in allowed}
    assert outside == set(), f"{name} imports {outside}"


@pytest.mark.parametrize("name", ["fkd_dali.config", "fkd_dali.defaults", "fkd_dali.errors", "fkd_dali.cli",
                                  "fkd_dali.cli._common", "fkd_dali.cli.labels", "fkd_dali.cli.train"])
def test_light_modules_import_nothing_heavy(name):
    tree = ast.parse(MODULES[name].read_text())
    heavy = {"torch", "torchvision", "timm", "nvidia", "zarr", "matplotlib", "numpy"}
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert top & heavy == set()


def test_every_package_is_installed_and_bench_is_not_a_top_level_name():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = {module_name(p.parent) for p in PACKAGE.rglob("__init__.py")}
    assert on_disk <= listed
    assert "bench" not in listed and "pipelines" not in listed
    mapping = dict(line.split("=") for line in cfg["options"]["package_dir"].split("\n") if "=" in line)
    assert {k.strip(): v.strip() for k, v in mapping.items()} == {"fkd_dali_bench": "bench"}


def test_benchmarks_import_each_other_relatively_so_they_run_as_fkd_dali_bench():
    """Installed, the benchmarks are the package `fkd_dali_bench`: an absolute `bench.` import would break there."""
    for path in sorted((ROOT / "bench").glob("*.py")):
        tree = ast.parse(path.read_text())
        absolute = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0
                    and n.module and n.module.split(".")[0] == "bench"]
        absolute += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                     if a.name.split(".")[0] == "bench"]
        assert not absolute, f"{path.name} imports {absolute} absolutely"

"""Folders of the repository that install under other names, found in a source checkout first.

Two folders beside the package are installed as parts of it (setup.cfg `package_dir`):
`pipelines/` (the DALI graphs) as `fkd_dali.pipelines` and `bench/` as `fkd_dali_bench`, so no
generic top-level name (`pipelines`, `bench`) reaches site-packages. Run from a source
checkout without installing it (PYTHONPATH, as on the accelerator machine) or from a
second checkout while another is installed, the checkout's own folders must serve, never
an installed copy: `load_checkout_package` loads them under their installed names.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

#: the repository root when this package is a source checkout (setup.cfg beside it), else None
CHECKOUT: Path | None = (Path(__file__).resolve().parent.parent
                         if (Path(__file__).resolve().parent.parent / "setup.cfg").is_file() else None)


def load_checkout_package(name: str, folder: str) -> ModuleType | None:
    """Import the checkout's `folder` as the package `name` (once); None when not in a checkout or absent."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    init = CHECKOUT / folder / "__init__.py" if CHECKOUT is not None else None
    if init is None or not init.is_file():
        return None
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module

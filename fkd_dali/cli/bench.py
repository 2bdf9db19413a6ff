"""`fkd-dali bench NAME [options]`: the benchmark programs of `bench/`.

Everything after the benchmark's name goes unchanged to the benchmarks' `main`, which
owns the options (`fkd-dali bench NAME --help` lists them); this module only dispatches,
and lists the names and summaries of the one registry, `BENCHMARKS` in `bench/__init__.py`.
The benchmarks install as `fkd_dali_bench` (package_dir in setup.cfg); a source
checkout's own `bench/` folder takes precedence (see `bench_package`).
"""
from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from fkd_dali.checkout import load_checkout_package

_PACKAGE = "fkd_dali_bench"


def bench_package() -> ModuleType:
    """The benchmarks beside this fkd_dali (a source checkout's `bench/`), else the installed `fkd_dali_bench`.

    Looking beside the package first means a checkout run with PYTHONPATH (as on a GPU
    machine where nothing is installed) uses its own benchmarks, never a
    stale installed copy, and never a top-level `bench` of someone else's.
    """
    return load_checkout_package(_PACKAGE, "bench") or importlib.import_module(_PACKAGE)


def add_parser(sub: argparse._SubParsersAction) -> None:
    registry = bench_package().BENCHMARKS
    names = registry.names()
    listing = "\n".join(f"  {n:<9} {registry.get(n).summary}" for n in names)
    p = sub.add_parser("bench", help="benchmarks (" + "|".join(names) + "); JSON + PNG results",
                       description="Run one of fkd-dali's benchmarks; each writes a JSON document (with the "
                                   "machine described) and a PNG chart.",
                       epilog=f"benchmarks:\n{listing}\n\n`fkd-dali bench NAME --help` shows a benchmark's options.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=names, metavar="{" + ",".join(names) + "}", help="the benchmark to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="options of that benchmark")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    return bench_package().main([args.name, *args.args])

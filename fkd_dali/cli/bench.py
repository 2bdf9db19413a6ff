"""`fkd-dali bench loaders|store|labelgen|train [options]`: the benchmark programs of `bench/`.

Everything after the benchmark's name goes unchanged to the benchmarks' `main`, which
owns the options (`fkd-dali bench NAME --help` lists them); this module only dispatches.
The benchmarks install as `fkd_dali_bench`; in a source checkout without installing,
the repository's `bench` package (on the path when run from the repository root) serves.
"""
from __future__ import annotations

import argparse
import importlib
from types import ModuleType


def bench_package() -> ModuleType:
    try:
        return importlib.import_module("fkd_dali_bench")
    except ModuleNotFoundError as e:
        if e.name != "fkd_dali_bench":
            raise
        return importlib.import_module("bench")

_SUMMARIES = {
    "loaders": "data-loading speed: fkd-dali replay vs ReLabel, FKD reference, torchvision, DALI",
    "store": "bytes per image: store vs FKD files vs ReLabel maps; pass-table load time",
    "labelgen": "label-generation crops/s vs teacher-only inference",
    "train": "training throughput with real data vs synthetic tensors",
    "stages": "CPU time per crop by stage (decode, resize, normalize, Python, labels) of each loader",
    "fidelity": "label fidelity vs the teacher on each crop: stored top-K, ReLabel maps, one label per image",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    names = bench_package().BENCHMARKS.names()
    listing = "\n".join(f"  {n:<9} {_SUMMARIES.get(n, '')}" for n in names)
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

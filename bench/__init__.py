"""fkd-dali's benchmark programs: `python -m bench <name> ...` or `fkd-dali bench <name> ...`.

Each benchmark is a module `bench.bench_<name>` with `main(argv) -> int` that writes
a JSON document (machine described) and a PNG chart. This package's import stays
light: a benchmark's module is imported only when it is run.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

from fkd_dali.errors import ConfigError, FkdError
from fkd_dali.registry import Registry

#: Benchmark name -> module that implements it (imported on demand).
BENCHMARKS: Registry[str] = Registry("benchmark")
BENCHMARKS.add("loaders", "bench.bench_loaders")
BENCHMARKS.add("store", "bench.bench_store")
BENCHMARKS.add("labelgen", "bench.bench_labelgen")
BENCHMARKS.add("train", "bench.bench_train")
BENCHMARKS.add("stages", "bench.bench_stages")
BENCHMARKS.add("feed", "bench.bench_feed")
BENCHMARKS.add("fidelity", "bench.bench_fidelity")

_USAGE = "usage: bench {" + "|".join(BENCHMARKS.names()) + "} [options]   (bench NAME --help for options)"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `bench NAME ARGS...` to `bench.bench_NAME.main(ARGS)`; exit 2 on user errors."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if args else 2
    try:
        module_name = BENCHMARKS.get(args[0])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            raise ConfigError(f"benchmark {args[0]!r} is not implemented yet ({module_name} is missing)") from None
        return int(module.main(args[1:]))
    except FkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

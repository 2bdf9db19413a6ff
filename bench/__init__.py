"""fkd-dali's benchmark programs: `python -m bench <name> ...` or `fkd-dali bench <name> ...`.

Each benchmark is a module `bench.bench_<name>` with `main(argv) -> int` that writes
a JSON document (machine described) and a PNG chart; `summary` (`bench.summary`)
prints the tables of such documents. This package's import stays
light: a benchmark's module is imported only when it is run.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Sequence

from fkd_dali.errors import ConfigError, FkdError
from fkd_dali.registry import Registry


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: its module (relative to this package, imported when run) and a one-line summary."""

    module: str
    summary: str


#: Benchmark name -> its module and summary: the one list `fkd-dali bench` and `python -m bench` read.
BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
BENCHMARKS.add("loaders", Benchmark(".bench_loaders", "data-loading speed: fkd-dali replay vs ReLabel, FKD "
                                                      "reference, torchvision, DALI"))
BENCHMARKS.add("store", Benchmark(".bench_store", "bytes per image: store vs FKD files vs ReLabel maps; "
                                                  "pass-table load time"))
BENCHMARKS.add("labelgen", Benchmark(".bench_labelgen", "label-generation crops/s vs teacher-only inference"))
BENCHMARKS.add("train", Benchmark(".bench_train", "training images/s: real data vs synthetic tensors, FKD "
                                                  "replay vs online KD"))
BENCHMARKS.add("stages", Benchmark(".bench_stages", "CPU time per crop by stage (decode, resize, normalize, "
                                                    "Python, labels) of each loader"))
BENCHMARKS.add("feed", Benchmark(".bench_feed", "images per CPU-second of the replay's host path, decoding "
                                                "taken out, by stage"))
BENCHMARKS.add("fidelity", Benchmark(".bench_fidelity", "label fidelity vs the teacher on each crop: stored "
                                                        "top-K, ReLabel maps, one label per image"))
BENCHMARKS.add("accuracy", Benchmark(".bench_accuracy", "student top-1 on controlled scenes: hard labels, "
                                                          "ReLabel, FKD, online KD, FerKD, FKD + CutMix"))
BENCHMARKS.add("scenes", Benchmark(".scenes", "controlled scenes for accuracy benchmarks: one labelled object, "
                                              "distractors, clutter; boxes in scenes.json"))
BENCHMARKS.add("summary", Benchmark(".summary", "Markdown tables of the JSON results in a folder (default: the "
                                                "committed CPU results)"))

_USAGE = "usage: bench {" + "|".join(BENCHMARKS.names()) + "} [options]   (bench NAME --help for options)"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `bench NAME ARGS...` to the benchmark module's `main(ARGS)`; exit 2 on user errors."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if args else 2
    try:
        module_name = BENCHMARKS.get(args[0]).module
        try:
            module = importlib.import_module(module_name, __name__)
        except ModuleNotFoundError as e:
            if e.name != __name__ + module_name:
                raise
            raise ConfigError(f"benchmark {args[0]!r} is not implemented yet ({module_name} is missing)") from None
        return int(module.main(args[1:]))
    except FkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

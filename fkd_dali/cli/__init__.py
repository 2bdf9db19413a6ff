"""The `fkd-dali` command: argument parsing and dispatch only.

Each command group lives in its own module exposing `add_parser(subparsers)`; a
handler turns the namespace into a config object (`fkd_dali.config`), makes one
library call and returns an exit code. Parsing imports no torch, DALI, timm or
matplotlib, so `--help` and argument errors answer at once; handlers import what they
need. User errors (`FkdError`, bad flags) print one line and exit with status 2
(tracebacks with --debug). Under torchrun only rank 0 prints warnings, notes and
summaries; an error is printed by every rank that has it, marked with its rank.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import NoReturn, Sequence

from fkd_dali.cli._common import launcher_rank
from fkd_dali.errors import FkdError
from fkd_dali.version import __version__


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (with where to find help), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from fkd_dali.cli import bench, demo, labels, train

    parser = _Parser(
        prog="fkd-dali", description="Fast Knowledge Distillation on NVIDIA DALI: label random crops once with a "
        "teacher, then train students on replayed crops and stored soft labels.",
        epilog="Start with `fkd-dali demo`. `python -m fkd_dali` is the same command.")
    parser.add_argument("--version", action="version", version=f"fkd-dali {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (labels, train, bench, demo):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = launcher_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.ERROR, format="%(message)s")
    warnings.filterwarnings("ignore", category=UserWarning, module="zarr")
    if rank > 0:  # under torchrun only rank 0 speaks: the others' warnings and notes would repeat its own
        warnings.simplefilter("ignore")
    try:
        if getattr(args, "config", None):
            from fkd_dali.cli.train import apply_config_file

            args = apply_config_file(parser, args, argv)
        return int(args.handler(args) or 0)
    except FkdError as e:
        if args.debug:
            raise
        where = f" (rank {rank})" if rank > 0 else ""  # an error may be one rank's own: every rank reports it
        print(f"fkd-dali: error{where}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fkd-dali: interrupted", file=sys.stderr)
        return 130

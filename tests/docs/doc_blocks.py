"""The shell blocks of README.md and docs/*.md: found, split into commands, and checked without running them.

Conventions of the pages (what `test_doc_commands.py` relies on):

- Only fenced blocks opened with ```` ```bash ```` are commands. Each is run as a whole by
  `bash -e` (see `test_doc_commands.py`), unless the line right above its fence is
  ``<!-- doc-test: skip (REASON) -->``: then it is only checked, never run, and the
  reason says why (a GPU, several nodes, minutes of CPU, the test suite itself).
- Commands name their inputs with placeholders that the tests provide: `train/` (an
  ImageNet-style training folder), `val/` (a validation folder with class folders),
  `labels.zarr` (a complete store for `train/`), the teacher and student weight files
  in `WEIGHT_FILES`, `ILSVRC2012_devkit_t12/` (a devkit for a flat `val/`); everything
  else a block names is written by an earlier command of the same page.

Checking a command means: fkd-dali commands (`fkd-dali ...`, `python -m fkd_dali ...`,
and the same behind `torchrun`) are parsed by fkd-dali's own argument parser, with
their `--config` file applied, and turned into the command's config object, whose
checks reject values out of range; benchmark options go through the benchmark's own
parser; scripts (`python examples/X.py ...`) through theirs; `torchrun`'s own options
through torch's parser; Python given on stdin or with `-c` must compile; `pytest -m`
may name only markers that setup.cfg declares; `pip install -e .[EXTRA]` only extras
that setup.cfg declares. Plain shell commands (`cat`, `export`, ...) are not checked.
"""
from __future__ import annotations

import argparse
import ast
import configparser
import contextlib
import importlib
import importlib.util
import io
import re
import runpy
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: Weight files the commands may name, made by the tests as seeded random timm models: (arch, classes).
WEIGHT_FILES = {
    "resnet50.pth": ("resnet50", 1000),  # a plain timm teacher
    "resnet50_pretrained.pth": ("resnet50", 1000),  # a "pretrained" student for --initial-checkpoint
    "ssl_resnet50.pth": ("resnet50", 128),  # a self-supervised teacher with a 128-wide head
}

_SKIP = re.compile(r"^<!--\s*doc-test:\s*skip\s*\((?P<reason>.+)\)\s*-->$")
_DIRECTIVE = re.compile(r"<!--\s*doc-test")
_FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(?P<word>\w+)\1")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_OPERATORS = {"&&", "||", ";", "|", "&"}
_REDIRECTS = {">", ">>", "<"}


class DocError(AssertionError):
    """A page or command that breaks the conventions above (or names a flag that does not exist)."""


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    skip: str | None  # the reason of a `doc-test: skip` directive

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass(frozen=True)
class Command:
    block: Block
    line: int  # 1-based line in the page where the command starts
    argv: tuple[str, ...]
    heredoc: str | None  # the text fed to it by a here-document
    writes: str | None  # the file its `>` redirection writes

    @property
    def id(self) -> str:
        return f"{self.block.page}:{self.line}:{' '.join(self.argv[:3])}"


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a page, with its skip directive; malformed directives raise `DocError`."""
    rel = str(path.relative_to(REPO))
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    skip: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _SKIP.match(line.strip())
        if m:
            nxt = _FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            if not nxt or nxt["lang"] != "bash":
                raise DocError(f"{rel}:{i + 1}: a doc-test directive must stand right above a ```bash fence")
            if not m["reason"].strip():
                raise DocError(f"{rel}:{i + 1}: a skipped block must say why")
            skip = m["reason"].strip()
            i += 1
            continue
        if _DIRECTIVE.search(line):
            raise DocError(f"{rel}:{i + 1}: malformed doc-test directive {line.strip()!r} "
                           "(the one form is <!-- doc-test: skip (REASON) -->)")
        f = _FENCE.match(line)
        if f and line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            if j == len(lines):
                raise DocError(f"{rel}:{i + 1}: fenced block never closed")
            blocks.append(Block(rel, i + 1, f["lang"], "\n".join(lines[i + 1:j]) + "\n", skip))
            skip = None
            i = j + 1
            continue
        i += 1
    return blocks


def all_blocks(lang: str | None = "bash") -> list[Block]:
    return [b for page in PAGES for b in read_blocks(page) if lang is None or b.lang == lang]


def split_commands(block: Block) -> list[Command]:
    """The simple commands of a block: continuation lines joined, here-documents attached, `&&`/`|`/`;` split."""
    lines = block.text.splitlines()
    out: list[Command] = []
    i = 0
    while i < len(lines):
        start = i
        logical = lines[i]
        while logical.endswith("\\") and i + 1 < len(lines):
            i += 1
            logical = logical[:-1] + " " + lines[i]
        i += 1
        heredoc = None
        m = _HEREDOC.search(logical)
        if m:
            body = []
            while i < len(lines) and lines[i].strip() != m["word"]:
                body.append(lines[i])
                i += 1
            i += 1  # the terminator
            heredoc = "\n".join(body) + "\n"
            logical = logical[:m.start()] + logical[m.end():]
        for argv, writes in _simple_commands(logical):
            out.append(Command(block, block.line + 1 + start, tuple(argv), heredoc, writes))
    return out


def _simple_commands(text: str) -> list[tuple[list[str], str | None]]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    tokens = list(lex)
    out: list[tuple[list[str], str | None]] = []
    argv: list[str] = []
    writes = None
    it = iter(tokens)
    for tok in it:
        if tok in _OPERATORS:
            out.append((argv, writes))
            argv, writes = [], None
        elif tok in _REDIRECTS:
            target = next(it, None)
            if tok != "<":
                writes = target
        else:
            argv.append(tok)
    out.append((argv, writes))
    cleaned = []
    for argv, writes in out:
        while argv and _ASSIGNMENT.match(argv[0]):
            argv = argv[1:]
        if argv:
            cleaned.append((argv, writes))
    return cleaned


def all_commands(lang: str = "bash") -> list[Command]:
    return [c for b in all_blocks(lang) for c in split_commands(b)]


# -- kinds of commands ------------------------------------------------------------------
def kind_of(argv: tuple[str, ...]) -> tuple[str, list[str]]:
    """("fkd-dali" | "torchrun" | "script" | "python-module:NAME" | "python-stdin" | "python-c" | "pip" | "shell", args)."""
    prog, rest = argv[0], list(argv[1:])
    if prog == "fkd-dali":
        return "fkd-dali", rest
    if prog in ("python", "python3"):
        if rest[:2] == ["-m", "fkd_dali"]:
            return "fkd-dali", rest[2:]
        if rest[:1] == ["-m"] and len(rest) > 1:
            return f"python-module:{rest[1]}", rest[2:]
        if rest[:1] == ["-"]:
            return "python-stdin", rest[1:]
        if rest[:1] == ["-c"]:
            return "python-c", rest[1:]
        if rest and rest[0].endswith(".py"):
            return "script", rest
    if prog == "torchrun":
        return "torchrun", rest
    if prog in ("pip", "pip3"):
        return "pip", rest
    return "shell", list(argv)


# -- checks -------------------------------------------------------------------------------
def _parse(parser: argparse.ArgumentParser, args: list[str], what: str) -> argparse.Namespace | None:
    """Parse with `parser`; None when it printed help (exit 0); DocError with argparse's message otherwise."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(args)
    except SystemExit as e:
        if e.code in (0, None):
            return None
        raise DocError(f"{what}: {err.getvalue().strip() or e}") from None


def _config_path(value: str, files: dict[str, str], tmp: Path) -> Path | None:
    """A `--config` file: the repository's, or one an earlier command of the block wrote; None if neither."""
    if (REPO / value).is_file():
        return REPO / value
    if value in files:
        path = tmp / Path(value).name
        path.write_text(files[value])
        return path
    return None


def check_fkd(args: list[str], files: dict[str, str], what: str) -> str:
    """Parse an fkd-dali command line and build its config object (no file is opened, nothing runs)."""
    from fkd_dali.cli import build_parser
    from fkd_dali.cli.train import apply_config_file, train_config
    from fkd_dali.config import DemoConfig, EvalConfig, LabelGenConfig
    from fkd_dali.errors import FkdError

    parser = build_parser()
    ns = _parse(parser, args, what)
    if ns is None:
        return "help"
    note = "parsed"
    if getattr(ns, "config", None):
        with tempfile.TemporaryDirectory() as tmp:
            path = _config_path(ns.config, files, Path(tmp))
            if path is None:
                return "parsed (its --config is written by an earlier run: flags only)"
            args = [str(path) if a == ns.config else a for a in args]
            ns = _parse(parser, args, what)
            try:
                ns = apply_config_file(parser, ns, args)
            except FkdError as e:
                raise DocError(f"{what}: {e}") from None
            note = "parsed with its --config"
    try:
        if ns.command == "train":
            missing = [n for n in ("data", "labels") if getattr(ns, n) is None]
            if missing:
                raise DocError(f"{what}: --{missing[0]} is required (on the command line or in --config)")
            train_config(ns)
        elif ns.command == "eval":
            EvalConfig(data=ns.data, checkpoint=ns.checkpoint, labels=ns.labels, batch_size=ns.batch_size,
                       threads=ns.threads, device=ns.device, amp=ns.amp, use_ema=ns.use_ema)
        elif ns.command == "demo":
            DemoConfig(**{f: getattr(ns, f) for f in DemoConfig.__dataclass_fields__ if hasattr(ns, f)
                          and f != "progress"})
        elif ns.command == "labels" and ns.labels_command == "generate":
            LabelGenConfig(**{f: getattr(ns, f) for f in LabelGenConfig.__dataclass_fields__ if hasattr(ns, f)})
        elif ns.command == "bench":
            return check_bench(ns.name, list(ns.args), what)
    except FkdError as e:
        raise DocError(f"{what}: {e}") from None
    return note


def check_bench(name: str, args: list[str], what: str) -> str:
    """A benchmark's options, through the benchmark's own `parse_args` (which builds its config)."""
    from fkd_dali.cli.bench import bench_package
    from fkd_dali.errors import FkdError

    package = bench_package()
    module = importlib.import_module(package.BENCHMARKS.get(name).module, package.__name__)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            module.parse_args(args)
    except SystemExit as e:
        if e.code not in (0, None):
            raise DocError(f"{what}: bench {name}: {err.getvalue().strip()}") from None
    except FkdError as e:
        raise DocError(f"{what}: bench {name}: {e}") from None
    return f"parsed by bench {name}"


class _Parsed(Exception):
    pass


def check_script(args: list[str], what: str) -> str:
    """Run a script up to its `parse_args` (argparse's, patched to stop right after parsing)."""
    path = REPO / args[0]
    if not path.is_file():
        raise DocError(f"{what}: no script {args[0]} in the repository")
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, a=None, namespace=None):
        original(self, a, namespace)
        raise _Parsed

    argv = sys.argv
    sys.argv = [str(path), *args[1:]]
    argparse.ArgumentParser.parse_args = parse_and_stop  # type: ignore[method-assign]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            runpy.run_path(str(path), run_name="__main__")
    except _Parsed:
        return "parsed by the script's parser"
    except SystemExit as e:
        if e.code in (0, None):
            return "help"
        raise DocError(f"{what}: {err.getvalue().strip()}") from None
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
        sys.argv = argv
    raise DocError(f"{what}: the script never parsed its arguments")


def check_torchrun(args: list[str], files: dict[str, str], what: str) -> str:
    from torch.distributed.run import get_args_parser

    ns = _parse(get_args_parser(), args, f"{what}: torchrun")
    if ns is None:
        return "help"
    script, rest = ns.training_script, list(ns.training_script_args)
    if ns.module and script == "fkd_dali" or ns.no_python and script == "fkd-dali":
        return "torchrun + " + check_fkd(rest, files, what)
    if script.endswith(".py") and not ns.module:
        return "torchrun + " + check_script([script, *rest], what)
    raise DocError(f"{what}: torchrun runs {script!r}, neither fkd_dali nor a script of the repository")


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def check_pytest(args: list[str], what: str) -> str:
    markers = {line.split(":")[0].strip() for line in _setup_cfg()["tool:pytest"]["markers"].strip().splitlines()}
    for i, a in enumerate(args):
        if a == "-m":
            words = set(re.findall(r"[A-Za-z_]\w*", args[i + 1])) - {"not", "and", "or"}
            if not words <= markers:
                raise DocError(f"{what}: pytest marker(s) {sorted(words - markers)} not in setup.cfg")
    return "markers checked"


def check_pip(args: list[str], what: str) -> str:
    extras = set(_setup_cfg()["options.extras_require"])
    for a in args:
        m = re.fullmatch(r"(?:\.|fkd-dali)\[(?P<extras>[\w,]+)\]", a.strip("'\""))
        if m and not set(m["extras"].split(",")) <= extras:
            raise DocError(f"{what}: extra(s) {m['extras']} not all in setup.cfg ({sorted(extras)})")
    return "extras checked"


def check_command(cmd: Command, files: dict[str, str]) -> str:
    """Check one command (see the module docstring); returns what was checked. `files`: heredoc files so far."""
    what = f"{cmd.block.page}:{cmd.line}: {' '.join(cmd.argv)}"
    kind, args = kind_of(cmd.argv)
    if kind == "fkd-dali":
        return check_fkd(args, files, what)
    if kind == "torchrun":
        return check_torchrun(args, files, what)
    if kind == "script":
        return check_script(args, what)
    if kind == "python-module:pytest":
        return check_pytest(args, what)
    if kind.startswith("python-module:"):
        module = kind.split(":", 1)[1]
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise DocError(f"{what}: no module {module}")
        for a in args:
            if not a.startswith("-") and not (REPO / a).exists():
                raise DocError(f"{what}: {a} does not exist in the repository")
        return "module and paths checked"
    if kind == "python-stdin":
        if cmd.heredoc is None:
            raise DocError(f"{what}: `python -` without a here-document")
        ast.parse(cmd.heredoc)
        return "compiles"
    if kind == "python-c":
        ast.parse(args[0])
        return "compiles"
    if kind == "pip":
        return check_pip(args, what)
    return "shell (not checked)"


def check_block(block: Block) -> list[tuple[Command, str]]:
    """Check every command of a block in order (files written by here-documents are visible to later ones)."""
    files: dict[str, str] = {}
    results = []
    for cmd in split_commands(block):
        results.append((cmd, check_command(cmd, files)))
        if cmd.writes and cmd.heredoc is not None:
            files[cmd.writes] = cmd.heredoc
    return results


def placeholder_weights(text: str) -> dict[str, tuple[str, int]]:
    """The weight files of `WEIGHT_FILES` that `text` names (as whole words)."""
    return {name: spec for name, spec in WEIGHT_FILES.items() if re.search(rf"(?<![\w.]){re.escape(name)}", text)}


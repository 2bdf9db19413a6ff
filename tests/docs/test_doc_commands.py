"""Every command of README.md and docs/*.md: parsed by the parsers that will read it, and run where it can run here.

Fast part (seconds): every command of every ```bash block, skipped blocks included, is
checked without running it (`doc_blocks.check_command`: fkd-dali's own argument parser
and config objects, the benchmarks' and scripts' parsers, torchrun's), so a flag that
does not exist or a value out of range fails here. Python blocks must compile, skip
directives must be well formed and give a reason, and relative links must point at
files that exist.

Slow part: each page's blocks that are not marked ``<!-- doc-test: skip (REASON) -->``
run in order with `bash -e` in one sandbox folder per page, on CPU at small sizes:

- placeholders: `train/` is 7 classes x 3 real photos, `val/` 7 x 1, `labels.zarr` a
  complete M=8, K=5 store of `train/` by EfficientNet-Lite0 (left out when the page
  itself writes `--out labels.zarr`), the weight files of `doc_blocks.WEIGHT_FILES` are
  seeded random timm models, and for a page that names `ILSVRC2012_devkit_t12` the
  `val/` folder is flat (ILSVRC2012 file names) beside a devkit whose ground truth puts
  each image back in its class; `configs/`, `examples/` and `bench/` are the
  repository's own;
- small sizes: the commands are the pages' own, and `fkd-dali` (or `python -m fkd_dali`,
  or `python examples/train_own_loop.py`) gets `SMALL[command]` appended; argparse keeps
  the last value of a flag, so these override the pages' full-size values (M=500 becomes
  8, training stops after 2 steps at 64 px on the CPU, ...).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.doc_blocks import (
    PAGES,
    REPO,
    Block,
    DocError,
    all_blocks,
    check_block,
    placeholder_weights,
    read_blocks,
    split_commands,
)

#: Flags appended to each fkd-dali command when the slow test runs it (the last value of a flag wins).
SMALL: dict[str, list[str]] = {
    "labels generate": ["-M", "8", "--batch-size", "64", "--crops-per-round", "8", "--images-per-chunk", "8",
                        "--slots-per-chunk", "4", "--input-size", "64", "--threads", "2", "--device", "cpu",
                        "--no-progress"],
    "labels repair": ["--batch-size", "64", "--crops-per-round", "8", "--threads", "2", "--device", "cpu",
                      "--no-progress"],
    "labels add-gt-prob": ["--batch-size", "64", "--crops-per-round", "8", "--threads", "2", "--device", "cpu",
                           "--no-progress"],
    "labels import-fkd": ["--images-per-chunk", "8", "--slots-per-chunk", "4"],
    "train": ["--epochs", "8", "--batch-size", "8", "--image-size", "64", "--max-steps", "2", "--threads", "2",
              "--device", "cpu", "--amp", "off", "--no-progress", "--log-interval", "1", "--val-batch-size", "8"],
    "eval": ["--batch-size", "8", "--threads", "2", "--device", "cpu"],
}
#: The same for scripts of the repository, by file name.
SMALL_SCRIPTS: dict[str, list[str]] = {
    "train_own_loop.py": ["--batch-size", "8", "--image-size", "64", "--device", "cpu", "--passes", "1",
                          "--out", "own_loop.pth"],
}

BASH = all_blocks("bash")
COMMANDS = [c for b in BASH for c in split_commands(b)]
RUN_PAGES = sorted({b.page for b in BASH if b.skip is None})


# -- fast: every command parses ------------------------------------------------------------
@pytest.mark.parametrize("block", BASH, ids=lambda b: b.id)
def test_commands_parse(block) -> None:
    """Each command of the block checks (flags exist, values in range, --config applied)."""
    results = check_block(block)
    assert results, f"{block.id}: a ```bash block without commands"


def test_skips_are_counted_and_explained() -> None:
    skipped = [b for b in BASH if b.skip is not None]
    run = [b for b in BASH if b.skip is None]
    assert run and skipped
    for b in skipped:
        assert len(b.skip) > 5, f"{b.id}: say why the block cannot run here"
    print(f"\n{len(BASH)} bash blocks ({sum(len(split_commands(b)) for b in BASH)} commands): "
          f"{len(run)} run by the slow test, {len(skipped)} skipped:")
    for b in skipped:
        print(f"  {b.id}: {b.skip}")


def test_python_blocks_compile() -> None:
    import ast

    for block in all_blocks("python"):
        try:
            ast.parse(block.text)
        except SyntaxError as e:
            pytest.fail(f"{block.id}: {e}")


_LINK = re.compile(r"\]\((?!https?:|#|mailto:)(?P<target>[^)#\s]+)(?:#[^)]*)?\)")


def test_relative_links_exist() -> None:
    for page in PAGES:
        for target in _LINK.findall(page.read_text()):
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)}: link to missing {target}"


def test_readme_links_every_docs_page() -> None:
    readme = (REPO / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, f"README.md does not link {page.name}"


def test_readme_stays_a_front_door() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


def test_checker_catches_what_it_should(tmp_path) -> None:
    """The checks are real: an unknown flag, a value out of range, a bad torchrun or script flag all fail."""
    def check(line: str) -> str:
        block = Block("x.md", 1, "bash", line + "\n", None)
        return "; ".join(note for _, note in check_block(block))

    assert check("fkd-dali train --data t --labels l.zarr --lr 0.1") == "parsed"
    for bad in ("fkd-dali train --data t --labels l.zarr --learning-rate 0.1",  # no such flag
                "fkd-dali train --data t --labels l.zarr --mix-prob 2",  # out of [0, 1]
                "fkd-dali train --labels l.zarr",  # --data missing
                "fkd-dali labels generate --data t --out s.zarr -M 0",
                "fkd-dali bench store --no-such-option",
                "torchrun --nproc-per-gpu 8 -m fkd_dali train --data t --labels l.zarr",
                "python examples/train_own_loop.py --data t --labels l --no-such-flag",
                "python -m pytest -m 'not fast'",
                "pip install -e .[tests]"):
        with pytest.raises(DocError):
            check(bad)
    # a --config written by a here-document in the same block is applied
    good = "cat > r.yaml <<'Y'\nlr: 0.2\nY\nfkd-dali train --config r.yaml --data t --labels l.zarr"
    assert "parsed with its --config" in check(good)
    with pytest.raises(DocError):
        check(good.replace("lr: 0.2", "lrr: 0.2"))
    # skip directives need a reason and a bash fence right below
    page = tmp_path / "p.md"
    page.write_text("<!-- doc-test: skip () -->\n```bash\nls\n```\n")
    with pytest.raises(DocError):
        read_blocks_at(page)
    page.write_text("<!-- doc-test: skip (why) -->\n\n```bash\nls\n```\n")
    with pytest.raises(DocError):
        read_blocks_at(page)


def read_blocks_at(path: Path):
    """`read_blocks` for a page outside the repository (its name relative to its own folder)."""
    import tests.docs.doc_blocks as db

    old = db.REPO
    db.REPO = path.parent
    try:
        return read_blocks(path)
    finally:
        db.REPO = old


# -- slow: the pages' commands run at small sizes ------------------------------------------
_SHIM = '''#!{exe}
import os, sys
EXE, SMALL, SCRIPTS = {exe!r}, {small!r}, {scripts!r}


def fkd(args):
    key = " ".join(args[:2]) if args[:1] == ["labels"] else " ".join(args[:1])
    extra = [] if ("--help" in args or "-h" in args) else SMALL.get(key, [])
    os.execv(EXE, [EXE, "-m", "fkd_dali", *args, *extra])


args = sys.argv[1:]
if os.path.basename(sys.argv[0]) == "fkd-dali":
    fkd(args)
if args[:2] == ["-m", "fkd_dali"]:
    fkd(args[2:])
if args and os.path.basename(args[0]) in SCRIPTS:
    os.execv(EXE, [EXE, *args, *SCRIPTS[os.path.basename(args[0])]])
os.execv(EXE, [EXE, *args])
'''


@pytest.fixture(scope="module")
def val_root(tmp_path_factory) -> Path:
    from fkd_dali.data.sample_data import build_photo_dataset

    return build_photo_dataset(tmp_path_factory.mktemp("docval") / "val", images_per_class=1, seed=1000,
                               odd_formats=False)


def _weights(path: Path, arch: str, classes: int) -> None:
    import timm
    import torch

    torch.manual_seed(0)
    torch.save(timm.create_model(arch, num_classes=classes).state_dict(), path)


def _flat_ilsvrc_val(val: Path, box: Path) -> dict[str, str]:
    """`box/val` flat as ILSVRC2012's archive, with a devkit whose ground truth restores the class folders.

    Returns {file name: class folder} as the reorganisation must leave it. ILSVRC2012 ids
    are given in reverse folder order, so a script that assumed sorted order would fail.
    """
    import numpy as np
    import scipy.io

    classes = sorted(p.name for p in val.iterdir() if p.is_dir())
    ids = {c: len(classes) - i for i, c in enumerate(classes)}
    flat = box / "val"
    flat.mkdir()
    expected, truth = {}, []
    for n, src in enumerate(sorted(val.glob("*/*")), start=1):
        name = f"ILSVRC2012_val_{n:08d}.JPEG"
        shutil.copy(src, flat / name)
        expected[name] = src.parent.name
        truth.append(str(ids[src.parent.name]))
    devkit = box / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    synsets = np.zeros((len(classes), 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for i, c in enumerate(classes):
        synsets[i, 0] = (ids[c], c, c)
    scipy.io.savemat(devkit / "meta.mat", {"synsets": synsets})
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(truth) + "\n")
    return expected


def _sandbox(page: str, box: Path, photo_root: Path, val_root: Path, store: Path) -> dict[str, str] | None:
    text = (REPO / page).read_text()
    runnable = "\n".join(b.text for b in read_blocks(REPO / page) if b.lang == "bash" and b.skip is None)
    shutil.copytree(photo_root, box / "train")
    expected_val = None
    if "ILSVRC2012_devkit_t12" in runnable:
        expected_val = _flat_ilsvrc_val(val_root, box)
    else:
        shutil.copytree(val_root, box / "val")
    if not re.search(r"--out\s+labels\.zarr\b", runnable):
        shutil.copytree(store, box / "labels.zarr")
    for name, (arch, classes) in placeholder_weights(text).items():
        _weights(box / name, arch, classes)
    for name in ("configs", "examples", "bench"):
        (box / name).symlink_to(REPO / name)
    bin_dir = box / ".bin"
    bin_dir.mkdir()
    shim = _SHIM.format(exe=sys.executable, small=SMALL, scripts=SMALL_SCRIPTS)
    for name in ("fkd-dali", "python", "python3"):
        (bin_dir / name).write_text(shim)
        (bin_dir / name).chmod(0o755)
    return expected_val


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("page", RUN_PAGES)
def test_page_commands_run(page, photo_root, small_store, val_root, tmp_path) -> None:
    box = tmp_path / "box"
    box.mkdir()
    expected_val = _sandbox(page, box, photo_root, val_root, small_store)
    env = {**os.environ, "PATH": f"{box / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "2"}
    for block in read_blocks(REPO / page):
        if block.lang != "bash" or block.skip is not None:
            continue
        r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=box, env=env,
                           capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, (f"{block.id} failed (exit {r.returncode}):\n{block.text}\n"
                                   f"--- stdout ---\n{r.stdout[-3000:]}\n--- stderr ---\n{r.stderr[-3000:]}")
    if expected_val is not None:
        got = {p.name: p.parent.name for p in (box / "val").glob("*/*")}
        assert got == expected_val, "the ILSVRC2012 validation one-liner put images in the wrong class folders"


def test_small_overrides_are_flags_that_exist() -> None:
    """SMALL only appends flags the commands have (else every slow run would fail for the wrong reason)."""
    base = {"labels generate": "labels generate --data t --out s.zarr",
            "labels repair": "labels repair s.zarr --data t",
            "labels add-gt-prob": "labels add-gt-prob s.zarr --data t",
            "labels import-fkd": "labels import-fkd d --data t --out s.zarr",
            "train": "train --data t --labels l.zarr",
            "eval": "eval --data v --checkpoint c.pth"}
    assert set(base) == set(SMALL)
    for key, extra in SMALL.items():
        check_block(Block("SMALL", 1, "bash", f"fkd-dali {base[key]} {' '.join(extra)}\n", None))
    for script, extra in SMALL_SCRIPTS.items():
        check_block(Block("SMALL", 1, "bash", f"python examples/{script} --data t --labels l {' '.join(extra)}\n",
                          None))

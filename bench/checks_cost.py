"""What the checks of issue 19 cost on the training path, at ImageNet's size (not a registered benchmark).

Training now (1) opens a store checking every array's metadata and reading two more
per-image arrays (`images/crc32c`, `images/mtime`), (2) lists the folder with `os.scandir`
(each real file once, its mtime from the stat it already made), and (3) checks each
file's crc32c the first time this process reads it. This script times each part where
it can be timed at full size, and extrapolates what cannot be built on a small machine:

- `make`: a synthetic store of N images (M=8, 8 slots per chunk: a pass reads the same
  313 chunk files per array as at M=500), once with file digests and once without, and a
  folder of F empty `.JPEG` files in C class folders (for the listing);
- `time`: open (`open_store` + `load_index`), the folder listing (`scan_folder`,
  extrapolated linearly to N files), the pass table (`bench.bench_store.time_pass_tables`,
  cold and warm), and, with this release's code, the crc32c of a ~110 KB file and the
  first read of a file through `ImageGuard` vs a plain `read_encoded`.

`time` uses only functions older releases have too, so the same command run with an
older checkout on `PYTHONPATH` gives the "before" figures:

    python -m bench.checks_cost make --out runs/checks
    python -m bench.checks_cost time --out runs/checks --label after
    PYTHONPATH=/path/to/old/checkout python -m bench.checks_cost time --out runs/checks --label before
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

IMAGENET_TRAIN_IMAGES = 1_281_167


def _best(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(min, median) seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def _wall_and_cpu(fn: Callable[[], object], repeats: int) -> dict:
    """Min and median wall seconds and process CPU seconds (all threads) of `repeats` calls.

    On a shared machine the CPU time is the steadier figure: other jobs stretch the wall
    time of a call, much less the CPU time it needs.
    """
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"wall_s_min": min(wall), "wall_s_median": statistics.median(wall), "cpu_s_min": min(cpu),
            "cpu_s_median": statistics.median(cpu)}


# -- make ------------------------------------------------------------------------------------------
def make_store(url: str, n: int, digests: bool) -> None:
    from fkd_dali.data.digest import FileDigests

    from .bench_store import _synthetic_index
    from .labels import write_synthetic_labels

    index = _synthetic_index(n, 0)
    if digests:
        rng = np.random.default_rng(1)
        index = type(index)(**{**index.__dict__, "digests": FileDigests(
            rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32),
            1_700_000_000_000_000_000 + rng.integers(0, 10 ** 15, n))})
    write_synthetic_labels(url, index, 8, 5, 0, progress=False)


def make_folder(root: Path, files: int, classes: int) -> None:
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(c, files, classes):
            (folder / f"img_{i:08d}.JPEG").touch()


# -- time ------------------------------------------------------------------------------------------
def time_open(url: str, repeats: int) -> dict:
    """`open_store` (every array's metadata checked) + `load_index` (the per-image arrays, digests included)."""
    from fkd_dali.store.opening import open_store

    return _wall_and_cpu(lambda: open_store(url).load_index(), repeats)


def time_pass_table(url: str, repeats: int, m: int = 4) -> dict:
    """Warm-cache pass tables of passes 0..repeats-1 (m=4), wall and CPU (the read and its fill-value check)."""
    from fkd_dali.crops.plan import make_pass_plan
    from fkd_dali.loaders.pass_table import read_pass_table
    from fkd_dali.store.opening import open_store

    store = open_store(url)
    sizes = np.asarray(store.group["images/size"][:])
    plans = [make_pass_plan(0, p, m, store.crops_per_image, store.n_images, 0, 1) for p in range(repeats)]
    read_pass_table(store, sizes, plans[0].slots, plans[0].images, 0)  # warm the page cache
    it = iter(range(10 ** 9))

    def one() -> None:
        p = next(it) % repeats
        read_pass_table(store, sizes, plans[p].slots, plans[p].images, p)

    return _wall_and_cpu(one, repeats)


def time_scan(root: Path, repeats: int, n_full: int) -> dict:
    """The folder listing of every training start (`scan_folder`), extrapolated linearly to `n_full` files."""
    from fkd_dali.data.index import scan_folder

    files = sum(1 for _ in root.rglob("*.JPEG"))
    out = _wall_and_cpu(lambda: scan_folder(root), repeats)
    return {"files": files, **out, "extrapolated": {k: v * n_full / files for k, v in out.items()},
            "extrapolation": f"linear: x {n_full} / {files}"}


def time_digest(repeats: int) -> dict | None:
    """crc32c of a ~110 KB file (ctypes path and google-crc32c fallback) and a first read through the guard."""
    try:
        from fkd_dali.data import digest
    except ImportError:
        return None  # an older release: nothing to time
    import google_crc32c

    data = np.random.default_rng(0).integers(0, 256, 110_000, dtype=np.uint8)
    loops = 20

    def per_call(fn: Callable[[], object]) -> float:  # many short rounds: the min finds the quiet moments
        low, _ = _best(lambda: [fn() for _ in range(loops)], 100 * repeats)
        return 1e6 * low / loops

    return {"file_bytes": data.nbytes, "ctypes_path": digest._EXTEND is not None,
            "crc32c_us": per_call(lambda: digest.crc32c(data)),
            "google_crc32c_copy_us": per_call(lambda: google_crc32c.value(data.tobytes())),
            **_first_read(repeats)}


def _first_read(repeats: int) -> dict:
    """us per file of the replay's file read, plain and through `ImageGuard` (first read: crc32c checked)."""
    import tempfile

    from fkd_dali.data.digest import FileDigests, file_crc32c
    from fkd_dali.data.index import DatasetIndex
    from fkd_dali.loaders.feed import read_encoded
    from fkd_dali.loaders.guard import ImageGuard

    n = 500
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(2)
        paths = []
        for i in range(n):
            p = Path(tmp) / "c" / f"{i}.JPEG"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(rng.integers(0, 256, 110_000, dtype=np.uint8).tobytes())
            paths.append(f"c/{i}.JPEG")
        crc = np.array([file_crc32c(str(Path(tmp) / p)) for p in paths], np.uint32)
        index = DatasetIndex(tmp, paths, np.zeros(n, np.int32), np.ones((n, 2), np.int32),
                             np.full(n, 110_000, np.int64), ["c"], digests=FileDigests(crc, np.zeros(n, np.int64)))
        full = [index.abspath(i) for i in range(n)]
        times: dict[str, list[float]] = {"read": [], "first": [], "later": []}
        for _ in range(max(5, 3 * repeats)):  # interleaved rounds: the three see the same machine load
            guard = ImageGuard(index, "s", verify=True)
            for kind in ("read", "first", "later"):
                t0 = time.perf_counter()
                if kind == "read":
                    for p in full:
                        read_encoded(p)
                else:  # "first" checks each crc32c, "later" finds each file checked already
                    for i, p in enumerate(full):
                        guard.admit(i, p, read_encoded)
                times[kind].append(time.perf_counter() - t0)
    return {"read_us": 1e6 * min(times["read"]) / n, "read_first_guarded_us": 1e6 * min(times["first"]) / n,
            "read_later_guarded_us": 1e6 * min(times["later"]) / n, "rounds": len(times["read"])}


def run_time(args: argparse.Namespace) -> dict:
    from .bench_store import time_pass_tables

    out = Path(args.out)
    doc: dict = {"label": args.label, "n_images": args.images, "load_average_start": os.getloadavg()}
    for kind in ("digests", "plain"):
        url = str(out / f"store-{kind}.zarr")
        doc[f"open_{kind}"] = time_open(url, args.repeats)
    doc["pass_table_warm"] = time_pass_table(str(out / "store-digests.zarr"), args.repeats)
    if args.cold:
        doc["pass_table"] = time_pass_tables(str(out / "store-digests.zarr"), 4, args.repeats, 0)
    doc["scan"] = time_scan(out / "folder", args.repeats, args.images)
    doc["digest"] = time_digest(args.repeats)
    doc["load_average_end"] = os.getloadavg()
    (out / f"checks-{args.label}.json").write_text(json.dumps(doc, indent=2))
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.checks_cost", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("make", "time"))
    p.add_argument("--out", default="runs/checks")
    p.add_argument("--images", type=int, default=IMAGENET_TRAIN_IMAGES)
    p.add_argument("--folder-files", type=int, default=100_000)
    p.add_argument("--folder-classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--label", default="after")
    p.add_argument("--cold", action="store_true", help="also bench store's cold/warm pass tables (evicts the cache)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.action == "make":
        for kind in ("digests", "plain"):
            url = out / f"store-{kind}.zarr"
            if not (url / "zarr.json").exists():
                make_store(str(url), args.images, kind == "digests")
        if not (out / "folder").exists():
            make_folder(out / "folder", args.folder_files, args.folder_classes)
        return 0
    print(json.dumps(run_time(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

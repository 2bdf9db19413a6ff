"""Timing harness: alternating rounds, warm-up, medians; CPU time and memory of the whole process tree.

A round builds every entry's loader in turn (order reversed on odd rounds, so no
loader always runs first or right after a heavy one), draws `warmup` batches, then
times `batches` batches, then closes it. Building and closing are not timed, and no
loader runs while another is measured (DataLoader workers exit with `close()`).

CPU time counts this process (all threads: DALI's included) and every descendant
(DataLoader workers): getrusage(SELF) + getrusage(CHILDREN) for this process and
reaped children, plus /proc/<pid>/stat for the descendants still alive. Memory: the
peak of the summed RSS of the process tree, sampled every 0.1 s in the timed window
(pages shared by forked workers count once per process), and the summed PSS at the
window's end where the kernel has smaps_rollup (shared pages split, so it adds up).
"""
from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

from .loaders import BenchLoader

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Entry:
    """One row of a benchmark: a label and how to build its loader."""

    label: str
    make: Callable[[], BenchLoader]
    meta: dict = field(default_factory=dict)  # copied into the row (loader name, m, group, ...)


@dataclass(frozen=True)
class RoundResult:
    """One timed window of one loader."""

    crops: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    end_pss_mb: float | None
    rss_before_mb: float

    @property
    def crops_per_s(self) -> float:
        return self.crops / self.seconds

    @property
    def cpu_s_per_1000(self) -> float:
        return 1000.0 * self.cpu_seconds / self.crops


def _proc_stat(pid: int) -> tuple[int, float, int] | None:
    """(parent pid, CPU seconds incl. reaped children, RSS bytes) from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    ticks = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return int(fields[1]), ticks / _CLK_TCK, int(fields[21]) * _PAGE


def _children(pid: int) -> list[int] | None:
    """Child pids from /proc/<pid>/task/*/children; None where the kernel lacks that file."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(v) for v in f.read().split()]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None
        except OSError:
            continue
    return out


def descendants(root: int | None = None) -> list[int]:
    """Live descendant pids of `root` (default: this process).

    Reads each process's children lists (cheap); falls back to scanning every
    /proc/<pid>/stat for parent pids on kernels without them.
    """
    root = os.getpid() if root is None else root
    out, todo = [], [root]
    while todo:
        kids = _children(todo.pop())
        if kids is None:
            return _descendants_by_scan(root)
        out += kids
        todo += kids
    return out


def _descendants_by_scan(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _proc_stat(int(name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and all its descendants."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    for pid in descendants():
        stat = _proc_stat(pid)
        total += stat[1] if stat else 0.0
    return total


def _pss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tree_rss() -> int:
    """Sum of RSS in bytes over this process and its descendants (cheap: one stat read each)."""
    return sum((_proc_stat(p) or (0, 0.0, 0))[2] for p in [os.getpid(), *descendants()])


def tree_pss() -> int | None:
    """Sum of PSS in bytes over the process tree, None without smaps_rollup.

    Costs tens of milliseconds for a process with torch and DALI mapped (the kernel
    walks its page tables), so it is read once per window, not sampled.
    """
    pss = [_pss_bytes(p) for p in [os.getpid(), *descendants()]]
    return None if any(v is None for v in pss) else sum(pss)  # type: ignore[misc]


class MemorySampler:
    """Background thread recording the peak RSS of the process tree, and its PSS at exit."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak_rss = 0
        self.end_pss: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.end_pss = tree_pss()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, tree_rss())


def _sync_cuda() -> None:
    """Wait for queued GPU copies/kernels, so a window ends when its batches really exist."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure(make: Callable[[], BenchLoader], warmup: int, batches: int,
            on_batch: Callable[[], None] = lambda: None) -> RoundResult:
    """Build a loader, draw `warmup` batches, time `batches` more, close it."""
    rss_before = tree_rss()
    loader = make()
    stream = loader.batches()
    try:
        for _ in range(warmup):
            next(stream)
            on_batch()
        crops = 0
        with MemorySampler() as memory:
            cpu0, t0 = tree_cpu_seconds(), time.perf_counter()
            for _ in range(batches):
                images, _targets = next(stream)
                crops += int(images.shape[0])
                on_batch()
            _sync_cuda()
            seconds, cpu = time.perf_counter() - t0, tree_cpu_seconds() - cpu0
    finally:
        stream.close()
        loader.close()
    mb = 1 / 2**20
    return RoundResult(crops, seconds, cpu, memory.peak_rss * mb,
                       None if memory.end_pss is None else memory.end_pss * mb, rss_before * mb)


def run_rounds(entries: Sequence[Entry], rounds: int, warmup: int, batches: int,
               progress: bool = True) -> dict[str, list[RoundResult]]:
    """Measure every entry once per round, alternating the order between rounds."""
    results: dict[str, list[RoundResult]] = {e.label: [] for e in entries}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=rounds * len(entries) * (warmup + batches), desc="bench", unit="batch")
    try:
        for r in range(rounds):
            order: Iterable[Entry] = entries if r % 2 == 0 else list(reversed(entries))
            for entry in order:
                if bar is not None:
                    bar.set_postfix_str(f"round {r + 1}/{rounds}: {entry.label}")
                tick = (lambda: bar.update(1)) if bar is not None else (lambda: None)
                results[entry.label].append(measure(entry.make, warmup, batches, tick))
    finally:
        if bar is not None:
            bar.close()
    return results


def summarize(entry: Entry, rounds: Sequence[RoundResult]) -> dict:
    """A report row: medians over rounds, the worst memory, and every round's figures."""
    speeds = [r.crops_per_s for r in rounds]
    cpu = [r.cpu_s_per_1000 for r in rounds]
    pss = [r.end_pss_mb for r in rounds if r.end_pss_mb is not None]
    return {
        "label": entry.label, **entry.meta,
        "crops_per_s": statistics.median(speeds),
        "crops_per_s_min": min(speeds), "crops_per_s_max": max(speeds),
        "cpu_s_per_1000_crops": statistics.median(cpu),
        "crops_per_cpu_s": 1000.0 / statistics.median(cpu) if statistics.median(cpu) > 0 else None,
        "peak_rss_mb": max(r.peak_rss_mb for r in rounds),
        "end_pss_mb": max(pss) if len(pss) == len(rounds) else None,
        "rounds": [{**asdict(r), "crops_per_s": r.crops_per_s, "cpu_s_per_1000_crops": r.cpu_s_per_1000}
                   for r in rounds],
    }


def ratios(subjects: Sequence[str], baselines: Sequence[str],
           results: dict[str, list[RoundResult]]) -> list[dict]:
    """Per (subject, baseline): median over rounds of the paired per-round ratios.

    `speed` = subject crops/s over baseline crops/s; `cpu_efficiency` = subject crops
    per CPU-second over baseline's (> 1: the subject needs less CPU per crop). Pairing
    by round cancels slow drifts of the machine (thermal, neighbours).
    """
    out = []
    for s in subjects:
        for b in baselines:
            pairs = list(zip(results[s], results[b]))
            out.append({
                "subject": s, "baseline": b,
                "speed": statistics.median(x.crops_per_s / y.crops_per_s for x, y in pairs),
                "cpu_efficiency": statistics.median(y.cpu_s_per_1000 / x.cpu_s_per_1000 for x, y in pairs
                                                    if x.cpu_seconds > 0) if any(
                    x.cpu_seconds > 0 for x, _ in pairs) else None,
            })
    return out


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (runnable processes, all users)."""
    return [round(v, 2) for v in os.getloadavg()]


def load_note(start: Sequence[float], end: Sequence[float]) -> str | None:
    """A warning for the JSON when other work shared the cores during the run, else None."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if start[0] <= 0.5 * cores and end[0] <= 1.5 * cores:  # the run itself keeps ~all cores busy
        return None
    return (f"the machine was shared: 1-minute load average {start[0]:.1f} at the start and {end[0]:.1f} at the "
            f"end on {cores} cores (this benchmark itself adds up to ~{cores}); absolute speeds are lower than on "
            "an idle machine, and CPU-seconds per crop (and ratios from the same rounds) are the robust figures")


def load_notes(load: dict) -> list[str]:
    """`load_note` of a result's {"start": ..., "end": ...} load averages, as a list to extend the notes with."""
    note = load_note(load["start"], load["end"])
    return [note] if note else []


def machine_description() -> dict:
    """CPU model, cores (logical, usable, cgroup quota), memory, load, GPUs and library versions."""
    import torch

    info: dict = {"platform": platform.platform(), "python": platform.python_version(),
                  "cpu_model": _cpu_model(), "logical_cores": os.cpu_count(),
                  "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                  "cgroup_cpu_quota": _cgroup_quota(), "memory_gb": _mem_total_gb(),
                  "torch_threads": torch.get_num_threads(), "load_average": load_average()}
    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    info["versions"] = library_versions()
    info["code"] = code_version()
    return info


def code_version() -> dict:
    """Which code made a result: the release, and in a git checkout the commit and whether the tree was dirty."""
    from fkd_dali.checkout import CHECKOUT
    from fkd_dali.version import __version__

    out: dict = {"release": __version__, "commit": None, "dirty": None}
    if CHECKOUT is None:
        return out
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CHECKOUT, capture_output=True, text=True,
                                timeout=30, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=CHECKOUT,
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return out  # not a git checkout (a copied tree), or no git
    return {**out, "commit": commit, "dirty": bool(status.strip())}


def library_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("fkd-dali", "torch", "torchvision", "timm", "nvidia-dali-cuda120", "nvidia-dali-cuda110",
                 "numpy", "pillow", "zarr", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        from PIL import features
        out["libjpeg_turbo"] = features.version("libjpeg_turbo")
    except Exception:  # optional detail; older Pillow lacks it
        pass
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cgroup_quota() -> float | None:
    """CPUs granted by a cgroup v2 quota (cpu.max), None when unlimited or unknown."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _mem_total_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            return round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None

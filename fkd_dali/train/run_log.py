"""What a training run writes besides checkpoints: `config.json`/`.yaml`, `metrics.jsonl`, `summary.csv`,
a progress bar, a readable line per pass, TensorBoard.

Only rank 0 writes; on other ranks a `RunLog` is a no-op. Every metrics line is one
JSON object with `kind` ("step", "pass", or "stop" for a run stopped before its end)
and `global_step`. A resumed run first drops the lines logged after its checkpoint
(they are logged again), so each step appears once. `summary.csv` has one row per
pass in timm's columns (epoch, train_loss, eval_top1, eval_top5, lr) plus images_per_s,
rewritten from the pass records after each pass, so a resumed run keeps one row per pass.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from fkd_dali.atomic import save_text_atomic

TB_KEYS = ("loss", "lr", "images_per_s", "agreement", "val_top1", "val_top5")  # what goes to TensorBoard
SUMMARY_COLUMNS = ("epoch", "train_loss", "eval_top1", "eval_top5", "lr", "images_per_s")  # timm's, + images_per_s


def _duration(seconds: float) -> str:
    """`3725` -> `1:02:05` (as timm and tqdm print times)."""
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def pass_line(record: dict[str, Any], passes: int, epochs: int, elapsed_s: float, eta_s: float | None) -> str:
    """The readable line of one pass (timm prints one per epoch): where, loss, validation, speed, time left."""
    parts = [f"pass {record['pass'] + 1}/{passes}", f"epoch {record.get('epoch', record['pass'] + 1):g}/{epochs}",
             f"loss {record['loss']:.4f}"]
    if record.get("agreement") is not None:
        parts.append(f"agree {100 * record['agreement']:.1f}%")
    parts.append(f"lr {record['lr']:.3g}")
    if record.get("val_top1") is not None:
        parts.append(f"val top-1 {record['val_top1']:.2f}% top-5 {record['val_top5']:.2f}%")
    if record.get("val_top1_ema") is not None:
        parts.append(f"EMA top-1 {record['val_top1_ema']:.2f}%")
    parts.append(f"{record['images_per_s']:,.1f} img/s")
    parts.append(f"elapsed {_duration(elapsed_s)}")
    if eta_s is not None:
        parts.append(f"ETA {_duration(eta_s)}")
    return "  ".join(parts)


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`summary.csv`'s rows from pass records: timm's columns (eval_* empty where not validated)."""
    rows = []
    for r in records:
        speed = r.get("images_per_s")
        rows.append({"epoch": r.get("epoch", r["pass"] + 1), "train_loss": r.get("loss"), "eval_top1": r.get("val_top1"),
                     "eval_top5": r.get("val_top5"), "lr": r.get("lr"),
                     "images_per_s": round(speed, 2) if speed is not None else None})
    return rows


def write_summary_csv(path: Path, records: list[dict[str, Any]]) -> None:
    """Write `summary.csv` atomically (a reader never sees half a file)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in summary_rows(records):
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    save_text_atomic(path, buf.getvalue())


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def summary_line(result: Any, epochs_per_pass: int) -> str:
    """The readable end-of-run line printed before the JSON summary (`result` is a `TrainResult`)."""
    loss = _finite_or_none(result.final_loss)
    head = (f"stopped early by signal {result.signal}" if result.interrupted else "trained")
    parts = [f"{head}: {result.passes} pass(es) = {result.passes * epochs_per_pass} epoch(s) done, "
             f"{result.steps:,} steps", f"loss {loss:.4f}" if loss is not None else "loss -"]
    if result.val:
        parts.append(f"val top-1 {result.val['top1']:.2f}% top-5 {result.val['top5']:.2f}%")
    if result.val_ema:
        parts.append(f"EMA top-1 {result.val_ema['top1']:.2f}%")
    parts.append(f"{result.images_per_s:,.1f} images/s")
    if result.checkpoint:
        parts.append(f"checkpoint {result.checkpoint}"
                     + (f" (continue with --resume {result.checkpoint})" if result.interrupted else ""))
    return ", ".join(parts)

def _drop_after(path: Path, global_step: int) -> None:
    """Remove the lines of `path` past `global_step` (and a torn last line), atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if int(record.get("global_step", 0)) <= global_step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep), encoding="utf-8")
    tmp.replace(path)


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_run_config(output: str | Path, config: dict[str, Any], resolved: dict[str, Any]) -> None:
    """Write `output/config.json` and `output/config.yaml`: the options as given and the values derived from them.

    Both hold `{"config": ..., "resolved": ...}`; `fkd-dali train --config output/config.yaml`
    reads the `config` part back, so a run can be repeated from its own record.
    """
    import yaml

    doc = json.loads(json.dumps({"config": config, "resolved": resolved}, default=str))
    out = Path(output)
    (out / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


class RunLog:
    """Rank 0's tqdm bar, `output/metrics.jsonl` and optional TensorBoard; no-ops elsewhere.

    Args:
        output: the run's output folder (exists).
        main: whether this is rank 0.
        total_steps, done_steps: the bar's length and start (steps done before a resume).
        append: continue an existing metrics file (resume) instead of starting a new one.
        progress: show the bar.
        tensorboard: also log to `output/tensorboard` (warns and skips without tensorboard).
    """

    def __init__(self, output: str | Path, main: bool, total_steps: int, done_steps: int = 0, append: bool = False,
                 progress: bool = True, tensorboard: bool = False) -> None:
        self.main = main
        self.bar = self.file = self.tb = None
        self.passes = []
        if not main:
            return
        from tqdm import tqdm

        out = Path(output)
        path = out / "metrics.jsonl"
        self.summary = out / "summary.csv"
        self.passes: list[dict[str, Any]] = []  # pass records, for summary.csv
        if append:
            _drop_after(path, done_steps)
            self.passes = [r for r in _records(path) if r.get("kind") == "pass"]
        self.file = open(path, "a" if append else "w", encoding="utf-8")
        self.bar = tqdm(total=total_steps, initial=done_steps, unit="step", dynamic_ncols=True,
                        disable=not progress, desc="train")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                import warnings

                warnings.warn("--tensorboard: tensorboard is not installed (pip install tensorboard); skipping")

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def write(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        self.file.write(json.dumps(record) + "\n")  # type: ignore[union-attr]
        self.file.flush()  # type: ignore[union-attr]
        if record["kind"] == "pass":
            self.passes.append(record)
            write_summary_csv(self.summary, self.passes)
        if self.bar is not None and record["kind"] == "step":
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                 img_s=f"{record['images_per_s']:.0f}")
        if self.tb is not None:
            for key in TB_KEYS:
                if record.get(key) is not None:
                    self.tb.add_scalar(f"{record['kind']}/{key}", record[key], record["global_step"])

    def note(self, text: str) -> None:
        """A line for the person watching the run: on stderr, above the progress bar (stdout keeps the summary)."""
        if not self.main:
            return
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        for h in (self.bar, self.file, self.tb):
            if h is not None:
                h.close()

"""What a training run writes besides checkpoints: `config.json`/`.yaml`, `metrics.jsonl`, a progress bar, TensorBoard.

Only rank 0 writes; on other ranks a `RunLog` is a no-op. Every metrics line is one
JSON object with `kind` ("step" or "pass") and `global_step`. A resumed run first drops
the lines logged after its checkpoint (they are logged again), so each step appears once.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TB_KEYS = ("loss", "lr", "images_per_s", "val_top1", "val_top5")  # what goes to TensorBoard

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
        if not main:
            return
        from tqdm import tqdm

        out = Path(output)
        path = out / "metrics.jsonl"
        if append:
            _drop_after(path, done_steps)
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

"""What a training run writes besides checkpoints: `config.json`, `metrics.jsonl`, a progress bar, TensorBoard.

Only rank 0 writes; on other ranks a `RunLog` is a no-op. Every metrics line is one
JSON object with `kind` ("step" or "pass") and `global_step`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fkd_dali.train.checkpoint import store_id

if TYPE_CHECKING:
    from fkd_dali.train.loop import TrainRun

TB_KEYS = ("loss", "lr", "images_per_s", "val_top1", "val_top5")  # what goes to TensorBoard


def write_run_config(run: TrainRun) -> None:
    """Rank 0 writes `output/config.json`: the options as given and the values derived from them."""
    if not run.env.is_main:
        return
    resolved = {"passes": run.passes, "steps_per_pass": run.steps_per_pass, "world": run.env.world,
                "crops_per_rank_step": run.cfg.batch_size // run.env.world, "num_classes": run.num_classes,
                "device": str(run.device), "amp_dtype": str(run.amp_dtype), "data_config": run.data_config,
                "store_fingerprint": store_id(run.store) if run.store else None, "start_pass": run.start_pass,
                "start_step": run.start_step}
    text = json.dumps({"config": dataclasses.asdict(run.cfg), "resolved": resolved}, indent=2, default=str)
    (Path(run.cfg.output) / "config.json").write_text(text)


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
        self.file = open(out / "metrics.jsonl", "a" if append else "w", encoding="utf-8")
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

    def close(self) -> None:
        for h in (self.bar, self.file, self.tb):
            if h is not None:
                h.close()

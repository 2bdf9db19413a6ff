"""Benchmark outputs: one JSON document and one PNG bar chart per run.

The JSON holds everything needed to judge a figure (machine, config, every round);
the chart shows the medians with min-max whiskers, fkd-dali rows in their own colour.
Matplotlib's Agg canvas is used directly, so no display or pyplot state is involved.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

GROUP_COLOURS = {"fkd-dali": "#2a7ab9", "ablation": "#8fbde0", "baseline": "#9a9a9a"}


def write_json(path: str | os.PathLike[str], doc: dict) -> Path:
    """Write `doc` (plus a UTC creation time) as indented JSON; NaN/inf become null."""
    doc = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **doc}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(doc), indent=1, allow_nan=False) + "\n")
    return out


def _finite(obj: object) -> object:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def bar_chart(path: str | os.PathLike[str], rows: Sequence[dict], title: str, subtitle: str = "") -> Path:
    """Two panels of horizontal bars: crops/s and crops per CPU-second, one bar per row.

    Args:
        path: the PNG to write.
        rows: report rows with `label`, `group`, `crops_per_s` (+ `_min`/`_max`) and
            `cpu_s_per_1000_crops`.
        title: first title line; `subtitle` (machine, settings) goes below it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [r["label"] for r in rows]
    colours = [GROUP_COLOURS.get(r.get("group", "baseline"), "#9a9a9a") for r in rows]
    speed = [r["crops_per_s"] for r in rows]
    err = [[s - r.get("crops_per_s_min", s) for s, r in zip(speed, rows)],
           [r.get("crops_per_s_max", s) - s for s, r in zip(speed, rows)]]
    per_cpu = [1000.0 / r["cpu_s_per_1000_crops"] if r.get("cpu_s_per_1000_crops") else 0.0 for r in rows]

    fig = Figure(figsize=(11, 1.2 + 0.45 * len(rows)), dpi=120)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(rows)))[::-1]
    for ax, values, name, whiskers in ((left, speed, "crops / s (median)", err),
                                       (right, per_cpu, "crops per CPU-second (median)", None)):
        ax.barh(ys, values, color=colours, xerr=whiskers, capsize=3 if whiskers else 0)
        ax.set_xlabel(name)
        ax.grid(axis="x", alpha=0.3)
        ends = [v + (whiskers[1][i] if whiskers else 0.0) for i, v in enumerate(values)]
        top = max(ends) if ends else 1.0
        for y, v, end in zip(ys, values, ends):
            ax.text(end + 0.015 * top, y, f"{v:,.0f}" if v >= 100 else f"{v:.1f}", va="center", fontsize=8)
        ax.set_xlim(0, 1.2 * top if top > 0 else 1)
    left.set_yticks(ys)
    left.set_yticklabels(labels)
    return _save(fig, path, title, subtitle)


def panels_chart(path: str | os.PathLike[str], panels: Sequence[dict], title: str, subtitle: str = "") -> Path:
    """Side-by-side panels of horizontal bars, one panel per figure of a benchmark.

    Args:
        path: the PNG to write.
        panels: each {"xlabel": str, "bars": [{"label", "value", "group"}], "target": float
            or None (a dashed line, e.g. the design's target), "target_label": str}; optional
            per bar "err" (an error bar, e.g. the std over seeds) and "points" (single
            measurements drawn as dots, e.g. one per seed); optional per panel "xlim"
            (lo, hi) to zoom on small differences. Values may be negative.
        title: first title line; `subtitle` (machine, settings) goes below it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = max(len(p["bars"]) for p in panels)
    fig = Figure(figsize=(5.5 * len(panels), 1.6 + 0.5 * height), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        _bar_panel(ax, panel)
    return _save(fig, path, title, subtitle)


def _bar_panel(ax, panel: dict) -> None:
    bars = panel["bars"]
    ys = list(range(len(bars)))[::-1]
    values = [b["value"] if b["value"] is not None else 0.0 for b in bars]
    errs = [b.get("err") or 0.0 for b in bars]
    ax.barh(ys, values, xerr=errs if any(errs) else None, capsize=3,
            color=[GROUP_COLOURS.get(b.get("group", "baseline"), "#9a9a9a") for b in bars])
    for y, b in zip(ys, bars):
        points = b.get("points") or []
        ax.plot(points, [y] * len(points), "o", color="black", markersize=3, zorder=3)
    ax.set_yticks(ys)
    ax.set_yticklabels([b["label"] for b in bars], fontsize=8)
    ax.set_xlabel(panel["xlabel"], fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    target = panel.get("target")
    reach = [v + e for v, e in zip(values, errs)] + [p for b in bars for p in b.get("points") or []]
    top = max(reach + [target or 0.0, 0.0])
    low = min([v - e for v, e in zip(values, errs)] + reach + [target or 0.0, 0.0])
    lo, hi = panel.get("xlim") or ((low - 0.25 * (top - low), 0) if low < 0 else (0, 0))
    if not panel.get("xlim"):
        hi = top + 0.25 * ((top - low) or 1.0)
    span = hi - lo
    for y, v, e in zip(ys, values, errs):
        x = v + e if v >= 0 else v - e
        ax.text(x + (0.015 if v >= 0 else -0.015) * span, y, _fmt(v), va="center", fontsize=8,
                ha="left" if v >= 0 else "right")
    if target is not None:
        ax.axvline(target, color="#c0392b", linestyle="--", linewidth=1)
        ax.text(target, ys[0] + 0.45, " " + panel.get("target_label", "target"), color="#c0392b", fontsize=7,
                va="bottom")
    ax.set_xlim(lo, hi)


def _save(fig, path: str | os.PathLike[str], title: str, subtitle: str) -> Path:
    fig.suptitle(title + ("\n" + subtitle if subtitle else ""), fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def ratio_chart(path: str | os.PathLike[str], subject: tuple[str, float], baseline: tuple[str, float],
                xlabel: str, ratio: float, ratio_xlabel: str, target: float, title: str, subtitle: str) -> Path:
    """Two panels: subject vs baseline (e.g. label generation vs teacher only), and their ratio vs a target."""
    return panels_chart(path, [
        {"xlabel": xlabel, "bars": [{"label": subject[0], "value": subject[1], "group": "fkd-dali"},
                                    {"label": baseline[0], "value": baseline[1]}]},
        {"xlabel": ratio_xlabel, "target": target, "target_label": f"target {target:.0%}",
         "bars": [{"label": "ratio", "value": ratio, "group": "fkd-dali"}]}], title, subtitle)


def _fmt(v: float) -> str:
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def stacked_chart(path: str | os.PathLike[str], bars: Sequence[tuple[str, Sequence[tuple[str, float]]]],
                  xlabel: str, title: str, subtitle: str = "") -> Path:
    """Horizontal stacked bars: one bar per row, one coloured segment per named part.

    Args:
        bars: (row label, [(part name, value), ...]); parts with the same name share a colour.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names: list[str] = []
    for _, parts in bars:
        names += [n for n, _ in parts if n not in names]
    palette = colormaps["tab10"]
    colour = {n: palette(i % 10) for i, n in enumerate(names)}
    fig = Figure(figsize=(13, 1.8 + 0.6 * len(bars)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ys = list(range(len(bars)))[::-1]
    top = 0.0
    for y, (_, parts) in zip(ys, bars):
        left = 0.0
        for name, value in parts:
            ax.barh(y, value, left=left, color=colour[name], edgecolor="white", linewidth=0.5)
            left += value
        ax.text(left * 1.01, y, _fmt(left), va="center", fontsize=8)
        top = max(top, left)
    ax.set_yticks(ys)
    ax.set_yticklabels([label for label, _ in bars], fontsize=9)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_xlim(0, 1.15 * top if top > 0 else 1)
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=colour[n], label=n) for n in names], fontsize=7, loc="center left",
              bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _save(fig, path, title, subtitle)


def run_cli(argv: Sequence[str] | None, name: str, parse_args: Callable[[Sequence[str] | None], Any],
            run: Callable[[Any], dict], summarize: Callable[[Any, dict], dict]) -> int:
    """The `main` of every benchmark: parse, run, print a one-line JSON summary (errors: `json_main`)."""

    def work() -> dict:
        cfg = parse_args(argv)
        doc = run(cfg)
        out = Path(cfg.out)
        return {"json": str(out / f"{name}.json"), "png": str(out / f"{name}.png"), **summarize(cfg, doc)}

    return json_main(work)


def json_main(work: Callable[[], dict]) -> int:
    """Run `work` and print what it returns as one JSON line, status 0; a user error (`FkdError`)
    prints its message instead and returns 2, as the CLI does."""
    from fkd_dali.errors import FkdError

    try:
        doc = work()
    except FkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(doc))
    return 0

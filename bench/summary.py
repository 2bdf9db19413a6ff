"""`fkd-dali bench summary [DIR]`: Markdown tables of the JSON results in DIR (what docs/benchmarks.md shows).

Also `python -m bench summary DIR`. Without DIR it reads the CPU results committed beside
this file (`bench/results/cpu`), so it works from any folder. Reads whichever of loaders.json,
store.json, labelgen.json, train.json, stages.json, feed.json, fidelity.json,
fidelity-scenes.json and accuracy.json exist and prints one Markdown section per benchmark,
every figure taken from the JSON.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence


def _f(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def _load(doc: dict) -> str:
    la = doc.get("load_average", {})
    return f"load average (1/5/15 min) {la.get('start')} at start, {la.get('end')} at end"


def loaders_markdown(doc: dict) -> str:
    rows, ratios = doc["rows"], doc["ratios"]
    # one column per baseline loader; a multi-crop baseline is compared at the row's own m
    columns: list[str] = []
    for r in rows:
        if r["group"] == "baseline" and r["loader"] not in columns:
            columns.append(r["loader"])
    multi = {r["loader"] for r in rows if r["group"] == "baseline" and r["label"] != r["loader"]}
    head = ("| loader | crops/s | CPU-s / 1000 crops | crops per CPU-s | peak RSS / end PSS (MB) | "
            + " | ".join(f"vs {c}{' (same m)' if c in multi else ''}: CPU, speed" for c in columns) + " |")
    lines = [head, "|" + "---|" * (5 + len(columns))]
    for r in rows:
        cells = []
        for c in columns:
            b = f"{c} m={r['m']}" if c in multi else c
            x = next((q for q in ratios if q["subject"] == r["label"] and q["baseline"] == b), None)
            cells.append(f"{x['cpu_efficiency']:.2f}x, {x['speed']:.2f}x" if x else "")
        name = f"**{r['label']}**" if r["group"] == "fkd-dali" else r["label"]
        lines.append(f"| {name} | {_f(r['crops_per_s'])} | {_f(r['cpu_s_per_1000_crops'], 2)} | "
                     f"{_f(r['crops_per_cpu_s'])} | {_f(r['peak_rss_mb'], 0)} / {_f(r.get('end_pss_mb'), 0)} | "
                     + " | ".join(cells) + " |")
    out = ["\n".join(lines), ""]
    if doc.get("label_overhead"):
        out.append("Label overhead (fkd-dali with vs. without gathering + recovering labels, paired per round): "
                   + "; ".join(f"m={o['m']}: {o['time_overhead']:+.1%} time, "
                               f"{o['cpu_overhead']:+.1%} CPU per crop" for o in doc["label_overhead"]) + ".")
        out.append("")
    for t in doc.get("targets", []):
        out.append(f"- Target {t['target']}: **{t['value']:.2f}x — {'met' if t['met'] else 'missed'}**")
    c, d = doc["config"], doc["dataset"]
    out.append("")
    out.append(f"Settings: {d['n_images']} JPEGs (~{d['mean_kb']:.0f} KB, ~{d['mean_width']:.0f}x"
               f"{d['mean_height']:.0f}), batch {c['batch_size']} crops, {c['workers']} workers/threads, "
               f"{c['rounds']} alternating rounds of {c['batches']} timed batches after {c['warmup_batches']} "
               f"warm-up, device {c['device']}; {_load(doc)}.")
    return "\n".join(out)


def _verdict(met: bool, judged: bool = True) -> str:
    """'met' / 'missed', or 'not judged' for a run too small to tell (`bench store` says why in its notes)."""
    if not judged:
        return "not judged (run too small; see the notes)"
    return "met" if met else "missed"


def store_markdown(doc: dict) -> str:
    s = doc["sizes"]
    big_key = next(k for k in s if k.startswith("at_M"))
    big = s[big_key]
    m500 = "M=" + big_key[4:]
    lines = [f"| format | bytes/image at M={s['M']}, K={s['K']} (measured) | bytes/image at {m500}, K={s['K']} |",
             "|---|---|---|",
             f"| **fkd-dali store** | {_f(s['store']['bytes_per_image'], 0)} | "
             f"{_f(big['store_bytes_per_image'], 0)} ({'measured' if big['store_method'] == 'measured' else 'extrapolated'}) |",
             f"| FKD files | {_f(s['fkd_files']['bytes_per_image'], 0)} | {_f(big['fkd_file_bytes_per_image'], 0)} |",
             f"| ReLabel maps (15x15, independent of M) | {_f(s['relabel_maps']['bytes_per_image'], 0)} | "
             f"{_f(big['relabel_bytes_per_image'], 0)} |"]
    out = ["\n".join(lines), "", f"Store at {m500}: {big['store_method']}. Target <= 10 KB per image: "
           f"**{_verdict(big['store_target_met'], big.get('store_target_judged', True))}**."]
    pt = doc.get("pass_table")
    if pt:
        t, e = pt["timing"], pt["extrapolated_read_pass_table_s"]
        out.append("")
        out.append(f"Pass table (m={pt['m']}) of a synthetic store of {pt['n_images']:,} images x M="
                   f"{pt['crops_per_image']} x K={pt['K']} ({_f(pt['store']['bytes_per_image'], 0)} bytes/image): "
                   f"`read_pass_table` {t['cold']['read_pass_table_median_s']:.3f} s with a cold page cache, "
                   f"{t['warm']['read_pass_table_median_s']:.3f} s warm (median of {len(t['cold']['read_pass_table_s'])} "
                   f"passes); {pt['extrapolation']}: **{e['cold']:.2f} s cold, {e['warm']:.2f} s warm** for "
                   f"{pt['full_scale_images']:,} images (target <= {pt['target_s']:g} s: "
                   f"**{_verdict(pt['target_met']['cold'], pt.get('target_judged', True))}**).")
    out.append("")
    out.append(f"{_load(doc)}.")
    return "\n".join(out)


def labelgen_markdown(doc: dict) -> str:
    r, c = doc["result"], doc["config"]
    return (f"| label generation crops/s | teacher-only crops/s | ratio | target |\n|---|---|---|---|\n"
            f"| {_f(r['labelgen_crops_per_s'])} | {_f(r['teacher_only_crops_per_s'])} | **{r['ratio']:.2f}** "
            f"(per round {', '.join(f'{x:.2f}' for x in r['ratio_per_round'])}) | >= {r['target_ratio']:.0%}: "
            f"**{'met' if r['target_met'] else 'missed'}** |\n\n"
            f"CPU per 1000 crops: teacher only {r['teacher_only_cpu_s_per_1000_crops']:.1f} s, label generation "
            f"{r['labelgen_call_cpu_s_per_1000_crops']:.1f} s (whole call). Teacher {c['teacher']}, batch "
            f"{c['batch_size']} crops, M={c['crops_per_image']}, {doc['dataset']['n_images']} images, device "
            f"{c['device']}; {_load(doc)}.")


def train_markdown(doc: dict) -> str:
    r, c = doc["result"], doc["config"]
    return (f"| real data crops/s (images/s) | synthetic crops/s (images/s) | ratio | target |\n|---|---|---|---|\n"
            f"| {_f(r['real_crops_per_s'])} ({_f(r['real_images_per_s'])}) | {_f(r['synthetic_crops_per_s'])} "
            f"({_f(r['synthetic_images_per_s'])}) | **{r['ratio']:.2f}** (per round "
            f"{', '.join(f'{x:.2f}' for x in r['ratio_per_round'])}) | >= {r['target_ratio']:.0%}: "
            f"**{'met' if r['target_met'] else 'missed'}** |\n\n"
            + _online_markdown(r, c) +
            f"{c['arch']} at {c['image_size']} px, batch {c['batch_size']} crops (m={c['num_crops']}), {c['steps']} "
            f"steps per run, {c['rounds']} rounds, device {c['device']}; {_load(doc)}.")


def _online_markdown(r: dict, c: dict) -> str:
    """The FKD vs online-KD table of `bench train` (absent from results made without online runs)."""
    if "fkd_over_online" not in r:
        return ""
    per_round = ", ".join(f"{x:.2f}" for x in r["fkd_over_online_per_round"])
    cpu_rounds = ", ".join(f"{x:.2f}" for x in r["fkd_over_online_cpu_per_round"])
    return (f"| | FKD replay | online KD (teacher {c['teacher']} in the loop) | FKD speed-up | paper |\n"
            f"|---|---|---|---|---|\n"
            f"| images/s | {_f(r['real_images_per_s'])} | {_f(r['online_images_per_s'])} | "
            f"**{r['fkd_over_online']:.2f}x** (per round {per_round}) | 3-5x |\n"
            f"| CPU-s per 1000 images | {_f(r['real_cpu_s_per_1000_crops'] * c['num_crops'])} | "
            f"{_f(r['online_cpu_s_per_1000_crops'] * c['num_crops'])} | **{r['fkd_over_online_cpu']:.2f}x** "
            f"(per round {cpu_rounds}) | |\n\n")


def stages_markdown(doc: dict) -> str:
    parts = doc["breakdown"]
    names: list[str] = []
    for p in parts.values():
        names += [b["stage"] for b in p if b["stage"] not in names]
    lines = ["| loader | " + " | ".join(names) + " | total |", "|" + "---|" * (len(names) + 2)]
    for k, p in parts.items():
        by = {b["stage"]: b["cpu_ms_per_crop"] for b in p}
        lines.append(f"| {k} | " + " | ".join(_f(by.get(n), 2) if n in by else "" for n in names)
                     + f" | {_f(sum(by.values()), 2)} |")
    return "\n".join(lines) + f"\n\nCPU-milliseconds per crop, one thread; {_load(doc)}."


def feed_markdown(doc: dict) -> str:
    lines = ["| path | threads | images/s | CPU-us per image | images per CPU-s | host cores per GPU at 5,000 images/s |",
             "|---|---|---|---|---|---|"]
    for h in doc["headline"]:
        lines.append(f"| {h['path']} | {h['threads']} | {_f(h['images_per_s'], 0)} | {_f(h['cpu_us_per_image'])} | "
                     f"**{_f(h['images_per_cpu_s'], 0)}** | {_f(h['cores_per_gpu'], 2)} |")
    stages = " | ".join(p["stage"] for p in doc["breakdown"])
    values = " | ".join(_f(p["cpu_us_per_image"]) for p in doc["breakdown"])
    t, d, c = doc["target"], doc["dataset"], doc["config"]
    return "\n".join(lines) + (
        f"\n\n| {stages} |\n|" + "---|" * len(doc["breakdown"]) + f"\n| {values} |\n\n"
        f"CPU-microseconds per image by stage (one thread; differences of cumulative medians). Target "
        f"{t['target']}: **{_f(t['value'], 0)} — {'met' if t['met'] else 'missed'}**. {d['n_images']:,} files "
        f"(~{d['mean_kb']:.0f} KB; hard links to {d['distinct_files']} real JPEGs), store M={d['crops_per_image']}, "
        f"m={c['m']}, batch {c['batch_size']} crops, {c['rounds']} alternating rounds of {c['timed_steps']} steps; "
        f"{_load(doc)}.")


def fidelity_markdown(doc: dict) -> str:
    conf = doc["confident_crops"]
    lines = ["| label | KL(oracle‖label) | KL(label‖oracle) | top-1 agreement | top-5 overlap | confident crops: "
             "KL / top-1 / top-5 | flipped crops: KL / top-1 |", "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        a, f, k = r["all"], r["flipped"], r["confident"]
        lines.append(f"| {r['label']} | {a['kl']:.3f} | {a['kl_reverse']:.3f} | {a['top1_agreement']:.1f}% | "
                     f"{a['top5_overlap']:.1f}% | {k['kl']:.3f} / {k['top1_agreement']:.1f}% / "
                     f"{k['top5_overlap']:.1f}% | {f['kl']:.3f} / {f['top1_agreement']:.1f}% |")
    d, t = doc["dataset"], doc["teacher"]
    images = (f"{d['n_images']} scenes" if doc.get("setting") == "scenes" else f"{d['n_images']} photos"
              + (f" cut from {d['source_photos']} source photos" if d.get("source_photos") else ""))
    return ("\n".join(lines) + f"\n\n{doc['crops']} crops ({doc['flipped_crops']} flipped) of {images}, teacher "
            f"{t['name']} at {t['input_size']} px (its top-1 probability on the crops: mean "
            f"{doc['oracle_top1_prob']:.2f}, median {doc['oracle_top1_prob_median']:.2f}); confident crops (top-1 "
            f"probability >= {conf['threshold']:g}): {conf['crops']} ({100 * conf['share']:.1f}%); the stored "
            f"top-{doc['config']['top_k']} holds {100 * doc['stored_top_k_mass']:.1f}% of the teacher's probability "
            f"on average; {_load(doc)}.")


def accuracy_markdown(doc: dict) -> str:
    lines = ["| row | test top-1 (mean ± std) | minus (a), paired by seed | top-5 | CPU-s / wall-s per student | "
             "teacher forwards: once / per student | label names a visible object | background-only crops |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"].values():
        diff = "–" if r["minus_hard_mean"] is None or r["title"].startswith("(a)") else (
            f"{r['minus_hard_mean']:+.2f} ({', '.join(f'{d:+.1f}' for d in r['minus_hard'])})")
        f = r["teacher_forwards"]
        lines.append(f"| {r['title']} | {r['top1_mean']:.2f} ± {r['top1_std']:.2f} | {diff} | {r['top5_mean']:.2f} | "
                     f"{r['cpu_s_mean']:.0f} / {r['wall_s_mean']:.0f} | {f['once']:,} / {f['per_student']:,} | "
                     f"{100 * r['label_names_visible_object']:.1f}% | {100 * r['background_only_crops']:.1f}% |")
    c, t = doc["config"], doc["teacher"]
    s = c["scenes"]
    return ("\n".join(lines) + f"\n\nStudents {c['arch']} on {s['train']:,} train images of {s['classes']} classes, "
            f"{c['epochs']} crops per image, {len(c['seeds'])} seeds; test {s['test']:,} images. Teacher "
            f"{t['recipe']['arch']} at {t['recipe']['image_size'] or s['size']} px: {t['test_top1']:.2f}% on the test "
            f"images; {_load(doc)}.")


SECTIONS = (("loaders", loaders_markdown), ("store", store_markdown), ("labelgen", labelgen_markdown),
            ("train", train_markdown), ("stages", stages_markdown), ("feed", feed_markdown),
            ("fidelity", fidelity_markdown), ("fidelity-scenes", fidelity_markdown),
            ("accuracy", accuracy_markdown))


def summarize_dir(results: str | Path) -> str:
    out = []
    for name, fn in SECTIONS:
        path = Path(results) / f"{name}.json"
        if path.is_file():
            out.append(f"#### {name}\n\n" + fn(json.loads(path.read_text())))
    return "\n\n".join(out)


#: The committed CPU results, found relative to this file (not to the current folder).
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "cpu"


def parse_args(argv: Sequence[str] | None) -> Path:
    """The results folder to summarise (not checked yet: `check_results_dir`)."""
    import argparse

    p = argparse.ArgumentParser(prog="fkd-dali bench summary",
                                description="Print Markdown tables of the benchmark JSON documents in DIR.")
    p.add_argument("dir", nargs="?", default=str(DEFAULT_RESULTS), metavar="DIR",
                   help="folder holding loaders.json, store.json, ... (default: the committed CPU results)")
    return Path(p.parse_args(argv).dir)


def check_results_dir(folder: Path) -> Path:
    """`folder` if it holds at least one result; a missing folder or one without results is a user error."""
    from fkd_dali.errors import ConfigError

    if not folder.is_dir():
        raise ConfigError(f"bench summary: {folder} is not a folder; give the --out folder of a benchmark run")
    names = [f"{name}.json" for name, _ in SECTIONS]
    if not any((folder / n).is_file() for n in names):
        raise ConfigError(f"bench summary: {folder} holds none of {', '.join(names)}; give the --out folder of "
                          "a benchmark run")
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `fkd-dali bench summary`; user errors print one line and return 2."""
    from fkd_dali.errors import FkdError

    try:
        folder = check_results_dir(parse_args(list(sys.argv[1:] if argv is None else argv)))
    except FkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summarize_dir(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

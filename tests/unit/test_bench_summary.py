"""`fkd-dali bench summary [DIR]`: the benchmark tables from any folder, not only the repository root."""
from __future__ import annotations

from fkd_dali.cli import main


def test_summary_of_the_committed_results_works_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "summary"]) == 0
    out = capsys.readouterr().out
    assert "#### loaders" in out and "#### store" in out


def test_summary_of_a_given_folder(tmp_path, capsys):
    import importlib

    from fkd_dali.cli.bench import bench_package

    results = importlib.import_module(".summary", bench_package().__name__).DEFAULT_RESULTS
    (tmp_path / "store.json").write_text((results / "store.json").read_text())
    assert main(["bench", "summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "#### store" in out and "#### loaders" not in out


def test_summary_of_a_folder_without_results_is_one_line(tmp_path, capsys):
    for folder in (tmp_path / "missing", tmp_path):
        assert main(["bench", "summary", str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(folder) in err and "--out folder" in err


def test_store_targets_of_tiny_runs_are_not_judged():
    from bench.bench_store import StoreBenchConfig, pass_table_too_small, sizes_too_small

    default = StoreBenchConfig()
    assert sizes_too_small(default) is None and pass_table_too_small(default) is None
    tiny = StoreBenchConfig(corpus_images=4, crops_per_image=4, synthetic_images=2000)
    assert "too small to judge" in sizes_too_small(tiny) and "-M >= 16" in sizes_too_small(tiny)
    assert "x641" in pass_table_too_small(tiny) and "--synthetic-images" in pass_table_too_small(tiny)
    assert pass_table_too_small(StoreBenchConfig(synthetic_images=0)) is None  # no pass table, nothing to judge


def test_summary_says_not_judged_instead_of_missed():
    import json

    from bench.summary import DEFAULT_RESULTS, store_markdown

    doc = json.loads((DEFAULT_RESULTS / "store.json").read_text())
    assert "not judged" not in store_markdown(doc)  # committed results predate the flag: judged
    doc["sizes"]["at_M500"].update(store_target_met=False, store_target_judged=False)
    assert "Target <= 10 KB per image: **not judged (run too small" in store_markdown(doc)

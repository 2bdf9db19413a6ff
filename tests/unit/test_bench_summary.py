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

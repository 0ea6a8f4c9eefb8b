"""benchmarks/run_all.py: figures from different runs keep when and on how fast a machine each
was measured, and the table says so (absolute times compare only through that)."""

from __future__ import annotations

import json

import pytest

from benchmarks import run_all
from benchmarks.harness import Figure


def _fig(key: str, value: float) -> dict:
    return Figure(key, value, (value, value), f"what {key}", target="<= 900", unit="s",
                  met=value <= 900).to_json()


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "ROOT", tmp_path)
    monkeypatch.setattr(run_all, "RESULTS", tmp_path / "results.json")
    monkeypatch.setattr(run_all, "TABLE", tmp_path / "RESULTS.md")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{run_all.BEGIN}\nold table\n{run_all.END}\nrest\n")
    monkeypatch.setattr(run_all, "README", readme)
    (tmp_path / "results.json").write_text(json.dumps(
        {"details": {"old_s": _fig("old_s", 1640.3)}}))
    return tmp_path


def test_a_rerun_stamps_its_figures_and_keeps_the_others_unstamped(files, monkeypatch):
    monkeypatch.setattr(run_all, "run_one", lambda name: {"new_s": _fig("new_s", 783.0)})
    monkeypatch.setattr(run_all, "reference_seconds", lambda: 0.25)
    monkeypatch.setattr(run_all, "git_rev", lambda: "abc1234")
    assert run_all.main(["e2e"]) == 0

    details = json.loads((files / "results.json").read_text())["details"]
    assert details["new_s"]["measured"]["ref_s"] == 0.25
    assert details["new_s"]["measured"]["git"] == "abc1234"
    assert "measured" not in details["old_s"]
    table = (files / "RESULTS.md").read_text()
    new_row = next(ln for ln in table.splitlines() if "`new_s`" in ln)
    old_row = next(ln for ln in table.splitlines() if "`old_s`" in ln)
    assert new_row.endswith("abc1234, 0.25 |")
    assert "not recorded" in old_row
    readme = (files / "README.md").read_text()
    assert "old table" not in readme and "`new_s`" in readme and readme.endswith("rest\n")


def test_a_failed_benchmark_stamps_nothing_and_fails_the_run(files, monkeypatch):
    def boom(name):
        raise RuntimeError("bench_e2e failed")

    monkeypatch.setattr(run_all, "run_one", boom)
    monkeypatch.setattr(run_all, "reference_seconds", lambda: 0.25)
    assert run_all.main(["e2e"]) == 1
    details = json.loads((files / "results.json").read_text())["details"]
    assert list(details) == ["old_s"] and "measured" not in details["old_s"]


def test_e2e_reads_each_stages_seconds_from_the_retrain_log():
    from benchmarks.bench_e2e import stage_seconds

    log = ("20:13:49.1 | INFO | Flow run 'x' - stage health done in 3.1 s\n"
           "noise: stage train ... \n"
           "20:16:01.0 | INFO | Flow run 'x' - stage train reused in 1.2 s\n"
           "20:23:40.3 | INFO | Flow run 'x' - stage distill_export done in 442.2 s\n")
    assert stage_seconds(log) == {"health": 3.1, "train": 1.2, "distill_export": 442.2}

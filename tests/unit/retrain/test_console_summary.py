"""The retrain's console summary in a narrow terminal: every MLflow run URL comes out whole on
one line (a URL folded inside a table cell is not clickable), and stage details print as text,
not as rich markup."""

from __future__ import annotations

import io

from rich.console import Console

from components.retrain import summary


class _Report:
    def __init__(self, stages):
        self.stages = stages

    @property
    def reused(self):
        return [n for n, s in self.stages.items() if s["reused"]]


def test_run_urls_stay_whole_and_details_stay_text(monkeypatch):
    url = "http://127.0.0.1:5055/#/experiments/2/runs/1dd7df4a0a634cb59f8e1b992ae3aee1"
    monkeypatch.setattr(summary, "run_link", lambda rid: url if rid else "")
    stages = {
        "train": {"seconds": 120.3, "reused": False, "status": "done", "run_id": "x"},
        "release": {"seconds": 14.3, "reused": False, "status": "complete",
                    "note": "[bold]kept"},
    }
    buf = io.StringIO()
    console = Console(file=buf, width=80, color_system=None)
    summary.console_summary(console, {"report": _Report(stages), "end": {
        "state": "Completed", "message": "released"}}, 635.0, "http://127.0.0.1:4205")
    text = buf.getvalue()
    assert any(line.strip() == f"train           {url}" for line in text.splitlines()), text
    assert "run 1dd7df4a" in text  # the short form inside the table
    assert "[bold]kept" in text  # printed as written, not taken as a style

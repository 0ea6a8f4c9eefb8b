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


def _train(final_video: float) -> dict:
    return {"stages": {
        "video": {"initial_val": 0.0385, "final_val": final_video, "steps": 200,
                  "metrics": {"val/baseline/video_fm_copy_obs": 0.0385}},
        "action": {"initial_val": 1.687, "final_val": 1.488, "steps": 200,
                   "metrics": {"val/baseline/action_fm_mean_var": 1.533}},
        "end_to_end": {"initial_val": None, "final_val": 0.9, "steps": 50, "metrics": {}}}}


def test_each_stage_is_read_against_its_trivial_baseline():
    buf = io.StringIO()
    console = Console(file=buf, width=200, color_system=None)
    summary.console_summary(console, {"report": _Report({}), "train": _train(0.0384),
                                      "end": {"state": "Completed", "message": "released"}},
                            635.0, "http://127.0.0.1:4205")
    lines = {ln.split()[1]: ln for ln in buf.getvalue().splitlines()
             if ln.startswith("  train ")}
    assert "copy-the-observation 0.0385, +0.3%: nothing learned beyond it yet" in lines["video"]
    assert "0.0385 -> 0.0384 (200 steps" in lines["video"]
    assert "mean/variance predictor 1.5330, 2.9% below it" in lines["action"]
    assert "resumed -> 0.9000 (50 steps)" in lines["end_to_end"]  # a mixture: no one baseline
    md = summary.markdown_summary({"report": _Report({}), "train": _train(0.0301),
                                   "end": {"state": "Completed", "message": "released"}})
    assert "- `video`: validation loss 0.0385 -> 0.0301 (200 steps; copy-the-observation " \
           "0.0385, 21.8% below it)" in md

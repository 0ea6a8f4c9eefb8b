"""Wilson intervals against published values, aggregation, and the report files."""

from __future__ import annotations

import base64
import json
import re

import pytest

from wallwm.eval.episode import EpisodeResult
from wallwm.eval.metrics import ALL, lookup, mean_interval, summarize, wilson
from wallwm.eval.report import table, write_report

# Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of
# seven methods", Statistics in Medicine 17:857-872, Table II, method 3 (score, no correction)
NEWCOMBE = [((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)),
            ((0, 20), (0.0, 0.1611)), ((1, 29), (0.0061, 0.1718))]


@pytest.mark.parametrize(("kn", "ref"), NEWCOMBE)
def test_wilson_matches_newcombe(kn, ref):
    lo, hi = wilson(*kn)
    assert lo == pytest.approx(ref[0], abs=5e-5) and hi == pytest.approx(ref[1], abs=5e-5)


def test_wilson_edges_and_errors():
    assert wilson(10, 10)[1] == pytest.approx(1.0) and wilson(10, 10)[0] == pytest.approx(0.7225,
                                                                                        abs=1e-4)
    for k, n in ((1, 0), (5, 3), (-1, 3)):
        with pytest.raises(ValueError, match="wilson"):
            wilson(k, n)
    assert mean_interval([0.5]) == (0.5, 0.5, 0.5)
    m, lo, hi = mean_interval([0.0, 1.0, 1.0, 1.0])
    assert m == 0.75 and lo == pytest.approx(0.75 - 1.959964 * 0.5 / 2, abs=1e-6) and hi == 1.0


def _res(policy, task, cond, success, progress, steps=None, i=0):
    return EpisodeResult(policy, task, cond, f"{task}/eval{i:05d}", i, i, 2**32 + i, "x",
                         success, success, steps, 100, 25, 5, progress, 1, 3, [10], None, 0.1)


def _results():
    out = []
    for i in range(4):
        out.append(_res("expert", "push-v3", "new_layout", True, 1.0, 60 + i, i))
        out.append(_res("expert", "drawer-open-v3", "new_layout", i < 3, 1.0 if i < 3 else 2 / 3,
                        90 if i < 3 else None, i))
        out.append(_res("zero", "push-v3", "new_layout", False, 0.0, None, i))
        out.append(_res("zero", "drawer-open-v3", "new_layout", False, 0.0, None, i))
    return out


def test_summarize_cells_and_pooled():
    rows = summarize(_results())
    c = lookup(rows, "expert", "drawer-open-v3", "new_layout")
    assert (c["n"], c["successes"], c["success"]) == (4, 3, 0.75)
    assert (c["success_lo"], c["success_hi"]) == pytest.approx(wilson(3, 4))
    assert c["steps_to_success_median"] == 90 and c["progress"] == pytest.approx(11 / 12)
    a = lookup(rows, "expert", ALL, "new_layout")
    assert (a["n"], a["successes"]) == (8, 7)
    z = lookup(rows, "zero", ALL, "new_layout")
    assert z["success"] == 0.0 and z["steps_to_success_median"] is None


def test_table_and_report_files(tmp_path):
    rows = summarize(_results())
    t = table(rows, "success")
    assert t[0][0] == "policy" and [r[0] for r in t[1:]] == ["expert", "zero"]
    assert t[0][1:] == ["push / new_layout", "drawer-open / new_layout", "all / new_layout"]
    assert t[1][2] == "0.75 [0.30, 0.95]"
    paths = write_report(tmp_path, _results(), title="t", meta={"model": "m1"},
                         videos=["video_a.mp4"])
    m = json.loads(paths["metrics"].read_text())
    assert len(m["episodes"]) == 16 and m["meta"] == {"model": "m1"}
    assert lookup(m["cells"], "zero", ALL, "new_layout")["success_hi"] == pytest.approx(
        wilson(0, 8)[1])
    doc = paths["html"].read_text()
    assert "<script" not in doc and "0.75 [0.30, 0.95]" in doc
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', doc)
    assert len(imgs) == 2 and all(base64.b64decode(b).startswith(b"\x89PNG") for b in imgs)
    assert paths["success_png"].read_bytes().startswith(b"\x89PNG")
    md = paths["md"].read_text()
    assert "| expert |" in md and "video_a.mp4" in md
    with pytest.raises(ValueError, match="no episode results"):
        write_report(tmp_path / "e", [], title="t")

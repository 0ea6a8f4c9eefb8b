"""`make bench`: run every `bench_*.py` in its own process, then write results.json and
RESULTS.md, and copy the table into README.md.

`python -m benchmarks.run_all [names...]` runs a subset (e.g. `data_build`); figures of the
scripts not run are kept from the previous results.json. Every figure keeps when, at which
commit and on how fast a machine it was measured (`measured`: date, git, the seconds of
benchmarks/machine_speed.py's reference workload in that run), and the table shows it: absolute
times from different runs compare only through that reference.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import platform
import subprocess
import sys
import traceback
from pathlib import Path

from benchmarks.machine_speed import reference_seconds

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.json"
TABLE = HERE / "RESULTS.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def machine() -> str:
    import psutil

    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", GPU " + torch.cuda.get_device_name(0)
    except ImportError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return f"{platform.machine()} {os.cpu_count()} cores, {mem:.0f} GiB, {platform.python_version()}{gpu}"


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        # uncommitted changes besides the results themselves: the code measured is not `rev`
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!benchmarks/results.json", ":!benchmarks/RESULTS.md",
                                ":!README.md"],
                               cwd=ROOT, text=True, capture_output=True, check=True).stdout
        return rev + ("+changes" if dirty.strip() else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def run_one(name: str) -> dict:
    """Run benchmarks/bench_<name>.py in a child process; returns {key: figure json}."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--child", name], cwd=ROOT,
                         capture_output=True, text=True)
    sys.stderr.write(out.stderr[-4000:])
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("BENCH_JSON="):
            return json.loads(line.removeprefix("BENCH_JSON="))
    raise RuntimeError(f"bench_{name} failed (exit {out.returncode}):\n{out.stdout[-3000:]}")


def child(name: str) -> None:
    mod = importlib.import_module(f"benchmarks.bench_{name}")
    figs = mod.run()
    print("BENCH_JSON=" + json.dumps({k: f.to_json() for k, f in figs.items()}))


def render(results: dict) -> str:
    lines = [
        f"Benchmarks on {results['machine']}, {results['date']} (git {results['git']}).",
        "",
        "| figure | key | ours | baseline (same run) | baseline value | target | met | spread "
        "| measured (UTC, git, reference s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, f in sorted(results["details"].items()):
        met = {True: "yes", False: "**no**", None: "-"}[f["met"]]
        base = f["baseline_value"] if f["baseline_value"] is not None else "-"
        lines.append(f"| {f['what']} | `{key}` | {f['value']} {f['unit']} | {f['baseline']} | "
                     f"{base} | {f['target']} | {met} | {f['spread'][0]}-{f['spread'][1]} | "
                     f"{_measured(f)} |")
    lines += ["", "Reference s: benchmarks/machine_speed.py's fixed one-thread workload, timed in "
              "the run that measured the figure (lower: faster machine); absolute times (s) from "
              "runs with different reference seconds are not comparable as they stand."]
    missed = [f for f in results["details"].values() if f["met"] is False]
    if missed:
        lines += ["", "### Targets missed", ""]
        for f in missed:
            lines.append(f"- `{f['key']}` = {f['value']} (target {f['target']}): {f['notes']}")
    return "\n".join(lines) + "\n"


def _measured(f: dict) -> str:
    m = f.get("measured")
    if not m:
        return "before 2026-12-04 (not recorded)"
    return f"{m['date']}, {m['git']}, {m['ref_s']}"


def main(names: list[str]) -> int:
    all_names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    todo = names or all_names
    prev = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"details": {}}
    details = dict(prev.get("details", {}))
    failed = []
    measured = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"), "git": git_rev(),
                "ref_s": reference_seconds()}
    print(f"reference workload: {measured['ref_s']} s", flush=True)
    for name in todo:
        print(f"== bench_{name}", flush=True)
        try:
            figs = run_one(name)
        except Exception:  # noqa: BLE001 - report and go on with the other figures
            traceback.print_exc()
            failed.append(name)
            continue
        details.update({k: {**f, "measured": measured} for k, f in figs.items()})
        for k, f in figs.items():
            print(f"   {k} = {f['value']} {f['unit']} (target {f['target']})", flush=True)
    results = {
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git_rev(),
        "figures": {k: f["value"] for k, f in sorted(details.items())},
        "spread": {k: f["spread"] for k, f in sorted(details.items())},
        "details": details,
    }
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    table = render(results)
    TABLE.write_text("# Benchmark results\n\n" + table)
    text = README.read_text()
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        README.write_text(head + BEGIN + "\n" + table + END + tail)
    print(f"wrote {RESULTS.relative_to(ROOT)} and {TABLE.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        sys.exit(main(sys.argv[1:]))

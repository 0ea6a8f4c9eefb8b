"""Export graphs in parallel worker processes: `torch.export` + ONNX translation is
single-threaded Python (measured ~8-20 s per graph on the tiny preset), and the bundle has five
independent graphs, so a second process on a second core nearly halves the export.

Each graph is a job file in a folder, the pickled `GraphSpec` (its module holds the model, so a
worker needs no checkpoint) with the export arguments; `workers` processes of
`python -m wallwm.export.graph_worker JOBS` claim jobs until none is left (one process per graph
would pay the exporter's ~4 s start-up five times and gained nothing, measured); an
`ExportError` in a worker comes back as JSON and is raised again here with its graph, output and
figure. Subprocesses rather than a multiprocessing pool: no
`__main__` re-import under spawn, no daemonic-process limits inside Prefect or Ray workers, and
each job's failure is isolated and named.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

from wallwm.export.errors import ExportError
from wallwm.export.graphs import GraphSpec, export_graph

# the measured order of cost (largest first), so that the longest graph never starts last
_COST = {"encoder": 0, "video_step": 1, "action_step": 2}


def export_graphs(specs: list[GraphSpec], out_dir: Path, opset: int, max_text: int,
                  max_frames: int, workers: int = 1) -> dict[str, Path]:
    """Every spec exported to `out_dir/<name>.onnx`; graph name -> path, in `specs` order.

    `workers` <= 1 exports in this process, one graph after another. Otherwise that many
    worker processes take the jobs, largest first, until none is left (a job is claimed by
    renaming its file, so each runs once); the first failure, in cost order, is raised."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {s.name: out_dir / f"{s.name}.onnx" for s in specs}
    if workers <= 1 or len(specs) < 2:
        for s in specs:
            export_graph(s, paths[s.name], opset, max_text, max_frames)
        return paths
    order = sorted(specs, key=lambda s: _COST.get(s.role, 9))
    with tempfile.TemporaryDirectory(prefix=".graph-jobs-", dir=out_dir) as d:
        jobs = Path(d)
        for i, s in enumerate(order):
            with (jobs / f"{i:02d}-{s.name}.job").open("wb") as f:
                pickle.dump({"spec": s, "out": str(paths[s.name]), "opset": opset,
                             "max_text": max_text, "max_frames": max_frames}, f,
                            protocol=pickle.HIGHEST_PROTOCOL)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "wallwm.export.graph_worker", str(jobs)]
        logs = [jobs / f"worker-{i}.log" for i in range(min(workers, len(order)))]
        procs = []
        for log in logs:  # a file, not a pipe: a worker's warnings never block it
            with log.open("w") as f:
                procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                              stderr=f))
        for proc in procs:
            proc.wait()
        stderr = [log.read_text(errors="replace") for log in logs]
        for i, s in enumerate(order):
            err = jobs / f"{i:02d}-{s.name}.err.json"
            if err.exists():
                e = json.loads(err.read_text())
                raise ExportError(e["message"], graph=e["graph"], output=e["output"],
                                  figure=e["figure"])
            if not paths[s.name].exists():
                tail = " | ".join(x.strip()[-300:] for x in stderr if x.strip())
                raise ExportError(f"the export workers exited with "
                                  f"{[p.returncode for p in procs]} before writing the graph: "
                                  f"{tail}", graph=s.name, figure="export")
    return paths


def main(argv: list[str]) -> int:
    """Claim and export jobs from the folder `argv[0]` until none is left."""
    import torch

    torch.set_num_threads(1)
    jobs = Path(argv[0])
    for job in sorted(jobs.glob("*.job")):
        mine = job.with_suffix(".taken")
        try:
            os.rename(job, mine)  # atomic: exactly one worker wins each job
        except FileNotFoundError:
            continue
        with mine.open("rb") as f:
            j = pickle.load(f)
        spec: GraphSpec = j["spec"]
        try:
            export_graph(spec, Path(j["out"]), j["opset"], j["max_text"], j["max_frames"])
        except ExportError as e:
            (jobs / f"{job.stem}.err.json").write_text(json.dumps(
                {"message": e.message, "graph": e.graph, "output": e.output,
                 "figure": e.figure}))
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

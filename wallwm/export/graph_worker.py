"""Export graphs in parallel worker processes: `torch.export` + the ONNX translation are
single-threaded Python (measured 5-10 s per graph on the micro test model, more on tiny) and the
bundle has five independent graphs, so a second process on a second core cuts the export
(micro student: 31.9 -> 20.5 s).

The job folder holds the pickled `GraphSpec`s in one file (their modules hold the model, so a
worker needs no checkpoint; one pickle keeps one copy of it) and one empty job file per graph;
`workers` processes of `python -m wallwm.export.graph_worker JOBS` claim jobs until none is
left (one process per graph gained nothing: each pays the exporter's ~4 s start-up). A worker
marks each graph done, or writes its error as JSON, which is raised here as an ExportError
naming the graph, output and figure. Subprocesses rather than a multiprocessing pool: no
`__main__` re-import under spawn, no daemonic-process limits inside Prefect or Ray workers.
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
    renaming its file, so each runs once). A graph counts as exported only when its worker
    marked it done after `export_graph` returned; the first failure, in cost order, is raised
    as an ExportError naming the graph, and an interrupted export stops its workers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {s.name: out_dir / f"{s.name}.onnx" for s in specs}
    if workers <= 1 or len(specs) < 2:
        for s in specs:
            export_graph(s, paths[s.name], opset, max_text, max_frames)
        return paths
    order = sorted(specs, key=lambda s: _COST.get(s.role, 9))
    with tempfile.TemporaryDirectory(prefix=".graph-jobs-", dir=out_dir) as d:
        jobs = Path(d)
        with (jobs / "specs.pkl").open("wb") as f:  # one file: pickle's memo keeps one model
            pickle.dump({"specs": order, "outs": [str(paths[s.name]) for s in order],
                         "opset": opset, "max_text": max_text, "max_frames": max_frames}, f,
                        protocol=pickle.HIGHEST_PROTOCOL)
        for i, s in enumerate(order):
            (jobs / f"{i:02d}-{s.name}.job").touch()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "wallwm.export.graph_worker", str(jobs)]
        logs = [jobs / f"worker-{i}.log" for i in range(min(workers, len(order)))]
        procs: list[subprocess.Popen] = []
        try:
            for log in logs:  # a file, not a pipe: a worker's warnings never block it
                with log.open("w") as f:
                    procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                                  stderr=f))
            for proc in procs:
                proc.wait()
        finally:  # interrupted (Ctrl-C, a cancelled flow run): no worker outlives the export
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        stems = [f"{i:02d}-{s.name}" for i, s in enumerate(order)]
        for stem in stems:  # a worker's own error first: it names the graph and the figure
            err = jobs / f"{stem}.err.json"
            if err.exists():
                e = json.loads(err.read_text())
                raise ExportError(e["message"], graph=e["graph"], output=e["output"],
                                  figure=e["figure"], value=e.get("value"),
                                  bound=e.get("bound"))
        for stem, s in zip(stems, order, strict=True):
            if not (jobs / f"{stem}.done").exists():
                tail = " | ".join(log.read_text(errors="replace").strip()[-300:]
                                  for log in logs if log.exists() and log.stat().st_size)
                raise ExportError(f"the export workers exited with "
                                  f"{[p.returncode for p in procs]} before finishing this "
                                  f"graph: {tail}", graph=s.name, figure="export")
    return paths


def main(argv: list[str]) -> int:
    """Claim and export jobs from the folder `argv[0]` until none is left."""
    import torch

    torch.set_num_threads(1)
    jobs = Path(argv[0])
    j = None
    for job in sorted(jobs.glob("*.job")):
        mine = job.with_suffix(".taken")
        try:
            os.rename(job, mine)  # atomic: exactly one worker wins each job
        except FileNotFoundError:
            continue
        if j is None:
            with (jobs / "specs.pkl").open("rb") as f:
                j = pickle.load(f)
        i = int(job.stem.split("-", 1)[0])
        spec: GraphSpec = j["specs"][i]
        try:
            export_graph(spec, Path(j["outs"][i]), j["opset"], j["max_text"], j["max_frames"])
        except Exception as e:  # noqa: BLE001 - every failure goes back naming its graph
            err = e if isinstance(e, ExportError) else ExportError(
                f"torch.onnx.export failed: {type(e).__name__}: {str(e)[:600]}",
                graph=spec.name, figure="export")
            (jobs / f"{job.stem}.err.json").write_text(json.dumps(
                {"message": err.message, "graph": err.graph, "output": err.output,
                 "figure": err.figure, "value": err.value, "bound": err.bound}))
            return 3
        (jobs / f"{job.stem}.done").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

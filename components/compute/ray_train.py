"""Ray Train for the training stages: the same Lightning code in N DDP workers (gloo on CPU,
NCCL on GPU), on the local Ray or any cluster at RAY_ADDRESS, one node or many.

Checkpoints go through Ray Train's storage, which every node must reach: give `fit_on_ray` an
`s3://bucket/prefix` (`train_storage()`: `$WALLWM_RAY_STORAGE`, else `s3://wallwm-ray/train`
on the stack's S3 endpoint). Every `last.ckpt` Lightning writes (with `best.ckpt` beside it) is
reported to Ray Train, whose checkpoint manager keeps the latest ones there. A run started
again under the same `name` resumes from the latest of them wherever its workers land: before
the worker function starts, one worker per node puts that checkpoint into the stage folder, and
after the run the driver gets it too (rank 0 may have run on another machine). Files the
workers read that only the driver has (`init_from`, the previous stage's weights) are shipped
through the same storage.

Storage goes through s3fs (`pyarrow.fs.PyFileSystem(FSSpecHandler)`), not pyarrow's own S3
client: pyarrow writes directory-marker objects (`prefix/`), which nanio refuses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pyarrow.fs import FSSpecHandler

from components.compute.ray_cluster import connect

STORAGE_ENV = "WALLWM_RAY_STORAGE"
DEFAULT_STORAGE = "s3://wallwm-ray/train"
CHECKPOINT_FILES = ("last.ckpt", "best.ckpt")  # what Lightning's ModelCheckpoint writes
EXTRA = "_extra"  # folder in the final checkpoint holding the `return_keys` folders
_LOG = logging.getLogger(__name__)


def train_storage(local: Path | None = None) -> str:
    """Ray Train's storage for this environment: `$WALLWM_RAY_STORAGE`, else
    `s3://wallwm-ray/train` when an S3 endpoint is configured (the stack's), else `local`."""
    if url := os.environ.get(STORAGE_ENV):
        return url
    if os.environ.get("AWS_ENDPOINT_URL") or local is None:
        return DEFAULT_STORAGE
    return str(local)


def fit_on_ray(worker_fn: Callable[[dict], dict[str, Any] | None], config: dict[str, Any],
               workers: int, storage: Path | str, name: str, use_gpu: bool = False,
               placement_strategy: str = "PACK", stage_key: str = "stage_dir",
               ship_keys: tuple[str, ...] = ("init_from",),
               return_keys: tuple[str, ...] = ("figures_dir",),
               result_file: str = "result.json", keep: int = 2) -> dict[str, Any]:
    """Run `worker_fn(config)` on `workers` Ray Train workers; returns rank 0's result.

    `storage` is an `s3://` URL (every node reaches it) or a local folder (one node, or a
    shared file system). `config[stage_key]` is the folder where Lightning writes its
    checkpoints: it is restored from the latest checkpoint of `name` on every node before
    `worker_fn` runs (unless `config["resume"]` is false), and on the driver after the run.
    Files named by `config[k]` for `k` in `ship_keys` are copied to nodes that lack them; the
    folders `config[k]` for `k` in `return_keys` come back to the driver. Rank 0's result is
    what `worker_fn` returns, else the JSON it left in `<stage folder>/<result_file>` (Ray Train
    2.60 keeps only metrics reported with a checkpoint, so it travels in the last one).
    """
    connect()
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fs, root = storage_filesystem(storage)
    stage_dir = Path(config[stage_key])
    shipped = _ship_inputs(fs, f"{root}/{name}/inputs", config, ship_keys, stage_dir)
    control = {"stage_key": stage_key, "shipped": shipped, "fs": fs,
               "restore": bool(config.get("resume", True)), "prefect": _prefect_log_target(),
               "return_keys": [k for k in return_keys if config.get(k)],
               "result_file": result_file}
    trainer = TorchTrainer(
        train_loop_per_worker=partial(_worker_entry, worker_fn, control),
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 1},
                                     placement_strategy=placement_strategy),
        run_config=RunConfig(storage_path=root, storage_filesystem=fs, name=name,
                             checkpoint_config=CheckpointConfig(num_to_keep=keep)),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    _prune_orphans(fs, f"{root}/{name}", result)
    if result.checkpoint is not None:  # rank 0's files, wherever it ran
        _restore_into(result.checkpoint, stage_dir,
                      {k: Path(config[k]) for k in control["return_keys"]})
    return dict(result.metrics or {})


def _prune_orphans(fs, run_root: str, result: Any) -> list[str]:
    """Delete the run's `checkpoint_*` folders that Ray Train's checkpoint manager does not
    hold. A run killed after uploading a checkpoint but before recording it leaves such a folder;
    the resumed run's manager never learns of it, so `num_to_keep` would never delete it.
    Only after a successful fit, and only when the manager holds at least one checkpoint."""
    import pyarrow.fs as pafs

    kept = {Path(c.path).name for c, _ in (result.best_checkpoints or [])}
    if result.checkpoint is not None:
        kept.add(Path(result.checkpoint.path).name)
    if not kept:
        return []
    infos = fs.get_file_info(pafs.FileSelector(run_root, allow_not_found=True))
    orphans = sorted(i.path for i in infos if i.type == pafs.FileType.Directory
                     and i.base_name.startswith("checkpoint_") and i.base_name not in kept)
    for path in orphans:
        fs.delete_dir(path)
        _LOG.info("deleted checkpoint %s: left by an interrupted run, not held by Ray Train's "
                  "checkpoint manager (it holds %d)", path, len(kept))
    return orphans


# ----------------------------------------------------------------------------- storage
def storage_filesystem(storage: Path | str) -> tuple[Any, str]:
    """A pyarrow file system and the root path in it for Ray Train's `storage_path`."""
    import pyarrow.fs as pafs

    url = str(storage)
    if not url.startswith("s3://"):
        path = Path(url).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return pafs.LocalFileSystem(), str(path)
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"Ray Train storage {url!r} names no bucket; expected s3://bucket/prefix "
                         f"(${STORAGE_ENV})")
    _ensure_bucket(bucket, url)
    return pafs.PyFileSystem(_S3Handler(_s3fs())), f"{bucket}/{prefix.strip('/')}".rstrip("/")


def _s3fs():
    """s3fs on `$AWS_ENDPOINT_URL` with SigV4 and path-style addressing (as nanio needs)."""
    import s3fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    return s3fs.S3FileSystem(
        endpoint_url=endpoint, key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        client_kwargs={"region_name": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")},
        config_kwargs={"signature_version": "s3v4",
                       "s3": {"addressing_style": "path" if endpoint else "auto"}},
        use_listings_cache=False)


def _ensure_bucket(bucket: str, url: str) -> None:
    from botocore.exceptions import ClientError

    from components.storage.s3 import ensure_buckets, s3_client

    try:
        ensure_buckets(s3_client(), [bucket])
    except ClientError as e:
        raise RuntimeError(
            f"Ray Train storage {url}: bucket {bucket!r} does not exist and cannot be created "
            f"({e.response.get('Error', {}).get('Code')}); create it, or point ${STORAGE_ENV} "
            f"at a bucket every node can write") from None


class _S3Handler(FSSpecHandler):
    """s3fs for Ray Train, except that a folder delete removes the objects under the prefix
    only: s3fs's recursive `rm` also names the prefix itself, which nanio answers with HTTP 500
    (IsADirectoryError)."""

    def delete_dir(self, path: str) -> None:
        _delete_objects(self.fs, path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        if not missing_dir_ok and not self.fs.exists(path):
            raise FileNotFoundError(path)
        _delete_objects(self.fs, path)


def _delete_objects(fs, path: str) -> None:
    keys = fs.find(path.rstrip("/") + "/")
    if keys:
        fs.rm(keys)


def _ship_inputs(fs, remote: str, config: dict[str, Any], keys: tuple[str, ...],
                 stage_dir: Path) -> list[tuple[str, str]]:
    """Upload the driver's input files (and checkpoints it already has for this stage) so
    nodes without them can fetch them; returns (remote path, local path) pairs."""
    files = [Path(config[k]) for k in keys if config.get(k)]
    if config.get("resume", True):
        files += [stage_dir / f for f in CHECKPOINT_FILES]
    out = []
    for f in files:
        if not f.is_file():
            continue
        digest = hashlib.sha256(str(f).encode() + str(f.stat().st_size).encode()
                                + str(f.stat().st_mtime_ns).encode()).hexdigest()[:16]
        dest = f"{remote}/{digest}-{f.name}"
        if fs.get_file_info(dest).size != f.stat().st_size:
            import pyarrow.fs as pafs

            pafs.copy_files(str(f), dest, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)
        out.append((dest, str(f)))
    return out


# ----------------------------------------------------------------------------- on each worker
def _worker_entry(worker_fn: Callable[[dict], dict[str, Any] | None], control: dict[str, Any],
                  config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: logs to the Prefect run, inputs and the latest
    checkpoint on this node, `worker_fn`, then the final report with rank 0's result."""
    import ray.train

    handler = _forward_logs(control["prefect"])
    try:
        stage_dir = Path(config[control["stage_key"]])
        if ray.train.get_context().get_local_rank() == 0:  # one download per node
            _fetch_missing(control["fs"], control["shipped"])
            ckpt = ray.train.get_checkpoint() if control["restore"] else None
            if ckpt is not None:
                _restore_into(ckpt, stage_dir, {})
        _barrier()  # the other workers of this node wait for those files
        returned = worker_fn(config)
        _final_report(stage_dir, returned, control,
                      {k: Path(config[k]) for k in control["return_keys"]})
    finally:
        if handler is not None:
            handler.flush()
            for name in _forwarded(control["prefect"]["loggers"]):
                logging.getLogger(name).removeHandler(handler)


def _final_report(stage_dir: Path, returned: dict[str, Any] | None, control: dict[str, Any],
                  extra: dict[str, Path]) -> None:
    """Every rank reports once more; rank 0 attaches the stage's checkpoints, its result and
    the `extra` folders, so the driver gets them even when rank 0 ran on another machine."""
    import ray
    import ray.train

    nodes = _gather(ray.util.get_node_ip_address())  # where each rank ran, for the record
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({})
        return
    result_path = stage_dir / control["result_file"]
    if returned is None and result_path.is_file():
        returned = json.loads(result_path.read_text())
    metrics = {**json.loads(json.dumps(returned or {}, default=str)), "ray_worker_nodes": nodes}
    folder = stage_dir / ".ray-report-final"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        for name in (*CHECKPOINT_FILES, control["result_file"]):
            if (stage_dir / name).is_file():
                os.link(stage_dir / name, folder / name)
        for key, src in extra.items():
            if src.is_dir():
                shutil.copytree(src, folder / EXTRA / key, copy_function=os.link,
                                ignore=shutil.ignore_patterns(".ray-*"))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _gather(value: Any) -> list[Any]:
    """`value` of every rank, in rank order (just this one outside a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _fetch_missing(fs, shipped: list[tuple[str, str]]) -> None:
    import pyarrow.fs as pafs

    for remote, local in shipped:
        dest = Path(local)
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        pafs.copy_files(remote, str(tmp), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
        os.replace(tmp, dest)


def _restore_into(checkpoint: Any, stage_dir: Path, extra: dict[str, Path]) -> None:
    """The checkpoint's files into `stage_dir` (and its `extra` folders into theirs), each file
    replaced atomically: a crash leaves the old file or the new one, never half of one."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / f".ray-restore-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        checkpoint.to_directory(str(tmp))
        for f in tmp.iterdir():
            if f.is_file():
                os.replace(f, stage_dir / f.name)
        for key, dest in extra.items():
            src = tmp / EXTRA / key
            for f in sorted(src.rglob("*")) if src.is_dir() else ():
                if f.is_file():
                    target = dest / f.relative_to(src)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(f, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _report_checkpoint(filepath: Path, step: int, is_rank_zero: bool) -> None:
    """Report a freshly written `last.ckpt` (and `best.ckpt`) to Ray Train from every rank
    (a report is a barrier); rank 0 attaches the files, hard-linked into a folder of their own."""
    import ray.train

    metrics = {"step": int(step)}
    if not is_rank_zero:
        ray.train.report(metrics)
        return
    folder = filepath.parent / f".ray-report-{step}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        for name in CHECKPOINT_FILES:
            src = filepath.parent / name
            if src.is_file():
                os.link(src, folder / name)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ray_lightning_kwargs() -> dict[str, Any]:
    """Trainer arguments that make Lightning run under Ray Train's process group and report
    each `last.ckpt` it writes to Ray Train's storage."""
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

    class ReportingDDPStrategy(RayDDPStrategy):
        # Lightning calls save_checkpoint on every rank (only rank 0 writes the file)
        def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any,
                            storage_options: Any = None) -> None:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            if Path(filepath).name == CHECKPOINT_FILES[0]:
                _report_checkpoint(Path(filepath), checkpoint.get("global_step", 0),
                                   self.is_global_zero)

    # a curriculum stage leaves parts of its trainable set idle (e.g. unified-mode heads in an
    # event-mode stage), which DDP must be told about
    return {"strategy": ReportingDDPStrategy(find_unused_parameters=True),
            "plugins": [RayLightningEnvironment()], "devices": "auto"}


# ----------------------------------------------------------------------------- logs to Prefect
def _prefect_log_target() -> dict[str, Any] | None:
    """The Prefect run this code runs in and the loggers it forwards
    (`PREFECT_LOGGING_EXTRA_LOGGERS`), so the workers' records reach that run's logs."""
    loggers = [n.strip() for n in os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",")
               if n.strip()]
    if not loggers or not os.environ.get("PREFECT_API_URL"):
        return None
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:
        return None
    task, flow = TaskRunContext.get(), FlowRunContext.get()
    flow_run_id = (task.task_run.flow_run_id if task else None) or (
        flow.flow_run.id if flow and flow.flow_run else None)
    if not flow_run_id:
        return None
    return {"flow_run_id": str(flow_run_id), "task_run_id": str(task.task_run.id) if task else None,
            "loggers": loggers}


class _RunIds(logging.Filter):
    """Stamps records with the Prefect run they belong to (Prefect's API handler reads them)."""

    def __init__(self, flow_run_id: str, task_run_id: str | None):
        super().__init__()
        self.flow_run_id, self.task_run_id = flow_run_id, task_run_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.flow_run_id = self.flow_run_id
        if self.task_run_id:
            record.task_run_id = self.task_run_id
        return True


def _forward_logs(target: dict[str, Any] | None) -> logging.Handler | None:
    if not target:
        return None
    try:  # the job's runtime_env carries PREFECT_API_URL (ray_cluster.connect)
        from prefect.logging.handlers import APILogHandler
        from prefect.settings import PREFECT_API_URL
    except ImportError:
        return None
    if not PREFECT_API_URL.value():  # never a temporary server inside a Ray worker
        return None
    class WorkerLogHandler(APILogHandler):
        def prepare(self, record: logging.LogRecord) -> dict[str, Any]:
            # Ray's log filters set `worker_id` to Ray's worker id; Prefect reads that
            # attribute as its own worker's UUID and would reject the record
            ray_worker = record.__dict__.pop("worker_id", None)
            try:
                return super().prepare(record)
            finally:
                if ray_worker is not None:
                    record.worker_id = ray_worker

    handler = WorkerLogHandler(level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not every POST of these very logs
    handler.addFilter(_RunIds(target["flow_run_id"], target["task_run_id"]))
    for name in _forwarded(target["loggers"]):
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    return handler


def _forwarded(loggers: list[str]) -> list[str]:
    """`loggers` plus Ray Train's own logger under "ray", which does not propagate."""
    return [*loggers, *(["ray.train"] if "ray" in loggers else [])]

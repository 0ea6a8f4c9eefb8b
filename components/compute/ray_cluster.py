"""Connect to Ray at `RAY_ADDRESS` (the stack's head by default, or any cluster).

With no address at all, Ray starts a private local instance for this process, which is what a
plain library user (a benchmark, a notebook) expects; the `wallwm` commands and flows never get
here without an address, because `components.stack.require_stack` refuses to run them without
the stack (or a `RAY_ADDRESS`) first.

The job's runtime environment carries the client settings its tasks and actors need wherever
they run (a node of another machine has none of this process's environment): the Prefect API
and the loggers forwarded to it, so that records from Ray workers reach the Prefect run's logs.
"""

from __future__ import annotations

import logging
import os

# Variables a Ray worker needs from the driver: where Prefect is (logs of Ray Train workers go
# to the flow run, components/compute/ray_train.py) and which loggers go there.
JOB_ENV = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING",
           "PREFECT_LOGGING_EXTRA_LOGGERS")


def job_env() -> dict[str, str]:
    """The driver's values of `JOB_ENV` (unset ones are left out)."""
    return {k: os.environ[k] for k in JOB_ENV if os.environ.get(k)}


def connect(address: str | None = None, namespace: str = "wallwm") -> dict:
    """Idempotent `ray.init` against `address` (default `$RAY_ADDRESS`); returns cluster resources.

    Ray reads some settings from the environment when it is first imported, so it is imported
    here, after the stack's env file has been loaded, never at module import time.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if not ray.is_initialized():
        addr = address or os.environ.get("RAY_ADDRESS") or None
        env = job_env()
        ray_logger = logging.getLogger("ray")
        before = list(ray_logger.handlers)
        ray.init(
            address=addr,
            namespace=namespace,
            ignore_reinit_error=True,
            log_to_driver=True,
            include_dashboard=False if addr is None else None,
            configure_logging=False,
            runtime_env={"env_vars": env} if env else None,
        )
        # `configure_logging=False` clears the "ray" logger's handlers, Prefect's API handler
        # (PREFECT_LOGGING_EXTRA_LOGGERS=ray) among them: put Prefect's back
        for h in before:
            if type(h).__module__.startswith("prefect.") and h not in ray_logger.handlers:
                ray_logger.addHandler(h)
    return ray.cluster_resources()


def cluster_cpus() -> int:
    """CPUs of the connected cluster."""
    return int(connect().get("CPU", 1))


def alive_nodes() -> list[dict]:
    """The cluster's live nodes (`ray.nodes()` entries), e.g. to check that a worker joined."""
    connect()
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]

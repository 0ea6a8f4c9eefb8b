"""Connect to Ray at `RAY_ADDRESS` (the stack's head by default, or any cluster).

With no address at all, Ray starts a private local instance for this process, which is what a
plain library user expects; the stack's head is preferred because it outlives one flow.
"""

from __future__ import annotations

import os


def connect(address: str | None = None, namespace: str = "wallwm") -> dict:
    """Idempotent `ray.init` against `address` (default `$RAY_ADDRESS`); returns cluster resources.

    Ray reads some settings from the environment when it is first imported, so it is imported
    here, after the stack's env file has been loaded, never at module import time.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if not ray.is_initialized():
        addr = address or os.environ.get("RAY_ADDRESS") or None
        ray.init(
            address=addr,
            namespace=namespace,
            ignore_reinit_error=True,
            log_to_driver=True,
            include_dashboard=False if addr is None else None,
            configure_logging=False,
        )
    return ray.cluster_resources()


def cluster_cpus() -> int:
    """CPUs of the connected cluster."""
    return int(connect().get("CPU", 1))

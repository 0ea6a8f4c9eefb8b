"""How the retrain runs one stage: a time limit, and retries only for transient failures.

Transient: the network or a service that was briefly away (connection refused or reset, a
timeout talking to MLflow, S3 or Prefect, an HTTP 5xx/429 from them). Everything else (bad
input, a failed gate, a mismatch, a stage's own time limit) is deterministic: a retry would
fail the same way and only hide the first traceback. Retrying a whole stage is safe because
every stage finds and reuses what an earlier attempt finished (see flows/retrain.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

TRANSIENT_HTTP = {429, 500, 502, 503, 504}


def is_transient(e: BaseException) -> bool:
    """True for failures a retry can cure (walks the `__cause__`/`__context__` chain)."""
    import requests
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ == "FlowRunTimeoutError":  # the stage's own limit: not transient
            return False
        if isinstance(e, (ConnectionRefusedError, ConnectionResetError, BrokenPipeError,
                          requests.ConnectionError, requests.Timeout, BotoConnectionError,
                          ConnectTimeoutError, ReadTimeoutError)):
            return True
        status = _http_status(e)
        if status in TRANSIENT_HTTP:
            return True
        e = e.__cause__ or e.__context__
    return False


def _http_status(e: BaseException) -> int | None:
    resp = getattr(e, "response", None)  # requests.HTTPError, botocore ClientError (a dict)
    if isinstance(resp, dict):
        return resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = getattr(resp, "status_code", None)
    if code is None:  # mlflow's RestException keeps the server's error code
        code = getattr(e, "get_http_status_code", lambda: None)()
    return int(code) if isinstance(code, int) else None


def with_time_limit(fn: Callable[..., Any], timeout_s: float) -> Callable[..., Any]:
    """A Prefect flow with `timeout_seconds` set; plain functions unchanged (they are the short
    registry calls, bounded by their clients' own timeouts)."""
    opts = getattr(fn, "with_options", None)
    return opts(timeout_seconds=timeout_s) if callable(opts) and hasattr(fn, "fn") else fn


def call_with_retries(fn: Callable[..., Any], args: tuple, kwargs: dict, retries: int,
                      delay_s: float, on_retry: Callable[[int, BaseException], None]) -> Any:
    """`fn(*args, **kwargs)`, again up to `retries` times after a transient failure."""
    for attempt in range(retries + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised unless transient
            if attempt >= retries or not is_transient(e):
                raise
            on_retry(attempt + 1, e)
            time.sleep(delay_s * (attempt + 1))
    raise AssertionError("unreachable")

"""The action server on loopback: the robot's controller asks for actions, the agent answers
with the active engine and swaps engines only between requests.

```
POST /act     {"images": {cam: ARRAY}, "state": ARRAY, "text": [..], "mode": "event", ...}
              -> {"actions", "end_prob", "valid", "version", "slot", "ms"}
GET  /health  -> {"ok", "version", "slot"}          (503 without an engine)
GET  /status  -> the agent's full status
POST /poll    -> run one update cycle now, then the status
```

ARRAY is a nested list or {"dtype": "uint8", "shape": [...], "b64": "<raw bytes>"} (compact
for images). A request holds a reference to the engine it started with, so a swap never
changes an engine under a running request; the next request gets the new one.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from wallwm.release.engine import Engine, EngineError


def encode_array(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    return {"dtype": str(a.dtype), "shape": list(a.shape),
            "b64": base64.b64encode(a.tobytes()).decode()}


def decode_array(obj: Any, dtype: str | None = None) -> np.ndarray:
    if isinstance(obj, dict) and "b64" in obj:
        dt = np.dtype(obj["dtype"])
        if dt.kind not in "biuf":
            raise ValueError(f"dtype {obj['dtype']} not allowed")
        arr = np.frombuffer(base64.b64decode(obj["b64"]), dt).reshape(obj["shape"])
        return arr if dtype is None else arr.astype(dtype)
    return np.asarray(obj, dtype=dtype)


class EngineHolder:
    """The serving engine plus the health counters of the current trial."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.engine: Engine | None = None
        self.info: dict[str, Any] = {}
        self.served = 0
        self.failures = 0  # engine faults (non-finite output, runtime errors) since the swap
        self.last_failure = ""

    def get(self) -> tuple[Engine | None, dict[str, Any]]:
        with self._lock:
            return self.engine, dict(self.info)

    def swap(self, engine: Engine | None, info: dict[str, Any]) -> None:
        with self._lock:
            self.engine, self.info = engine, dict(info)
            self.failures, self.last_failure = 0, ""

    def record(self, ok: bool, why: str = "") -> None:
        with self._lock:
            self.served += 1
            if not ok:
                self.failures += 1
                self.last_failure = why[:300]


class _Handler(BaseHTTPRequestHandler):
    server: ActionServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # access logs off: JSON logs only
        return

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        if n > self.server.max_body:
            raise ValueError(f"request body {n} bytes > {self.server.max_body}")
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self) -> None:
        if self.path == "/health":
            eng, info = self.server.holder.get()
            self._send(200 if eng else 503, {"ok": eng is not None, **info})
        elif self.path == "/status":
            self._send(200, self.server.status_fn())
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        if self.path == "/poll":
            self._send(200, self.server.poll_fn())
            return
        if self.path != "/act":
            self._send(404, {"error": f"no route {self.path}"})
            return
        eng, info = self.server.holder.get()
        if eng is None:
            self._send(503, {"error": "no verified engine installed yet"})
            return
        try:
            req = self._body()
            kw = _act_kwargs(req)
        except (ValueError, KeyError, TypeError) as e:
            self._send(400, {"error": f"bad request: {e}"})
            return
        t0 = time.perf_counter()
        try:
            out = eng.act(**kw)
        except EngineError as e:
            self._send(400, {"error": str(e)})
            return
        except Exception as e:  # an engine that crashes at run time is a failing engine
            self.server.holder.record(False, f"runtime error: {e}")
            self._send(500, {"error": f"engine failed: {e}", **info})
            return
        ms = (time.perf_counter() - t0) * 1000
        if not np.all(np.isfinite(out["actions"])):
            self.server.holder.record(False, "non-finite actions")
            self._send(500, {"error": "engine produced non-finite actions", **info})
            return
        self.server.holder.record(True)
        self._send(200, {"actions": out["actions"].tolist(),
                         "end_prob": None if out["end_prob"] is None else out["end_prob"].tolist(),
                         "valid": out["valid"].tolist(), "ms": round(ms, 3), **info})


def _act_kwargs(req: dict[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "images": {k: decode_array(v, "uint8") for k, v in req["images"].items()},
        "state": decode_array(req["state"], "float32"),
        "mode": req.get("mode", "event"),
    }
    if req.get("text") is not None:
        kw["text"] = [str(t) for t in req["text"]]
    for k, dt in (("text_ids", "int64"), ("text_mask", "bool"), ("event_type", "int64"),
                  ("abs_time", "float32"), ("action_noise", "float32"),
                  ("video_noise", "float32")):
        if req.get(k) is not None:
            kw[k] = decode_array(req[k], dt)
    if req.get("seed") is not None:
        kw["seed"] = int(req["seed"])
    return kw


class ActionServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    max_body = 64 << 20

    def __init__(self, host: str, port: int, holder: EngineHolder, status_fn, poll_fn):
        super().__init__((host, port), _Handler)
        self.holder, self.status_fn, self.poll_fn = holder, status_fn, poll_fn

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="action-server", daemon=True)
        t.start()
        return t

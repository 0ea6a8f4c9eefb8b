"""Structured logs: one JSON object a line on stderr (time, level, event, robot, fields)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

LOGGER = "wallwm.agent"


class JsonFormatter(logging.Formatter):
    def __init__(self, robot: str):
        super().__init__()
        self.robot = robot

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "robot": self.robot,
            "event": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info and record.levelno >= logging.ERROR:
            out["exc"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, default=str)


def setup(robot: str, level: str = "INFO") -> logging.Logger:
    log = logging.getLogger(LOGGER)
    log.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter(robot))
    log.addHandler(h)
    log.setLevel(level.upper())
    log.propagate = False
    return log


def event(log: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, name, extra={"fields": fields})

"""Temporarily set environment variables, restoring exactly what was there (set or unset)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


def _apply(values: Mapping[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def temporary_env(updates: Mapping[str, str | None]) -> Iterator[None]:
    """Inside the block each key holds its value (None: unset); afterwards its old state."""
    saved = {k: os.environ.get(k) for k in updates}
    try:
        _apply(updates)
        yield
    finally:
        _apply(saved)

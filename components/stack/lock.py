"""One `stack up`/`down` at a time per stack home: an `fcntl.flock` on `<home>/stack.lock`.

Without it two `up` at once both start services on one data folder and stop each other's
processes as "stale". The lock is held by an open file, so the kernel releases it when its
process dies (a killed `up` never leaves a stale lock); the file only says who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_NAME = "stack.lock"


class LockTimeout(RuntimeError):
    """The other holder did not finish within the wait."""


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 200).decode(errors="replace").strip() or "unknown process"
    except OSError:
        return "unknown process"


def _open(home: Path) -> int:
    return os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)


@contextlib.contextmanager
def stack_lock(
    home: Path,
    action: str,
    wait_s: float = 900.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the stack's exclusive lock for `action` (`up`, `down`), waiting for another holder.

    `on_wait` gets one message when the lock is busy (default: printed to stderr), so a user sees
    why nothing happens. Raises LockTimeout after `wait_s` seconds.
    """
    fd = _open(home)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            msg = (
                f"waiting for another `wallwm stack` command ({who}) to finish with "
                f"{home} (lock {home / LOCK_NAME})..."
            )
            (on_wait or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockTimeout(
                            f"{who} still holds {home / LOCK_NAME} after {wait_s:.0f} s; wait for "
                            f"it or stop it, then run `wallwm stack {action}` again"
                        ) from None
                    time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`stack {action}` pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def busy(home: Path) -> str | None:
    """Who holds the lock now (an `up` or `down` in progress), or None; never waits."""
    if not (home / LOCK_NAME).exists():
        return None
    fd = _open(home)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        return None
    finally:
        os.close(fd)

"""systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram to $NOTIFY_SOCKET.

The unit (infra/systemd/wallwm-agent.service) is `Type=notify` with `WatchdogSec=`: the agent
says READY=1 once it serves, then WATCHDOG=1 from its main loop at least every half interval,
so a hung loop gets the agent restarted. Outside systemd (no $NOTIFY_SOCKET) every call is a
no-op.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1", "WATCHDOG=1", "STATUS=...") ; False when not under
    systemd or the socket is gone (never raises: supervision must not break serving)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_period_s() -> float | None:
    """Half of systemd's WatchdogSec (from $WATCHDOG_USEC, for this process only), or None."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.1)
    except ValueError:
        return None

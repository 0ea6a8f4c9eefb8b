"""The agent's systemd notify messages reach a real $NOTIFY_SOCKET (what Type=notify and
WatchdogSec in infra/systemd/wallwm-agent.service rely on); without one they are no-ops."""

from __future__ import annotations

import socket

from components.robot_agent.sdnotify import notify, watchdog_period_s


def test_notify_sends_datagrams_to_the_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(path))
        srv.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1") and notify("WATCHDOG=1")
        assert [srv.recv(64), srv.recv(64)] == [b"READY=1", b"WATCHDOG=1"]


def test_without_systemd_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/sock")
    assert notify("READY=1") is False  # a vanished socket never breaks serving


def test_watchdog_period_is_half_the_interval_for_this_process(monkeypatch):
    import os

    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_period_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_period_s() is None

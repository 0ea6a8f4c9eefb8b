"""tests/conftest.py removes earlier runs' temp homes once they are a day old, and only those."""

from __future__ import annotations

import os
import time

from tests.conftest import remove_old_test_homes


def test_only_old_test_homes_go(tmp_path):
    now = time.time()
    old, fresh = tmp_path / "wallwm-test-old1", tmp_path / "wallwm-test-new1"
    other = tmp_path / "wallwm-bench-old1"  # a benchmark's consoles are kept on purpose
    for d in (old, fresh, other):
        (d / "home" / "logs").mkdir(parents=True)
        (d / "home" / "logs" / "mlflow.log").write_text("x")
    stray = tmp_path / "wallwm-test-file"
    stray.write_text("not a folder")
    for d in (old, other, stray):
        os.utime(d, (now - 25 * 3600, now - 25 * 3600))
    os.utime(fresh, (now - 23 * 3600, now - 23 * 3600))

    assert remove_old_test_homes(tmp_path, 24, now) == [old]
    assert not old.exists() and fresh.exists() and other.exists() and stray.exists()
    assert remove_old_test_homes(tmp_path, 24, now) == []  # nothing left to remove

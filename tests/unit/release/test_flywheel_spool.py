"""The robot's spool: recordings are checked, hashed by content, and the spool stays bounded."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import pytest
from securesystemslib.signer import CryptoSigner

from components.robot_agent.flywheel import Flywheel, check_recording, content_hash, dataset_files


def _recording(root, payload: bytes, version: str = "v3.0", flags: bool = True):
    (root / "meta").mkdir(parents=True)
    feats = {"action": {}, **({k: {} for k in ("flags.teleop", "flags.correction",
                                               "flags.recovery")} if flags else {})}
    (root / "meta" / "info.json").write_text(json.dumps({"codebase_version": version,
                                                         "features": feats}))
    (root / "data").mkdir()
    (root / "data" / "file-000.parquet").write_bytes(payload)
    return root


def test_content_hash_ignores_the_folder_name(tmp_path):
    a = _recording(tmp_path / "a", b"x" * 100)
    b = _recording(tmp_path / "b", b"x" * 100)
    c = _recording(tmp_path / "c", b"y" * 100)
    ha, hb, hc = (content_hash(dataset_files(p))[0] for p in (a, b, c))
    assert ha == hb != hc


def test_recordings_are_checked(tmp_path):
    assert check_recording(_recording(tmp_path / "ok", b"1"))["codebase_version"] == "v3.0"
    with pytest.raises(ValueError, match="v3.0"):
        check_recording(_recording(tmp_path / "old", b"1", version="v2.1"))
    with pytest.raises(ValueError, match="flags"):
        check_recording(_recording(tmp_path / "noflags", b"1", flags=False))
    os.symlink("/etc/passwd", tmp_path / "ok" / "data" / "evil")
    with pytest.raises(ValueError, match="symlink"):
        dataset_files(tmp_path / "ok")


def test_spool_drops_the_oldest_when_full(tmp_path):
    fw = Flywheel(tmp_path / "spool", store=None, inbox_prefix="inbox/f", robot="r", fleet="f",
                  signer=CryptoSigner.generate_ed25519(), max_mb=2.5,
                  log=logging.getLogger("test"))
    for i in range(3):
        _recording(tmp_path / "spool" / "ready" / f"rec{i}", os.urandom(1 << 20))
        t = time.time() - 100 + i
        os.utime(tmp_path / "spool" / "ready" / f"rec{i}", (t, t))
    fw.enforce_bound()
    left = sorted(p.name for p in (tmp_path / "spool" / "ready").iterdir())
    assert left == ["rec1", "rec2"] and fw.stats.dropped == 1 and fw.stats.pending == 2
    shutil.rmtree(tmp_path / "spool" / "ready" / "rec1")
    fw.enforce_bound()
    assert fw.stats.dropped == 1 and fw.stats.pending == 1

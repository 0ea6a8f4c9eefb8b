"""Atomic writes never leave a half-written file; source specs parse or fail clearly."""

from __future__ import annotations

import os

import pytest

from wallwm.data.sources import parse_source_spec
from wallwm.util.atomic import atomic_dir, atomic_write_bytes, atomic_write_text, sha256_file


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "a" / "f.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two", mode=0o600)
    assert p.read_text() == "two" and (p.stat().st_mode & 0o777) == 0o600
    assert [x.name for x in p.parent.iterdir()] == ["f.txt"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(p, b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_dir_is_all_or_nothing(tmp_path):
    final = tmp_path / "build"
    with atomic_dir(final) as d:
        (d / "x").write_text("1")
    assert (final / "x").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(final) as d:
        (d / "y").write_text("2")
        raise RuntimeError("interrupted")
    assert sorted(x.name for x in final.iterdir()) == ["x"]
    assert [x.name for x in tmp_path.iterdir()] == ["build"]
    assert len(sha256_file(final / "x")) == 64


def test_source_spec_parsing():
    s = parse_source_spec("sim:episodes=20,tasks=pick-place-v3+push-v3")
    assert s.name == "sim" and s.options == {"episodes": "20", "tasks": "pick-place-v3+push-v3"}
    assert parse_source_spec("video_folder").options == {}
    for bad in ("9bad:x=1", "sim:episodes", "sim:=3"):
        with pytest.raises(ValueError, match="source spec"):
            parse_source_spec(bad)

"""The pre-start clean-up of the S3 folder removes nanio's own temp files and nothing else."""

from __future__ import annotations

import uuid
from pathlib import Path

from components.stack.lifecycle import _prestart


def _put(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_only_nanios_own_temp_files_go(tmp_path):
    data = tmp_path / "s3"
    bucket = data / "wallwm-dvc"
    meta = bucket / ".nanio-meta"
    put_temp = _put(bucket / "big" / f".tmp.{uuid.uuid4().hex}", b"partial")  # killed PUT
    top_temp = _put(bucket / f".tmp.{uuid.uuid4().hex}")
    meta_temp = _put(meta / "persist" / "blob.json.tmp")  # killed sidecar write (O_EXCL path)
    keep = [
        _put(bucket / "notes" / ".tmp.keepme", b"mine"),  # a user's object
        _put(meta / "notes" / ".tmp.keepme.json", b"{}"),  # ... and its metadata
        _put(bucket / ".tmp.deadbeef"),  # not a uuid4 hex: not nanio's name
        _put(bucket / f".tmp.{uuid.uuid4().hex.upper()}"),
        _put(bucket / "persist" / "blob"),
        _put(meta / "persist" / "blob.json", b"{}"),
        _put(data / ".nanio" / "multipart" / "u1" / "parts" / "000001.bin.tmp"),  # nanio's GC
    ]
    named = _put(bucket / "odd" / f".tmp.{uuid.uuid4().hex}", b"stored")  # has a sidecar:
    keep += [named, _put(meta / "odd" / f"{named.name}.json", b"{}")]  # an object, keep it
    _prestart("s3", data)
    assert not put_temp.exists() and not top_temp.exists() and not meta_temp.exists()
    assert [p for p in keep if not p.exists()] == []


def test_other_services_data_is_untouched(tmp_path):
    f = _put(tmp_path / "mlflow" / f".tmp.{uuid.uuid4().hex}")
    _prestart("mlflow", tmp_path / "mlflow")
    assert f.exists()

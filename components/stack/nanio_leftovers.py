"""Remove what a killed nanio 0.1.7 leaves behind, and nothing a user stored.

nanio stages every PUT in the object's folder as `.tmp.<uuid4 hex>` (`storage/filesystem.py`:
`final.parent / f".tmp.{uuid.uuid4().hex}"`) and renames it into place; a process killed in
between leaves the temp file, which then lists as an object. Its metadata sidecars are written
through `<sidecar>.json.tmp` opened with O_EXCL (`storage/paths.py: atomic_write`), so a
leftover one makes every later PUT of that key fail. Both names are matched exactly: a user's
object such as `notes/.tmp.keepme` is never touched, nor is anything nanio has a sidecar for
(a temp file never has one; it is written after the rename). Abandoned multipart uploads under
`.nanio/multipart/` are nanio's own business: `nanio serve --gc-abandoned-uploads` (in
infra/local/services.yaml) deletes those older than 7 days at start-up.
"""

from __future__ import annotations

import re
from pathlib import Path

META_DIR = ".nanio-meta"  # nanio.storage.paths.META_DIR_NAME
INTERNAL_PREFIX = ".nanio"  # nanio.storage.paths.is_internal_name
PUT_TEMP = re.compile(r"\.tmp\.[0-9a-f]{32}")  # ".tmp." + uuid.uuid4().hex


def _sidecar(bucket: Path, obj: Path) -> Path:
    return bucket / META_DIR / (obj.relative_to(bucket).as_posix() + ".json")


def nanio_leftovers(data_dir: Path) -> list[Path]:
    """nanio's own temp files under its `--data-dir` (one folder per bucket)."""
    found: list[Path] = []
    if not data_dir.is_dir():
        return found
    for bucket in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        if bucket.name.startswith(INTERNAL_PREFIX):
            continue  # .nanio/multipart: nanio's GC owns it
        meta = bucket / META_DIR
        for f in bucket.rglob(".tmp.*"):
            if (
                f.is_file()
                and not f.is_symlink()
                and meta not in f.parents
                and PUT_TEMP.fullmatch(f.name)
                and not _sidecar(bucket, f).exists()
            ):
                found.append(f)
        if meta.is_dir():
            found.extend(f for f in meta.rglob("*.json.tmp") if f.is_file() and not f.is_symlink())
    return found


def remove_nanio_leftovers(data_dir: Path) -> list[Path]:
    """Delete `nanio_leftovers(data_dir)`; only while no nanio serves that folder."""
    gone = nanio_leftovers(data_dir)
    for f in gone:
        f.unlink(missing_ok=True)
    return gone

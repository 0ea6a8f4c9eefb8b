"""Content digests of source files for build fingerprints.

Metadata and sidecars are hashed whole; a large video by its size plus its first and last MiB
(hashing every byte of a terabyte of video on each build plan would be the bottleneck).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SAMPLE_BYTES = 1 << 20


def update_with_file(h: hashlib._Hash, path: Path, whole: bool) -> None:
    """Feed `path` (name, size and content or sampled content) into the running hash `h`."""
    size = path.stat().st_size
    h.update(f"{path.name}:{size}\n".encode())
    with open(path, "rb") as f:
        if whole or size <= 2 * SAMPLE_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(SAMPLE_BYTES))
            f.seek(size - SAMPLE_BYTES)
            h.update(f.read())


def file_digest(path: Path, whole: bool) -> str:
    h = hashlib.sha256()
    update_with_file(h, path, whole)
    return h.hexdigest()

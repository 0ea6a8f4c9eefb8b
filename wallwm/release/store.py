"""Where a release repository's files live: a small key -> bytes interface.

`wallwm/release` knows no service client; `components/storage/release_store.py` implements
the same interface on S3 through boto3. `DirStore` (a local folder) serves tests, air-gapped
mirrors and plain HTTP hosting (any static file server in front of the folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from wallwm.release.bundle import check_relpath
from wallwm.util.atomic import atomic_write_bytes


class Store(Protocol):
    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write (replace) the object; readers see the old or the new bytes, never a mix."""

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        """Upload a local file (large targets stream; `sha256` is kept as metadata)."""

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (sorted)."""

    def delete(self, key: str) -> None: ...


class DirStore:
    """A folder as a Store: key `a/b/c` is the file `<root>/a/b/c`."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        check_relpath(key, "store key")
        return self.root / key

    def get(self, key: str) -> bytes | None:
        p = self._path(key)
        return p.read_bytes() if p.is_file() else None

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        atomic_write_bytes(self._path(key), data)

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        atomic_write_bytes(self._path(key), Path(path).read_bytes())

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*")
                      if p.is_file() and p.relative_to(base).as_posix().startswith(prefix))

    def delete(self, key: str) -> None:
        p = self._path(key)
        if p.exists():
            p.unlink()

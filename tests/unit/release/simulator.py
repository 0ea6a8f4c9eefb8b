"""A release repository simulator behind python-tuf's fetcher interface (python-tuf's testing
pattern, rebuilt for our repository code).

`MemoryStore` is the bucket: our real `Repository` publishes into it with real keys, and
`Simulator` serves it to a real `ReleaseClient` (and thereby `tuf.ngclient.Updater`) with no
network. Attacks are plain edits of the stored bytes (`tamper`, `replay`, `swap`) or metadata
re-signed with chosen versions, expiries or keys (`resign`), so each test says in a line
what the attacker does and then asserts that the client refuses.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

from securesystemslib.signer import Signer
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer

from wallwm.release.client import RangeFetcher

BASE = "https://releases.example"


class MemoryStore:
    """The Store interface over a dict (key -> bytes)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def put(self, key: str, data: bytes, content_type: str = "") -> None:
        self.objects[key] = bytes(data)

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        self.objects[key] = Path(path).read_bytes()

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)


class Simulator(RangeFetcher):
    """Serves `store` at BASE/<key>; records every fetched key; can cut a download short."""

    def __init__(self, store: MemoryStore):
        self.store = store
        self.fetched: list[tuple[str, int]] = []
        self.cut_after: int | None = None  # bytes; then the connection "drops"
        self.on_fetch: Callable[[str], None] | None = None

    def _key(self, url: str) -> str:
        if not url.startswith(BASE + "/"):
            raise DownloadHTTPError(f"unknown host in {url}", 404)
        return url[len(BASE) + 1:]

    def _serve(self, url: str, start: int) -> Iterator[bytes]:
        key = self._key(url)
        if self.on_fetch:
            self.on_fetch(key)
        data = self.store.get(key)
        if data is None:
            raise DownloadHTTPError(f"{key} not found", 404)
        self.fetched.append((key, start))
        body = data[start:]
        if self.cut_after is not None:
            limit, self.cut_after = self.cut_after, None
            return _cut(body, limit)
        return iter([body[i:i + 4096] for i in range(0, len(body), 4096)])

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._serve(url, 0)

    def fetch_range(self, url: str, start: int) -> Iterator[bytes]:
        return self._serve(url, start)

    # ------------------------------------------------------------------ attacks
    def tamper(self, key: str, fn: Callable[[bytes], bytes]) -> None:
        self.store.objects[key] = fn(self.store.objects[key])


def _cut(body: bytes, limit: int) -> Iterator[bytes]:
    yield body[:limit]
    raise ConnectionResetError("simulated connection drop")


def resign(store: MemoryStore, key: str, signers: list[Signer], *,
           version: int | None = None, expires: dt.datetime | None = None,
           edit: Callable[[Metadata], None] | None = None) -> bytes:
    """Rewrite the metadata at `key` with changed fields, signed by `signers`."""
    md = Metadata.from_bytes(store.objects[key])
    if version is not None:
        md.signed.version = version
    if expires is not None:
        md.signed.expires = expires
    if edit:
        edit(md)
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    raw = md.to_bytes(JSONSerializer(compact=False))
    store.objects[key] = raw
    return raw

"""The robot's side of TUF: verified release metadata and verified, resumable bundle downloads.

Workflow (one `ReleaseClient.refresh()` per poll):

1. A fresh `tuf.ngclient.Updater(..., bootstrap=trusted_root)` walks the root chain (any
   number of rotations), then timestamp -> snapshot -> targets, refusing expired, rolled
   back, mixed, oversized or badly signed metadata (python-tuf does these checks).
2. `releases()` lists the verified release index (the targets metadata the Updater just
   verified and stored); `check_compat` filters it before anything is downloaded.
3. `download(version, dest)` fetches `<version>/manifest.json` through TUF, then every
   file the manifest lists: each must be a TUF target with the same length and sha256, is
   written as `<dest>/.parts/<sha256>.part` with HTTP/S3 range requests (an interrupted
   download resumes where it stopped), may never exceed its signed length (endless data),
   and is renamed into place only after its hash matches. Last, `verify_bundle` checks the
   folder as a whole (no stray files, no symlinks).

Transport is a `RangeFetcher` (a python-tuf `FetcherInterface` that can also resume);
`components/robot_agent/transport.py` has HTTP and S3 ones, tests a repository simulator.
"""

from __future__ import annotations

import abc
import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, TargetFile
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from wallwm.release.bundle import (
    MANIFEST,
    BundleError,
    Manifest,
    check_relpath,
    parse_manifest,
    safe_join,
    verify_bundle,
)
from wallwm.release.compat import CUSTOM_KEY
from wallwm.util.atomic import atomic_write_bytes

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class ReleaseClientError(RuntimeError):
    """A release could not be verified or fetched. `kind` is a stable machine-readable word."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class RangeFetcher(FetcherInterface):
    """A FetcherInterface that can also fetch `url` from byte `start` on."""

    @abc.abstractmethod
    def fetch_range(self, url: str, start: int) -> Iterator[bytes]:
        """Bytes of `url` from `start` to the end; raise DownloadHTTPError on HTTP errors.
        A server that ignores the range must raise RangeNotSatisfied (then start over)."""


class RangeIgnored(Exception):
    """The server answered a range request with the whole object."""


def classify(e: BaseException) -> str:
    """A short word for a failure, used in statuses and reports."""
    cause = e
    while cause is not None:  # fetchers' errors arrive wrapped in tuf's DownloadError
        if isinstance(cause, ReleaseClientError):
            return cause.kind
        cause = cause.__cause__
    if isinstance(e, ReleaseClientError):
        return e.kind
    if isinstance(e, tuf_exc.ExpiredMetadataError):
        return "metadata_expired"
    if isinstance(e, tuf_exc.BadVersionNumberError):
        return "metadata_rollback"
    if isinstance(e, tuf_exc.UnsignedMetadataError):
        return "bad_signature"
    if isinstance(e, tuf_exc.LengthOrHashMismatchError):
        return "hash_mismatch"
    if isinstance(e, tuf_exc.DownloadLengthMismatchError):
        return "oversized"
    if isinstance(e, tuf_exc.RepositoryError):
        return "metadata_invalid"
    if isinstance(e, tuf_exc.DownloadError):
        return "download_failed"
    if isinstance(e, BundleError):
        return "bundle_invalid"
    from wallwm.release.signing import SignatureError

    if isinstance(e, SignatureError):
        return "bad_signature"
    if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
        return "disk_full"
    if isinstance(e, ConnectionError | TimeoutError):
        return "download_failed"
    return "error"


def describe(e: BaseException) -> str:
    """The message of a failure, with the root cause a wrapper (tuf's DownloadError) hides."""
    msg = str(e) or type(e).__name__
    cause = e.__cause__
    while cause is not None:
        if isinstance(cause, ReleaseClientError) or cause.__cause__ is None:
            return f"{msg}: {cause}" if str(cause) and str(cause) not in msg else msg
        cause = cause.__cause__
    return msg


@dataclass
class Progress:
    file: str
    done: int
    total: int


class ReleaseClient:
    """TUF-verified access to one channel for one robot."""

    def __init__(self, metadata_dir: Path | str, base_url: str, fetcher: RangeFetcher,
                 trusted_root: bytes, config: UpdaterConfig | None = None):
        self.metadata_dir = Path(metadata_dir)
        self.base_url = base_url.rstrip("/")
        self.fetcher = fetcher
        self.trusted_root = trusted_root
        self.config = config or UpdaterConfig()
        self._updater: Updater | None = None

    # ------------------------------------------------------------------ metadata
    def refresh(self) -> None:
        """Load and verify the newest metadata (raises tuf exceptions on every attack)."""
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self._updater = Updater(str(self.metadata_dir), f"{self.base_url}/metadata/",
                                None, f"{self.base_url}/targets/", self.fetcher,
                                self.config, bootstrap=self.trusted_root)
        self._updater.refresh()

    @property
    def updater(self) -> Updater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def current_root(self) -> bytes:
        """The newest root this client verified (store it as the next bootstrap)."""
        _ = self.updater  # refreshes first when needed
        return (self.metadata_dir / "root.json").read_bytes()

    def versions(self) -> dict[str, int]:
        """Versions of the verified top-level metadata (for statuses)."""
        out = {}
        for role in ("root", "timestamp", "snapshot", "targets"):
            p = self.metadata_dir / f"{role}.json"
            if p.exists():
                out[role] = Metadata.from_bytes(p.read_bytes()).signed.version
        return out

    def releases(self) -> list[dict[str, Any]]:
        """The custom records of every release in the verified index."""
        _ = self.updater  # refreshes first when needed
        md = Metadata.from_bytes((self.metadata_dir / "targets.json").read_bytes())
        out = []
        for path, tf in md.signed.targets.items():
            c = (tf.custom or {}).get(CUSTOM_KEY) or {}
            if path.endswith("/" + MANIFEST) and c.get("kind") == "bundle-manifest":
                out.append(dict(c))
        return out

    def release(self, version: str) -> dict[str, Any]:
        info = self.updater.get_targetinfo(f"{version}/{MANIFEST}")
        if info is None:
            raise ReleaseClientError("not_found", f"release {version} is not in the signed "
                                     f"index of {self.base_url}")
        custom = (info.custom or {}).get(CUSTOM_KEY) or {}
        if custom.get("version") != version:
            raise ReleaseClientError("metadata_invalid", f"target {info.path}: custom version "
                                     f"{custom.get('version')!r} != {version}")
        return dict(custom)

    # ------------------------------------------------------------------ files
    def _target_url(self, tf: TargetFile) -> str:
        d, sep, name = tf.path.rpartition("/")
        return f"{self.base_url}/targets/{d}{sep}{tf.hashes['sha256']}.{name}"

    def _fetch_file(self, tf: TargetFile, dest: Path, parts: Path,
                    progress: Callable[[Progress], None] | None) -> None:
        """Resumable download of one target into `dest`, verified against its TUF info."""
        sha = tf.hashes.get("sha256")
        if not sha:
            raise ReleaseClientError("metadata_invalid", f"target {tf.path} has no sha256")
        if dest.exists():
            try:
                with open(dest, "rb") as f:
                    tf.verify_length_and_hashes(f)
                return
            except tuf_exc.LengthOrHashMismatchError:
                dest.unlink()
        parts.mkdir(parents=True, exist_ok=True)
        part = parts / f"{sha}.part"
        have = part.stat().st_size if part.exists() else 0
        if have > tf.length:
            part.unlink()
            have = 0
        url = self._target_url(tf)
        if have < tf.length:
            try:
                chunks = self.fetcher.fetch_range(url, have) if have else self.fetcher.fetch(url)
            except RangeIgnored:
                have, chunks = 0, self.fetcher.fetch(url)
            mode = "ab" if have else "wb"
            with open(part, mode) as f:
                for chunk in chunks:
                    have += len(chunk)
                    if have > tf.length:
                        raise tuf_exc.DownloadLengthMismatchError(
                            f"{tf.path}: server sent more than the signed length {tf.length} "
                            "(endless data or a substituted file)")
                    f.write(chunk)
                    if progress:
                        progress(Progress(tf.path, have, tf.length))
                f.flush()
                os.fsync(f.fileno())
        try:
            with open(part, "rb") as f:
                tf.verify_length_and_hashes(f)
        except tuf_exc.LengthOrHashMismatchError:
            part.unlink()  # never resume from bytes that do not hash right
            raise
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)

    def download(self, version: str, dest: Path | str,
                 progress: Callable[[Progress], None] | None = None) -> Manifest:
        """Fetch and verify the whole bundle of `version` into the folder `dest`."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        parts = dest / ".parts"
        mtf = self.updater.get_targetinfo(f"{version}/{MANIFEST}")
        if mtf is None:
            raise ReleaseClientError("not_found", f"release {version} is not in the signed index")
        mdest = dest / ".manifest.json"
        self._fetch_file(mtf, mdest, parts, progress)
        manifest = parse_manifest(mdest.read_bytes(), f"{version}/{MANIFEST}")
        for rel, entry in sorted(manifest.files.items()):
            check_relpath(rel, f"{version}/{MANIFEST} files")
            tf = self.updater.get_targetinfo(f"{version}/{rel}")
            if tf is None:
                raise ReleaseClientError("metadata_invalid", f"{version}/{rel} is listed in the "
                                         "manifest but is not a signed target")
            if tf.length != entry.size or tf.hashes.get("sha256") != entry.sha256:
                raise ReleaseClientError("metadata_invalid", f"{version}/{rel}: signed target "
                                         "and manifest disagree on length or sha256")
            self._fetch_file(tf, safe_join(dest, rel, f"{version}/{MANIFEST} files"), parts,
                             progress)
        shutil.rmtree(parts, ignore_errors=True)
        atomic_write_bytes(dest / MANIFEST, mdest.read_bytes())
        mdest.unlink()
        verified = verify_bundle(dest)
        return verified


def manifest_digest(bundle_dir: Path | str) -> str:
    import hashlib

    return hashlib.sha256((Path(bundle_dir) / MANIFEST).read_bytes()).hexdigest()


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())

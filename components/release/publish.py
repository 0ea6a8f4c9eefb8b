"""Publishing a bundle to an S3 channel: the function the promotion step calls.

`publish_release(bundle_dir, channel, version)` verifies the bundle, uploads its files as TUF
targets under `s3://<release.bucket>/<channel>/targets/` and signs a new release index
(targets -> snapshot -> timestamp). Keys come from `<WALLWM_HOME>/release-keys` unless given;
they are generated there on first use (root 2-of-2, the other roles 1-of-1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from components.stack.home import wallwm_home
from components.storage.release_store import S3Store, channel_store
from components.storage.s3 import ensure_buckets
from wallwm.config.schema import ReleaseParams
from wallwm.release.keys import KeyRing
from wallwm.release.tuf_repo import Expiry, Repository, publish_lock

KEYS_ENV = "WALLWM_RELEASE_KEYS"


def default_keys_dir() -> Path:
    return Path(os.environ.get(KEYS_ENV) or wallwm_home() / "release-keys")


def keyring(keys_dir: Path | str | None = None, create: bool = True) -> KeyRing:
    """The key folder, created on first use (local default) unless `create` is False."""
    d = Path(keys_dir or default_keys_dir())
    ring = KeyRing(d)
    if not ring.roles:
        if not create:
            raise FileNotFoundError(f"{d / 'keys.json'} missing: run `wallwm release keys init`")
        ring = KeyRing.create(d)
    return ring


def repository(channel: str, params: ReleaseParams | None = None,
               keys_dir: Path | str | None = None, store: S3Store | None = None,
               expiry: Expiry | None = None) -> Repository:
    p = params or ReleaseParams()
    return Repository(store or channel_store(p.bucket), keyring(keys_dir), channel,
                      expiry or Expiry.from_days(p.metadata_expiry_days))


def publish_release(bundle_dir: Path | str, channel: str, version: str, *,
                    params: ReleaseParams | None = None, keys_dir: Path | str | None = None,
                    store: S3Store | None = None, expiry: Expiry | None = None
                    ) -> dict[str, Any]:
    """Publish `bundle_dir` as `version` on `channel`; returns the release record.

    Idempotent for the same bundle and version; raises BundleError for a bad bundle and
    RepositoryError for a version already published with other content."""
    p = params or ReleaseParams()
    store = store or channel_store(p.bucket)
    ensure_buckets(store.client, [store.bucket])
    ring = keyring(keys_dir)
    with publish_lock(ring.root):
        repo = Repository(store, ring, channel, expiry or Expiry.from_days(p.metadata_expiry_days))
        info = repo.add_release(bundle_dir, version)
    out = info.to_json()
    out["repo_url"] = f"s3://{store.bucket}/{repo.channel}"
    return out

"""The publishing side of The Update Framework for one channel (python-tuf's Metadata API).

A channel is one TUF repository under a prefix of a Store (an S3 bucket, a folder):

```
<channel>/metadata/<N>.root.json    every root version (clients walk them in order)
<channel>/metadata/root.json        the newest root (to provision robots)
<channel>/metadata/<N>.targets.json the signed release index: one target per bundle file
<channel>/metadata/<N>.snapshot.json
<channel>/metadata/timestamp.json   the only object ever overwritten
<channel>/targets/<version>/<dir>/<sha256>.<name>   bundle files (consistent snapshots)
```

Writes go in the order a reader needs them: target files, then targets, snapshot and last
the timestamp, so a robot polling mid-publish sees the old release or the new one, never a
mix. Each bundle file is a target `<version>/<path>` with its length and sha256 (tampering,
endless data); the manifest target carries the engine compatibility in `custom.wallwm`.
Root, targets, snapshot and timestamp each have their own keys and threshold
(`wallwm/release/keys.py`); `rotate_keys` replaces a role's keys through a new root version
signed by both the old and the new root keys, so robots that were offline through any number
of rotations walk the chain and end up trusting only the new keys.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version
from securesystemslib.signer import Key
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from wallwm.release.bundle import MANIFEST, BundleError, verify_bundle
from wallwm.release.compat import CUSTOM_KEY, file_custom, release_custom
from wallwm.release.keys import KeyRing, generate_file_key
from wallwm.release.store import Store
from wallwm.util.atomic import atomic_write_text

SPEC_VERSION = "1.0.31"
_SERIALIZER = JSONSerializer(compact=False)


class RepositoryError(RuntimeError):
    """The repository cannot be read or written as asked; the message says why."""


@dataclass(frozen=True)
class Expiry:
    """How long each role's signature stays valid (freeze-attack window)."""

    root: dt.timedelta = dt.timedelta(days=365)
    targets: dt.timedelta = dt.timedelta(days=7)
    snapshot: dt.timedelta = dt.timedelta(days=7)
    timestamp: dt.timedelta = dt.timedelta(days=7)

    @classmethod
    def from_days(cls, metadata_expiry_days: int, root_days: int = 365) -> Expiry:
        """`release.metadata_expiry_days` for targets, snapshot and timestamp."""
        d = dt.timedelta(days=metadata_expiry_days)
        return cls(root=dt.timedelta(days=root_days), targets=d, snapshot=d, timestamp=d)


def parse_release_version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise RepositoryError(f"release version {text!r} is not a PEP 440 version "
                              "(e.g. 1.4.0, 1.4.0rc1)") from None


def channel_prefix(channel: str) -> str:
    """`stable`, `canary` or `<fleet>/<channel>`; lower-case names, no other separators."""
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)?", channel or ""):
        raise RepositoryError(f"channel {channel!r}: use a name like stable, canary or "
                              "<fleet>/stable (lower-case letters, digits, . _ -)")
    return channel


@dataclass
class ReleaseInfo:
    version: str
    channel: str
    custom: dict[str, Any]
    targets_version: int
    new: bool = True  # False: this bundle was already published as this version

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "channel": self.channel,
                "targets_version": self.targets_version, "new": self.new, **self.custom}


def _expires(delta: dt.timedelta) -> dt.datetime:
    return (dt.datetime.now(dt.UTC) + delta).replace(microsecond=0)


def target_key(prefix: str, tf: TargetFile) -> str:
    """Store key of a target under consistent snapshots: `<dir>/<sha256>.<name>`."""
    d, sep, name = tf.path.rpartition("/")
    return f"{prefix}/targets/{d}{sep}{tf.hashes['sha256']}.{name}"


class Repository:
    """One channel's TUF repository inside `store`."""

    def __init__(self, store: Store, keys: KeyRing, channel: str, expiry: Expiry | None = None):
        self.store, self.keys = store, keys
        self.channel = channel_prefix(channel)
        self.expiry = expiry or Expiry()

    # ------------------------------------------------------------------ paths and io
    def _mkey(self, name: str) -> str:
        return f"{self.channel}/metadata/{name}"

    def _read(self, name: str) -> Metadata:
        raw = self.store.get(self._mkey(name))
        if raw is None:
            raise RepositoryError(f"{self._mkey(name)} is missing; is channel {self.channel!r} "
                                  "initialised (`wallwm release publish` creates it)?")
        return Metadata.from_bytes(raw)

    def exists(self) -> bool:
        return self.store.exists(self._mkey("timestamp.json"))

    def _sign(self, md: Metadata, role: str, extra: list | None = None) -> bytes:
        md.signatures.clear()
        for s in self.keys.signers(role) + list(extra or []):
            md.sign(s, append=True)
        return md.to_bytes(_SERIALIZER)

    def root_bytes(self) -> bytes:
        """The newest root (what a new robot is provisioned with)."""
        raw = self.store.get(self._mkey("root.json"))
        if raw is None:
            raise RepositoryError(f"{self._mkey('root.json')} missing; channel not initialised")
        return raw

    def load(self, root_keyids: set[str] | None = None
             ) -> tuple[Metadata, Metadata, Metadata, Metadata]:
        """(root, timestamp, snapshot, targets) as published now, each checked against our
        keys: the bucket is not trusted, so a publisher never re-signs what someone else
        wrote there. `root_keyids` overrides the keyring's root keys (mid-rotation)."""
        root = self._read("root.json")
        mine = root_keyids or {k.keyid for k in self.keys.role("root").public_keys()}
        if set(root.signed.roles["root"].keyids) != mine:
            raise RepositoryError(f"{self._mkey('root.json')} names root keys other than "
                                  f"{self.keys.root / 'keys.json'}; restore it from "
                                  "<N>.root.json or a backup")
        self._check(root, "root", root, "root.json")
        ts = self._read("timestamp.json")
        self._check(root, "timestamp", ts, "timestamp.json")
        snap_v = ts.signed.snapshot_meta.version
        mark = self._mark()
        if mark and ts.signed.version < mark["timestamp"]:
            # the bucket went back in time (a replayed or restored timestamp): continue from
            # what this publisher last wrote, so the next version is above anything robots saw
            ts.signed.version, snap_v = mark["timestamp"], max(snap_v, mark["snapshot"])
        sname = f"{snap_v}.snapshot.json"
        snap = self._read(sname)
        self._check(root, "snapshot", snap, sname)
        tname = f"{snap.signed.meta['targets.json'].version}.targets.json"
        targets = self._read(tname)
        self._check(root, "targets", targets, tname)
        return root, ts, snap, targets

    def _check(self, root: Metadata, role: str, md: Metadata, name: str) -> None:
        from tuf.api.exceptions import UnsignedMetadataError

        try:
            root.verify_delegate(role, md)
        except (UnsignedMetadataError, ValueError) as e:
            raise RepositoryError(f"{self._mkey(name)} is not signed by this channel's {role} "
                                  f"keys ({e}): written by someone else; restore the previous "
                                  "object from a backup before publishing") from e

    # ------------------------------------------------------------------ creation
    def create(self) -> None:
        """Root v1 with every role's keys, then empty targets, snapshot and timestamp."""
        if self.store.exists(self._mkey("1.root.json")):
            raise RepositoryError(f"channel {self.channel!r} already has a root")
        root = Root(expires=_expires(self.expiry.root), consistent_snapshot=True)
        for role in ("root", "targets", "snapshot", "timestamp"):
            rk = self.keys.role(role)
            for k in rk.public_keys():
                root.add_key(k, role)
            root.roles[role].threshold = rk.threshold
        md = Metadata(root)
        self._write_root(md, self._sign(md, "root"))
        targets = Metadata(Targets(expires=_expires(self.expiry.targets)))
        snap = Metadata(Snapshot(expires=_expires(self.expiry.snapshot)))
        ts = Metadata(Timestamp(expires=_expires(self.expiry.timestamp)))
        self._publish(targets, snap, ts, bump=False)

    def _write_root(self, md: Metadata, raw: bytes) -> None:
        self.store.put(self._mkey(f"{md.signed.version}.root.json"), raw, "application/json")
        self.store.put(self._mkey("root.json"), raw, "application/json")

    def _publish(self, targets: Metadata, snap: Metadata, ts: Metadata,
                 bump: bool = True) -> None:
        """Bump and sign targets -> snapshot -> timestamp; write them in that order."""
        targets.signed.version += int(bump)
        targets.signed.expires = _expires(self.expiry.targets)
        t_raw = self._sign(targets, "targets")
        self.store.put(self._mkey(f"{targets.signed.version}.targets.json"), t_raw,
                       "application/json")
        snap.signed.version += int(bump)
        snap.signed.expires = _expires(self.expiry.snapshot)
        snap.signed.meta["targets.json"] = MetaFile(
            targets.signed.version, len(t_raw), {"sha256": hashlib.sha256(t_raw).hexdigest()})
        s_raw = self._sign(snap, "snapshot")
        self.store.put(self._mkey(f"{snap.signed.version}.snapshot.json"), s_raw,
                       "application/json")
        self._write_timestamp(ts, snap.signed.version, s_raw, bump)

    def _write_timestamp(self, ts: Metadata, snap_version: int, s_raw: bytes,
                         bump: bool = True) -> None:
        ts.signed.version += int(bump)
        ts.signed.expires = _expires(self.expiry.timestamp)
        ts.signed.snapshot_meta = MetaFile(snap_version, len(s_raw),
                                           {"sha256": hashlib.sha256(s_raw).hexdigest()})
        self.store.put(self._mkey("timestamp.json"), self._sign(ts, "timestamp"),
                       "application/json")
        self._set_mark(ts.signed.version, snap_version)

    # the publisher's high-water mark per channel (beside the keys, 0600)
    def _mark_path(self) -> Path:
        return self.keys.root / "channels" / (self.channel.replace("/", "__") + ".json")

    def _mark(self) -> dict[str, int] | None:
        p = self._mark_path()
        return json.loads(p.read_text()) if p.exists() else None

    def _set_mark(self, ts_version: int, snap_version: int) -> None:
        atomic_write_text(self._mark_path(), json.dumps({"timestamp": ts_version,
                                                         "snapshot": snap_version}), mode=0o600)

    # ------------------------------------------------------------------ releases
    def releases(self) -> list[ReleaseInfo]:
        """Every release in the signed index, oldest version first."""
        _, _, _, targets = self.load()
        out = []
        for path, tf in targets.signed.targets.items():
            c = (tf.custom or {}).get(CUSTOM_KEY, {})
            if path.endswith("/" + MANIFEST) and c.get("kind") == "bundle-manifest":
                out.append(ReleaseInfo(c["version"], self.channel, c, targets.signed.version))
        return sorted(out, key=lambda r: parse_release_version(r.version))

    def add_release(self, bundle_dir: Path | str, version: str) -> ReleaseInfo:
        """Verify the bundle, upload its files, and sign a new index that lists it.

        Publishing the same bundle again under the same version is a no-op; another bundle
        under a published version is refused (versions are immutable)."""
        parse_release_version(version)
        root = Path(bundle_dir)
        manifest = verify_bundle(root)
        raw_manifest = (root / MANIFEST).read_bytes()
        m_sha = hashlib.sha256(raw_manifest).hexdigest()
        if not self.exists():
            self.create()
        _, ts, snap, targets = self.load()
        mpath = f"{version}/{MANIFEST}"
        old = targets.signed.targets.get(mpath)
        if old is not None:
            if old.hashes.get("sha256") == m_sha:
                return ReleaseInfo(version, self.channel, old.custom[CUSTOM_KEY],
                                   targets.signed.version, new=False)
            raise RepositoryError(f"channel {self.channel}: version {version} is already "
                                  "published with another bundle; publish a new version")
        files: list[tuple[TargetFile, Path]] = []
        for rel, entry in sorted(manifest.files.items()):
            tf = TargetFile(entry.size, {"sha256": entry.sha256}, f"{version}/{rel}",
                            {"custom": {CUSTOM_KEY: file_custom(manifest, version, rel)}})
            files.append((tf, root / rel))
        custom = release_custom(manifest, version, m_sha)
        mtf = TargetFile(len(raw_manifest), {"sha256": m_sha}, mpath, {"custom": {CUSTOM_KEY:
                                                                                  custom}})
        files.append((mtf, root / MANIFEST))
        for tf, path in files:
            key = target_key(self.channel, tf)
            if not self.store.exists(key):
                self.store.put_file(key, path, tf.hashes["sha256"])
        for tf, _ in files:
            targets.signed.targets[tf.path] = tf
        self._publish(targets, snap, ts)
        return ReleaseInfo(version, self.channel, custom, targets.signed.version)

    def refresh_timestamp(self) -> int:
        """Re-sign the timestamp (new version, new expiry): robots keep seeing a fresh repo."""
        _, ts, snap, _ = self.load()
        s_raw = self.store.get(self._mkey(f"{snap.signed.version}.snapshot.json")) or b""
        self._write_timestamp(ts, snap.signed.version, s_raw)
        return ts.signed.version

    def refresh_all(self) -> None:
        """Re-sign targets, snapshot and timestamp with new versions and expiries."""
        _, ts, snap, targets = self.load()
        self._publish(targets, snap, ts)


# ----------------------------------------------------------------------------- rotation
def rotate_keys(keys: KeyRing, repos: list[Repository], role: str, *,
                count: int = 1, threshold: int | None = None,
                new_keys: list[tuple[str, Key]] | None = None) -> list[str]:
    """Replace every key of `role` in all `repos` (one new root version each).

    `new_keys` are (signer URI, public key) pairs, e.g. KMS keys; by default `count` new file
    keys are generated. Each new root is signed by the old root keys and by the new ones (TUF
    requires both thresholds when root itself rotates). The key index is saved with the
    rotation marked pending before any channel changes, so calling this again after a crash
    finishes the same rotation instead of starting another. Returns the new key ids."""
    if role not in ("root", "targets", "snapshot", "timestamp"):
        raise RepositoryError(f"role {role!r}: rotate one of root, targets, snapshot, timestamp")
    if role not in keys.pending:
        old_root = list(keys.role("root").keys)
        new = new_keys or [generate_file_key(keys.root, role) for _ in range(count)]
        thr = threshold or min(keys.role(role).threshold, len(new))
        old = keys.replace(role, new, thr)
        keys.pending[role] = {"old": old, "old_root": old_root}
        keys.save()
    pending = keys.pending[role]
    rk = keys.role(role)
    new_ids = [k["public"]["keyid"] for k in rk.keys]
    signers = {}
    for entry in pending["old_root"] + keys.role("root").keys:
        s = keys.load_signer(entry)
        signers[s.public_key.keyid] = s
    old_root_ids = {e["public"]["keyid"] for e in pending["old_root"]}
    for repo in repos:
        if set(repo._read("root.json").signed.roles[role].keyids) == set(new_ids):
            continue  # this channel was rotated before an interruption
        root_md, ts, snap, targets = repo.load(root_keyids=old_root_ids)
        r: Root = root_md.signed
        for keyid in list(r.roles[role].keyids):
            r.revoke_key(keyid, role)
        for k in rk.public_keys():
            r.add_key(k, role)
        r.roles[role].threshold = rk.threshold
        r.version += 1
        r.expires = _expires(repo.expiry.root)
        root_md.signatures.clear()
        for s in signers.values():
            root_md.sign(s, append=True)
        repo._write_root(root_md, root_md.to_bytes(_SERIALIZER))
        repo._publish(targets, snap, ts)  # re-signed with the new keys
    keys.retire(pending["old"])
    del keys.pending[role]
    keys.save()
    return new_ids


@contextmanager
def publish_lock(keys_dir: Path | str) -> Iterator[None]:
    """One publisher at a time per key folder (TUF versions must not interleave)."""
    path = Path(keys_dir) / ".publish.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


__all__ = ["BundleError", "Expiry", "ReleaseInfo", "Repository", "RepositoryError",
           "parse_release_version", "publish_lock", "rotate_keys"]

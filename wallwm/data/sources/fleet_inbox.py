"""The fleet inbox as a data source: intervention, correction and recovery episodes that robots
uploaded (components/robot_agent/flywheel.py), read into `t3_robot_real` builds.

Inbox layout (`url=s3://<bucket>/inbox/<fleet>` or a local copy at `path=`):

```
<inbox>/<sha256>/_entry.json      DSSE-signed by the robot: files (sha256, size), episodes, flags
<inbox>/<sha256>/meta/info.json   a LeRobot v3.0 dataset (+ meta/cameras.json calibration)
<inbox>/<sha256>/data/...  videos/...
```

An entry counts only once its `_entry.json` exists (robots write it last). With `verify=yes`
(the default for s3://) its signature must verify against the robot's key registered with the
director (`director/<fleet>/robots/<robot>.json` in the same bucket), so nobody but a fleet
robot can feed the training data. Each entry's files are copied into a local cache, checked
against their sha256, and read with the `lerobot` source at tier `t3_robot_real` (which
requires calibrated cameras and the three flags). Entries are content-addressed, so the
build fingerprint is the sorted list of entry hashes: a new upload changes it, a re-upload
does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

from wallwm.config.schema import DataParams
from wallwm.data.episode import Episode
from wallwm.data.sources.base import Source, SourceError, SourceSpec
from wallwm.data.sources.lerobot_import import LeRobotSource
from wallwm.release.keys import public_key_from_json
from wallwm.release.signing import INBOX_ENTRY, SignatureError, peek_document, verify_document

CODE_VERSION = "fleet_inbox/1"
ENTRY = "_entry.json"


def _filesystem(url: str):
    """An fsspec filesystem and the root path inside it (s3:// through s3fs, else local)."""
    import fsspec

    if url.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        fs = fsspec.filesystem(
            "s3", endpoint_url=endpoint, key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            client_kwargs={"region_name": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")},
            config_kwargs={"signature_version": "s3v4",
                           "s3": {"addressing_style": "path" if endpoint else "auto"}},
            use_listings_cache=False)
        return fs, url[len("s3://"):].rstrip("/")
    return fsspec.filesystem("file"), str(Path(url).expanduser().resolve())


class FleetInboxSource(Source):
    name = "fleet_inbox"
    tiers = ("t3_robot_real",)
    tier = "t3_robot_real"
    options: ClassVar[dict[str, str]] = {
        "url": "s3://<bucket>/inbox/<fleet> (the agents' inbox_url)",
        "path": "a local folder with the same layout (instead of url)",
        "cache": "local cache folder (default: $WALLWM_HOME/cache/fleet_inbox)",
        "verify": "yes|no: require a registered robot's signature on each entry "
                  "(default yes for url, no for path)",
        "registry": "where robots' keys are (default: director/<fleet>/robots beside inbox/)",
        "episodes": "load at most this many episodes (oldest uploads first)",
    }

    def __init__(self, spec: SourceSpec, params: DataParams):
        super().__init__(spec, params)
        url, path = spec.get("url"), spec.get("path")
        if bool(url) == bool(path):
            raise ValueError(f"source {spec}: give exactly one of url= (s3://bucket/inbox/fleet) "
                             "or path= (a local inbox folder)")
        self.url = url or str(path)
        default_verify = "yes" if url else "no"
        verify = (spec.get("verify") or default_verify).lower()
        if verify not in ("yes", "no"):
            raise ValueError(f"source {spec}: verify={verify!r}; allowed: yes, no")
        self.verify = verify == "yes"
        home = Path(os.environ.get("WALLWM_HOME") or Path.home() / ".cache" / "wallwm")
        self.cache = Path(spec.get("cache") or home / "cache" / "fleet_inbox").expanduser()
        limit = spec.get("episodes")
        try:
            self.limit = int(limit) if limit else None
        except ValueError:
            raise ValueError(f"source {spec}: episodes={limit!r} is not an integer") from None
        self.registry = spec.get("registry")
        self._entries: dict[str, dict[str, Any]] | None = None
        self._keys: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the inbox
    @property
    def fs_root(self):
        return _filesystem(self.url)

    def _registry_root(self, root: str) -> str:
        if self.registry:
            return self.registry.removeprefix("s3://").rstrip("/")
        parts = root.split("/")
        if len(parts) >= 2 and parts[-2] == "inbox":  # <bucket>/<...>/inbox/<fleet>
            return "/".join([*parts[:-2], "director", parts[-1], "robots"])
        raise ValueError(f"source {self.spec}: cannot derive the robot registry from {self.url};"
                         " pass registry=s3://<bucket>/director/<fleet>/robots")

    def _robot_keys(self, fs, root: str) -> dict[str, Any]:
        if self._keys is None:
            reg = self._registry_root(root)
            keys = {}
            for p in (fs.ls(reg, detail=False) if fs.exists(reg) else []):
                if p.endswith(".json"):
                    d = json.loads(fs.cat_file(p))
                    keys[d["robot_id"]] = public_key_from_json(d["public_key"])
            self._keys = keys
        return self._keys

    def _read_entry(self, fs, root: str, digest: str) -> dict[str, Any]:
        raw = fs.cat_file(f"{root}/{digest}/{ENTRY}")
        where = f"{self.url}/{digest}/{ENTRY}"
        if self.verify:
            robot = peek_document(raw).get("robot")
            key = self._robot_keys(fs, root).get(robot)
            if key is None:
                raise SourceError(f"{where}: robot {robot!r} is not registered with the "
                                  "director; entry not trusted", path=where, field="robot",
                                  value=robot, check="signature")
            try:
                body = verify_document(raw, INBOX_ENTRY, [key], source=where)
            except SignatureError as e:
                raise SourceError(str(e), path=where, field="signatures", check="signature") \
                    from e
        else:
            body = peek_document(raw)
        if body.get("hash") != digest:
            raise SourceError(f"{where}: entry hash {body.get('hash')!r} != its folder {digest}",
                              path=where, field="hash", value=body.get("hash"), check="entry")
        h = hashlib.sha256()
        for rel in sorted(body["files"]):
            h.update(f"{rel}\0{body['files'][rel]['sha256']}\n".encode())
        if h.hexdigest() != digest:
            raise SourceError(f"{where}: files do not hash to the entry id", path=where,
                              field="files", check="entry")
        return body

    def entries(self) -> dict[str, dict[str, Any]]:
        """hash -> entry body (unverified here; `load` verifies), oldest upload first."""
        if self._entries is None:
            fs, root = self.fs_root
            out = {}
            if fs.exists(root):
                for p in fs.ls(root, detail=False):
                    digest = p.rstrip("/").rsplit("/", 1)[-1]
                    if len(digest) == 64 and fs.exists(f"{p.rstrip('/')}/{ENTRY}"):
                        out[digest] = peek_document(fs.cat_file(f"{p.rstrip('/')}/{ENTRY}"))
            self._entries = dict(sorted(out.items(), key=lambda kv: (
                kv[1].get("uploaded_at", 0), kv[0])))
        return self._entries

    # ------------------------------------------------------------------ Source interface
    def fingerprint(self) -> str:
        h = hashlib.sha256(CODE_VERSION.encode())
        h.update(json.dumps(sorted(self.spec.options.items())).encode())
        for digest in sorted(self.entries()):
            h.update(digest.encode())
        return h.hexdigest()

    def unit_ids(self) -> list[str]:
        ids = [f"{d}/{i}" for d, e in self.entries().items() for i in range(int(e["episodes"]))]
        return ids[: self.limit] if self.limit is not None else ids

    def unit_identity(self, unit_id: str) -> dict[str, str]:
        digest, _, i = unit_id.partition("/")
        return {"source_id": f"inbox/{digest[:16]}/{i}", "tier": self.tier}

    def _fetch(self, digest: str) -> tuple[Path, dict[str, Any]]:
        """The entry's dataset in the local cache, every file checked against its sha256."""
        fs, root = self.fs_root
        body = self._read_entry(fs, root, digest)
        local = self.cache / digest
        done = local / ".complete"
        if done.exists():
            return local, body
        tmp = self.cache / f".{digest}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for rel, meta in sorted(body["files"].items()):
            if rel.startswith("/") or ".." in rel.split("/"):
                raise SourceError(f"{self.url}/{digest}: file path {rel!r} escapes the entry",
                                  path=f"{self.url}/{digest}", field="files", value=rel,
                                  check="entry")
            data = fs.cat_file(f"{root}/{digest}/{rel}")
            if hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise SourceError(f"{self.url}/{digest}/{rel}: sha256 differs from the signed "
                                  "entry (corrupted or tampered upload)",
                                  path=f"{self.url}/{digest}/{rel}", field="sha256",
                                  check="entry")
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        (tmp / ".complete").write_text(json.dumps({"robot": body.get("robot")}))
        local.parent.mkdir(parents=True, exist_ok=True)
        if local.exists():
            shutil.rmtree(local, ignore_errors=True)
        os.replace(tmp, local)
        return local, body

    def load(self, unit_id: str) -> Episode:
        digest, _, i = unit_id.partition("/")
        local, body = self._fetch(digest)
        cams = local / "meta" / "cameras.json"
        if not cams.exists():
            raise SourceError(f"{self.url}/{digest}/meta/cameras.json missing: t3_robot_real "
                              "needs calibrated cameras", path=str(cams), field="cameras",
                              check="tier")
        inner = LeRobotSource(SourceSpec("lerobot", {"path": str(local),
                                                     "tier": "t3_robot_real",
                                                     "cameras": str(cams)}), self.params)
        ep = inner.load(i)
        ep.source = self.name
        ep.source_id = self.unit_identity(unit_id)["source_id"]
        ep.extra["fleet_inbox"] = {k: body.get(k) for k in
                                   ("robot", "fleet", "hash", "engine_version", "uploaded_at")}
        return ep

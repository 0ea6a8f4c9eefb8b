"""S3 for releases: the `Store` of wallwm/release on a bucket, and resumable uploads.

Channels, the director's state and the fleet inbox are prefixes of one bucket
(`release.bucket`, default `wallwm-releases`): `<channel>/metadata|targets/...` (TUF),
`director/<fleet>/...` (robots, assignments, reports, rollout), `inbox/<fleet>/<sha256>/...`
(episodes uploaded by robots). Works against any S3 endpoint (`AWS_ENDPOINT_URL`; the local
stack's nanio by default).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError, ResponseStreamingError

from components.storage.s3 import s3_client
from wallwm.util.atomic import atomic_write_text

MISSING = ("404", "NoSuchKey", "NotFound")
PART_SIZE = 8 * 1024 * 1024  # S3's minimum part is 5 MiB


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class S3Store:
    """wallwm.release.store.Store on `s3://bucket/prefix/`."""

    def __init__(self, bucket: str, prefix: str = "", client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or s3_client()

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._k(key)}".rstrip("/")

    def get(self, key: str, attempts: int = 3) -> bytes | None:
        """The object's bytes (None if absent). A body cut short is read again: nanio 0.1.7
        can end a GET early when the object is replaced while it streams."""
        for attempt in range(attempts):
            try:
                return self.client.get_object(Bucket=self.bucket,
                                              Key=self._k(key))["Body"].read()
            except ClientError as e:
                if _code(e) in MISSING:
                    return None
                raise
            except ResponseStreamingError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        return None

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        import hashlib

        self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data,
                               ContentType=content_type,
                               Metadata={"sha256": hashlib.sha256(data).hexdigest()})

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        self.client.upload_file(str(path), self.bucket, self._k(key),
                                ExtraArgs={"Metadata": {"sha256": sha256}},
                                Config=TransferConfig(multipart_threshold=PART_SIZE,
                                                      multipart_chunksize=PART_SIZE))

    def head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as e:
            if _code(e) in MISSING:
                return None
            raise

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def list(self, prefix: str) -> list[str]:
        out, token = [], None
        full = self._k(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        while True:
            kw = {"ContinuationToken": token} if token else {}
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=full, **kw)
            out += [o["Key"][strip:] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(out)
            token = page["NextContinuationToken"]

    def list_dirs(self, prefix: str) -> list[str]:
        """Immediate 'sub-folders' under prefix (delimiter listing)."""
        out, token = [], None
        full = self._k(prefix).rstrip("/") + "/"
        while True:
            kw = {"ContinuationToken": token} if token else {}
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=full, Delimiter="/",
                                               **kw)
            out += [p["Prefix"][len(full):].rstrip("/") for p in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                return sorted(out)
            token = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def get_json(self, key: str) -> Any:
        raw = self.get(key)
        return None if raw is None else json.loads(raw)

    def put_json(self, key: str, obj: Any) -> None:
        self.put(key, json.dumps(obj, indent=1, sort_keys=True).encode(), "application/json")


def channel_store(bucket: str, client=None) -> S3Store:
    """The whole release bucket (channels are prefixes inside it)."""
    return S3Store(bucket, "", client)


# ----------------------------------------------------------------------------- resumable upload
@dataclass
class UploadStats:
    parts_sent: int = 0
    parts_skipped: int = 0
    bytes_sent: int = 0
    skipped_whole: bool = False


def upload_resumable(store: S3Store, key: str, path: Path, sha256: str, state_file: Path,
                     on_part: Callable[[int], None] | None = None,
                     part_size: int = PART_SIZE) -> UploadStats:
    """Upload `path` to `key`; after an interruption, continue with the parts S3 lacks.

    Small files are one PUT (skipped when the object already holds `sha256`); larger ones a
    multipart upload whose id lives in `state_file`, so a restarted process lists the parts
    S3 already has and sends only the rest."""
    stats = UploadStats()
    head = store.head(key)
    if head is not None and head.get("Metadata", {}).get("sha256") == sha256:
        stats.skipped_whole = True
        return stats
    size = path.stat().st_size
    c, bucket, full = store.client, store.bucket, store._k(key)
    if size <= part_size:
        with open(path, "rb") as f:
            c.put_object(Bucket=bucket, Key=full, Body=f.read(), Metadata={"sha256": sha256})
        stats.parts_sent, stats.bytes_sent = 1, size
        return stats
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    upload_id = state.get("upload_id") if state.get("sha256") == sha256 else None
    done: dict[int, str] = {}
    if upload_id:
        try:
            marker = 0
            while True:
                r = c.list_parts(Bucket=bucket, Key=full, UploadId=upload_id,
                                 PartNumberMarker=marker)
                for p in r.get("Parts", []):
                    done[p["PartNumber"]] = p["ETag"]
                if not r.get("IsTruncated"):
                    break
                marker = r["NextPartNumberMarker"]
        except ClientError as e:
            if _code(e) not in ("NoSuchUpload", *MISSING):
                raise
            upload_id, done = None, {}
    if not upload_id:
        upload_id = c.create_multipart_upload(Bucket=bucket, Key=full,
                                              Metadata={"sha256": sha256})["UploadId"]
        atomic_write_text(state_file, json.dumps({"upload_id": upload_id, "sha256": sha256,
                                                  "key": full}))
    n_parts = (size + part_size - 1) // part_size
    with open(path, "rb") as f:
        for n in range(1, n_parts + 1):
            if n in done:
                stats.parts_skipped += 1
                continue
            f.seek((n - 1) * part_size)
            body = f.read(part_size)
            r = c.upload_part(Bucket=bucket, Key=full, UploadId=upload_id, PartNumber=n,
                              Body=body)
            done[n] = r["ETag"]
            stats.parts_sent += 1
            stats.bytes_sent += len(body)
            if on_part:
                on_part(n)
    c.complete_multipart_upload(
        Bucket=bucket, Key=full, UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": done[n]} for n in sorted(done)]})
    if state_file.exists():
        os.unlink(state_file)
    return stats

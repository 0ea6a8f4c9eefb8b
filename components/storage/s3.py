"""boto3 for every S3 endpoint: `AWS_ENDPOINT_URL` (unset = AWS itself) and standard credentials.

SigV4 is forced (nanio refuses anything else, and default presigning gets 403 there) and
addressing is path-style for custom endpoints (nanio is path-style only).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_url(url: str) -> S3Location:
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3:// URL (expected s3://bucket/key)")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket")
    return S3Location(bucket, key)


def s3_client(
    endpoint_url: str | None = None,
    region: str | None = None,
    credentials: tuple[str, str] | None = None,
):
    """A client for `endpoint_url` (default: `$AWS_ENDPOINT_URL`, else AWS).

    Credentials default to the standard chain (env vars, profiles, instance roles).
    """
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    key, secret = credentials or (
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_SECRET_ACCESS_KEY"),
    )
    return _client(endpoint, region, key, secret)


@lru_cache(maxsize=16)
def _client(endpoint: str | None, region: str, key: str | None, secret: str | None):
    cfg = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint else "auto"},
        retries={"max_attempts": 5, "mode": "standard"},
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=cfg,
    )


def ensure_buckets(client, buckets: list[str]) -> list[str]:
    """Create the buckets that do not exist yet; return the ones created."""
    made = []
    for b in buckets:
        try:
            client.head_bucket(Bucket=b)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise
            client.create_bucket(Bucket=b)
            made.append(b)
    return made


def put_bytes(
    client, loc: S3Location, data: bytes, content_type: str = "application/octet-stream"
) -> str:
    """Upload and return the sha256 (also stored as object metadata)."""
    digest = hashlib.sha256(data).hexdigest()
    client.put_object(
        Bucket=loc.bucket,
        Key=loc.key,
        Body=data,
        ContentType=content_type,
        Metadata={"sha256": digest},
    )
    return digest


def get_bytes(client, loc: S3Location) -> bytes:
    return client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()


def sha256_of_object(client, loc: S3Location) -> str:
    h = hashlib.sha256()
    body = client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()

"""S3 adapter (boto3): any S3 endpoint (the stack's nanio, MinIO, AWS) through the usual env vars."""

from components.storage.s3 import (
    S3Location,
    ensure_buckets,
    get_bytes,
    parse_s3_url,
    put_bytes,
    s3_client,
    sha256_of_object,
)

__all__ = [
    "S3Location",
    "ensure_buckets",
    "get_bytes",
    "parse_s3_url",
    "put_bytes",
    "s3_client",
    "sha256_of_object",
]

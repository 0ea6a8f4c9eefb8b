"""Our S3 server (nanio, pinned) against what the platform needs of any S3: a small conformance
suite that runs on every CI so an upgrade that breaks one operation is caught here."""

from __future__ import annotations

import hashlib
import os

import pytest
import requests

from components.storage import S3Location, ensure_buckets, get_bytes, put_bytes, s3_client

pytestmark = pytest.mark.integration
BUCKET = "conformance"


@pytest.fixture(scope="module")
def s3(stack):
    c = s3_client(os.environ["AWS_ENDPOINT_URL"])
    ensure_buckets(c, [BUCKET])
    return c


def test_put_get_metadata_and_range(s3):
    data = os.urandom(100_000)
    sha = put_bytes(s3, S3Location(BUCKET, "a/b.bin"), data)
    head = s3.head_object(Bucket=BUCKET, Key="a/b.bin")
    assert head["ContentLength"] == len(data) and head["Metadata"]["sha256"] == sha
    assert get_bytes(s3, S3Location(BUCKET, "a/b.bin")) == data
    part = s3.get_object(Bucket=BUCKET, Key="a/b.bin", Range="bytes=10-19")["Body"].read()
    assert part == data[10:20]


def test_list_prefix_delimiter_pagination(s3):
    for i in range(7):
        s3.put_object(Bucket=BUCKET, Key=f"list/d{i % 2}/k{i}", Body=b"x")
    top = s3.list_objects_v2(Bucket=BUCKET, Prefix="list/", Delimiter="/")
    assert sorted(p["Prefix"] for p in top["CommonPrefixes"]) == ["list/d0/", "list/d1/"]
    keys, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=BUCKET, Prefix="list/", MaxKeys=3, **kw)
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            break
        token = page["NextContinuationToken"]
    assert len(keys) == 7 and len(set(keys)) == 7


def test_copy_and_batch_delete(s3):
    s3.put_object(Bucket=BUCKET, Key="c/src", Body=b"payload")
    s3.copy_object(Bucket=BUCKET, Key="c/dst", CopySource={"Bucket": BUCKET, "Key": "c/src"})
    assert get_bytes(s3, S3Location(BUCKET, "c/dst")) == b"payload"
    r = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "c/src"}, {"Key": "c/dst"}]})
    assert len(r["Deleted"]) == 2
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="c/").get("KeyCount", 0) == 0


def test_presigned_get_and_signature_is_enforced(s3):
    s3.put_object(Bucket=BUCKET, Key="p/obj", Body=b"presigned")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "p/obj"}, ExpiresIn=60
    )
    assert requests.get(url, timeout=10).content == b"presigned"
    unsigned = f"{os.environ['AWS_ENDPOINT_URL']}/{BUCKET}/p/obj"
    assert requests.get(unsigned, timeout=10).status_code in (401, 403)
    bad = s3_client(os.environ["AWS_ENDPOINT_URL"], credentials=("nope", "wrong-secret"))
    with pytest.raises(Exception, match="(?i)denied|signature|invalid|forbidden|403"):
        bad.get_object(Bucket=BUCKET, Key="p/obj")


def test_multipart_upload(s3):
    part = 5 * 1024 * 1024
    data = os.urandom(part * 2 + 1234)
    up = s3.create_multipart_upload(Bucket=BUCKET, Key="m/big")
    parts = []
    for n, off in enumerate(range(0, len(data), part), start=1):
        r = s3.upload_part(
            Bucket=BUCKET,
            Key="m/big",
            UploadId=up["UploadId"],
            PartNumber=n,
            Body=data[off : off + part],
        )
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key="m/big", UploadId=up["UploadId"], MultipartUpload={"Parts": parts}
    )
    got = get_bytes(s3, S3Location(BUCKET, "m/big"))
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

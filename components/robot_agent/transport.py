"""How the agent reaches its repository: HTTP(S) or S3, both resumable (range requests).

Both fetchers implement python-tuf's `FetcherInterface` (for metadata) and `fetch_range`
(for resumed target downloads), turn transport faults into tuf `DownloadError`s, and record
the server's `Date` header so a status can say how far the robot's clock is off.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import boto3
import urllib3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from tuf.api.exceptions import DownloadError, DownloadHTTPError

from wallwm.release.client import RangeFetcher, RangeIgnored, ReleaseClientError

CHUNK = 1 << 16


class ClockMixin:
    skew_s: float | None = None  # local clock minus the server's (positive: robot ahead)

    def _saw_date(self, value: str | None) -> None:
        if not value:
            return
        try:
            server = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return
        self.skew_s = round(time.time() - server, 1)


def make_s3_client(endpoint: str | None, timeout_s: float):
    """boto3 S3 client: SigV4 (nanio needs it), path style for custom endpoints, short
    timeouts so a stalled server turns into a retry instead of a hung poll."""
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
    cfg = Config(signature_version="s3v4",
                 s3={"addressing_style": "path" if endpoint else "auto"},
                 connect_timeout=min(timeout_s, 10), read_timeout=timeout_s,
                 retries={"max_attempts": 2, "mode": "standard"})
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint,
        region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1", config=cfg)


def _s3_error(e: ClientError, url: str) -> Exception:
    code = str(e.response.get("Error", {}).get("Code", ""))
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code == "RequestTimeTooSkewed":
        return ReleaseClientError("clock_skew", f"{url}: S3 refused the request because the "
                                  "robot's clock is too far from the server's; fix the clock "
                                  "(NTP)")
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return DownloadHTTPError(f"{url}: not found", 404)
    if status in (401, 403):
        return DownloadHTTPError(f"{url}: access denied ({code})", 403)
    return DownloadError(f"{url}: S3 error {code or status}")


class S3Fetcher(ClockMixin, RangeFetcher):
    """`s3://bucket/key` URLs through boto3."""

    def __init__(self, client):
        self.client = client

    def _get(self, url: str, start: int) -> Iterator[bytes]:
        u = urlparse(url)
        kw = {"Range": f"bytes={start}-"} if start else {}
        try:
            r = self.client.get_object(Bucket=u.netloc, Key=u.path.lstrip("/"), **kw)
        except ClientError as e:
            self._saw_date(e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                           .get("date"))
            raise _s3_error(e, url) from e
        except BotoCoreError as e:
            raise DownloadError(f"{url}: {e}") from e
        self._saw_date(r["ResponseMetadata"]["HTTPHeaders"].get("date"))
        if start and "ContentRange" not in r:
            r["Body"].close()
            raise RangeIgnored(url)
        return self._stream(r["Body"], url)

    @staticmethod
    def _stream(body, url: str) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(CHUNK)
        except (BotoCoreError, ConnectionError, TimeoutError) as e:
            raise DownloadError(f"{url}: transfer broke off ({e})") from e
        finally:
            body.close()

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._get(url, 0)

    def fetch_range(self, url: str, start: int) -> Iterator[bytes]:
        return self._get(url, start)


class HttpFetcher(ClockMixin, RangeFetcher):
    """http(s):// URLs through urllib3 (any static file server in front of a mirror)."""

    def __init__(self, timeout_s: float):
        self.pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 10), read=timeout_s),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, redirect=3,
                                  status_forcelist=(502, 503, 504)))

    def _get(self, url: str, start: int) -> Iterator[bytes]:
        headers = {"Range": f"bytes={start}-"} if start else {}
        try:
            r = self.pool.request("GET", url, headers=headers, preload_content=False)
        except urllib3.exceptions.HTTPError as e:
            raise DownloadError(f"{url}: {e}") from e
        self._saw_date(r.headers.get("Date"))
        if r.status >= 400:
            r.release_conn()
            raise DownloadHTTPError(f"{url}: HTTP {r.status}", r.status)
        if start and r.status != 206:
            r.release_conn()
            raise RangeIgnored(url)
        return self._stream(r, url)

    @staticmethod
    def _stream(r, url: str) -> Iterator[bytes]:
        try:
            yield from r.stream(CHUNK)
        except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as e:
            raise DownloadError(f"{url}: transfer broke off ({e})") from e
        finally:
            r.release_conn()

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._get(url, 0)

    def fetch_range(self, url: str, start: int) -> Iterator[bytes]:
        return self._get(url, start)


def make_fetcher(url: str, s3_client_factory) -> RangeFetcher:
    if url.startswith("s3://"):
        return S3Fetcher(s3_client_factory())
    return HttpFetcher(30.0)


def split_s3(url: str) -> tuple[str, str]:
    u = urlparse(url)
    return u.netloc, u.path.strip("/")

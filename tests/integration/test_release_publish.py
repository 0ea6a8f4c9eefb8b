"""Publishing through `publish_release` (the promotion hook) to real S3, the HTTP transport,
and resumable multipart uploads (the flywheel's)."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from components.release import publish_release
from components.release.publish import repository
from components.robot_agent.transport import HttpFetcher, S3Fetcher, make_s3_client
from components.storage.release_store import S3Store, upload_resumable
from tests.fixtures.bundles import Nanio, make_bundle
from wallwm.release.bundle import verify_bundle
from wallwm.release.client import ReleaseClient
from wallwm.release.keys import KeyRing
from wallwm.release.store import DirStore
from wallwm.release.tuf_repo import Repository, RepositoryError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    n = Nanio(tmp_path_factory.mktemp("pub-s3")).start()
    old = {k: os.environ.get(k) for k in n.env}
    os.environ.update(n.env)
    yield n
    n.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_publish_release_default_path(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("WALLWM_RELEASE_KEYS", str(tmp_path / "keys"))
    b = make_bundle(tmp_path / "b", lineage={"train_run": "run-7", "dvc_md5": "abc"})
    out = publish_release(b, "fleet-a/stable", "1.2.0")
    assert out["repo_url"] == "s3://wallwm-releases/fleet-a/stable"
    assert out["lineage"]["train_run"] == "run-7" and out["version"] == "1.2.0"
    assert publish_release(b, "fleet-a/stable", "1.2.0")["targets_version"] == \
        out["targets_version"]  # idempotent
    ring = KeyRing(tmp_path / "keys")
    assert ring.role("root").threshold == 2  # local default: root 2-of-2
    repo = repository("fleet-a/stable", keys_dir=tmp_path / "keys")
    client = ReleaseClient(tmp_path / "robot", "s3://wallwm-releases/fleet-a/stable",
                           S3Fetcher(make_s3_client(s3.url, 5)), repo.root_bytes())
    assert client.download("1.2.0", tmp_path / "slot") == verify_bundle(b)
    with pytest.raises(RepositoryError, match="channel"):
        publish_release(b, "Bad Channel", "1.0.0")
    with pytest.raises(RepositoryError, match="PEP 440"):
        publish_release(b, "stable", "v-one")


def test_http_mirror_and_range_fallback(tmp_path):
    """A channel mirrored to a folder behind a plain static HTTP server (no Range support):
    the client still verifies everything, and a stale partial file makes it start over."""
    ring = KeyRing.create(tmp_path / "keys")
    repo = Repository(DirStore(tmp_path / "www"), ring, "stable")
    b = make_bundle(tmp_path / "b")
    repo.add_release(b, "1.0.0")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *a: None
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/stable"
        c = ReleaseClient(tmp_path / "robot", url, HttpFetcher(5), repo.root_bytes())
        c.refresh()
        big = max(verify_bundle(b).files.items(), key=lambda kv: kv[1].size)
        parts = tmp_path / "slot" / ".parts"
        parts.mkdir(parents=True)
        (parts / f"{big[1].sha256}.part").write_bytes((b / big[0]).read_bytes()[:100])
        assert c.download("1.0.0", tmp_path / "slot") == verify_bundle(b)
        assert c.versions()["targets"] == 2
    finally:
        srv.shutdown()


def test_multipart_upload_resumes_after_an_interruption(s3, tmp_path):
    client = s3.client()
    client.create_bucket(Bucket="resume")
    store = S3Store("resume", "", client)
    data = os.urandom(11 * 1024 * 1024)
    f = tmp_path / "big.bin"
    f.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    state = tmp_path / "upload.json"

    def die(n):
        if n == 1:
            raise ConnectionError("process killed after part 1")

    with pytest.raises(ConnectionError):
        upload_resumable(store, "x/big.bin", f, sha, state, on_part=die, part_size=5 << 20)
    assert state.exists() and store.head("x/big.bin") is None
    st = upload_resumable(store, "x/big.bin", f, sha, state, part_size=5 << 20)
    assert (st.parts_skipped, st.parts_sent) == (1, 2) and not state.exists()
    assert hashlib.sha256(store.get("x/big.bin")).hexdigest() == sha
    again = upload_resumable(store, "x/big.bin", f, sha, state, part_size=5 << 20)
    assert again.skipped_whole  # dedup by content hash

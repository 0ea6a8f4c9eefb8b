"""The client refuses every attack TUF names, against our real repository code (simulator)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile

from tests.unit.release.simulator import resign
from wallwm.release.bundle import BundleError, verify_bundle
from wallwm.release.client import ReleaseClient, ReleaseClientError, classify
from wallwm.release.tuf_repo import RepositoryError, rotate_keys, target_key


def _engine_key(store, version="1.0.0", name="graphs/fp32/event_action_step.onnx"):
    return next(k for k in store.objects if k.startswith(f"stable/targets/{version}/")
                and k.endswith(name.rsplit("/", 1)[1]))


def test_publish_list_download_roundtrip(channel, client_for, bundle_v1, tmp_path):
    store, repo, sim = channel
    c = client_for(sim, repo.root_bytes())
    c.refresh()
    (rel,) = c.releases()
    assert rel["version"] == "1.0.0" and rel["embodiment"] == "test-arm"
    assert rel["cameras"][0] == {"name": "front", "height": 16, "width": 16}
    assert c.versions() == {"root": 1, "timestamp": 2, "snapshot": 2, "targets": 2}
    m = c.download("1.0.0", tmp_path / "slot")
    assert m == verify_bundle(bundle_v1)
    assert not (tmp_path / "slot" / ".parts").exists()
    # the same bundle again is a no-op; another bundle under the same version is refused
    assert repo.add_release(bundle_v1, "1.0.0").targets_version == 2
    with pytest.raises(RepositoryError, match="already published"):
        from tests.fixtures.bundles import make_bundle

        repo.add_release(make_bundle(tmp_path / "other", tag=9.0), "1.0.0")


def test_tampered_engine_file_is_refused(channel, client_for, tmp_path):
    store, repo, sim = channel
    key = _engine_key(store)
    sim.tamper(key, lambda b: b[:-1] + bytes([b[-1] ^ 1]))  # same length, one bit
    c = client_for(sim, repo.root_bytes())
    with pytest.raises(tuf_exc.LengthOrHashMismatchError) as e:
        c.download("1.0.0", tmp_path / "slot")
    assert classify(e.value) == "hash_mismatch"
    assert not list((tmp_path / "slot").rglob("*.part"))  # bad bytes are never resumed


def test_oversized_file_is_cut_at_the_signed_length(channel, client_for, tmp_path):
    store, repo, sim = channel
    sim.tamper(_engine_key(store), lambda b: b + b"\0" * 10_000_000)
    c = client_for(sim, repo.root_bytes())
    with pytest.raises(tuf_exc.DownloadLengthMismatchError) as e:
        c.download("1.0.0", tmp_path / "slot")
    assert classify(e.value) == "oversized"
    assert max(p.stat().st_size for p in (tmp_path / "slot").rglob("*")
               if p.is_file()) < 1_000_000


def test_endless_metadata_is_refused(channel, client_for):
    store, repo, sim = channel
    sim.tamper("stable/metadata/timestamp.json", lambda b: b + b" " * 20_000)
    c = client_for(sim, repo.root_bytes())
    with pytest.raises(tuf_exc.DownloadLengthMismatchError):
        c.refresh()


def test_bad_signature_is_refused(channel, client_for, keys):
    store, repo, sim = channel
    attacker = CryptoSigner.generate_ed25519()
    resign(store, "stable/metadata/timestamp.json", [attacker], version=99)
    c = client_for(sim, repo.root_bytes())
    with pytest.raises(tuf_exc.UnsignedMetadataError) as e:
        c.refresh()
    assert classify(e.value) == "bad_signature"


def test_replayed_old_metadata_is_refused(channel, client_for, bundle_v2):
    store, repo, sim = channel
    old_ts = store.objects["stable/metadata/timestamp.json"]
    repo.add_release(bundle_v2, "2.0.0")
    c = client_for(sim, repo.root_bytes())
    c.refresh()  # the robot has seen timestamp v3
    store.objects["stable/metadata/timestamp.json"] = old_ts  # attacker replays v2
    c2 = ReleaseClient(c.metadata_dir, c.base_url, sim, repo.root_bytes())
    with pytest.raises(tuf_exc.BadVersionNumberError) as e:
        c2.refresh()
    assert classify(e.value) == "metadata_rollback"


def test_expired_metadata_is_refused(channel, client_for, keys):
    store, repo, sim = channel
    past = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    resign(store, "stable/metadata/timestamp.json", keys.signers("timestamp"), version=3,
           expires=past)
    c = client_for(sim, repo.root_bytes())
    with pytest.raises(tuf_exc.ExpiredMetadataError) as e:
        c.refresh()
    assert classify(e.value) == "metadata_expired"


def test_mixed_metadata_versions_are_refused(channel, client_for, keys, bundle_v2):
    store, repo, sim = channel
    old_targets = store.objects["stable/metadata/2.targets.json"]
    repo.add_release(bundle_v2, "2.0.0")
    # mix and match: serve the old targets (re-signed as v3) under the new snapshot
    store.objects["stable/metadata/3.targets.json"] = old_targets
    resign(store, "stable/metadata/3.targets.json", keys.signers("targets"), version=3)
    c = client_for(sim, repo.root_bytes())
    with pytest.raises(tuf_exc.RepositoryError):
        c.refresh()


def test_target_path_traversal_is_refused(channel, client_for, keys, tmp_path):
    """A compromised exporter gets `../../x` signed: the client writes nothing outside."""
    store, repo, sim = channel
    mkey = next(k for k in store.objects if k.endswith("manifest.json"))
    manifest = json.loads(store.objects[mkey])
    manifest["files"]["../../x"] = {"sha256": "0" * 64, "size": 3}
    evil = json.dumps(manifest).encode()
    tf = TargetFile.from_data("1.0.0/manifest.json", evil)

    def edit(md):
        tf.unrecognized_fields = md.signed.targets["1.0.0/manifest.json"].unrecognized_fields
        md.signed.targets["1.0.0/manifest.json"] = tf
        md.signed.targets["1.0.0/../../x"] = TargetFile.from_data("1.0.0/../../x", b"pwn")

    store.objects[target_key("stable", tf)] = evil
    resign(store, "stable/metadata/2.targets.json", keys.signers("targets"), edit=edit)
    snap = store.objects["stable/metadata/2.snapshot.json"]

    def fix_snapshot(md):
        import hashlib

        raw = store.objects["stable/metadata/2.targets.json"]
        md.signed.meta["targets.json"].length = len(raw)
        md.signed.meta["targets.json"].hashes = {"sha256": hashlib.sha256(raw).hexdigest()}

    store.objects["stable/metadata/2.snapshot.json"] = snap
    resign(store, "stable/metadata/2.snapshot.json", keys.signers("snapshot"), edit=fix_snapshot)

    def fix_ts(md):
        import hashlib

        raw = store.objects["stable/metadata/2.snapshot.json"]
        md.signed.snapshot_meta.length = len(raw)
        md.signed.snapshot_meta.hashes = {"sha256": hashlib.sha256(raw).hexdigest()}

    resign(store, "stable/metadata/timestamp.json", keys.signers("timestamp"), edit=fix_ts)
    c = client_for(sim, repo.root_bytes())
    with pytest.raises(BundleError, match=r"\.\./\.\./x"):
        c.download("1.0.0", tmp_path / "a" / "b" / "slot")
    assert not (tmp_path / "a" / "x").exists() and not (tmp_path / "x").exists()


def test_interrupted_download_resumes(channel, client_for, tmp_path, bundle_v1):
    store, repo, sim = channel
    c = client_for(sim, repo.root_bytes())
    c.refresh()
    big = max(((k, len(v)) for k, v in store.objects.items() if "/targets/" in k),
              key=lambda kv: kv[1])
    sim.on_fetch = lambda key: setattr(sim, "cut_after", 300) if key == big[0] else None
    with pytest.raises(ConnectionResetError):
        c.download("1.0.0", tmp_path / "slot")
    sim.on_fetch = None
    c.download("1.0.0", tmp_path / "slot")
    starts = [s for k, s in sim.fetched if k == big[0]]
    assert starts == [0, 300]  # the second request asked for the rest only
    verify_bundle(tmp_path / "slot")


def test_offline_robot_walks_several_root_rotations(channel, client_for, keys, bundle_v2,
                                                    tmp_path):
    store, repo, sim = channel
    first_root = repo.root_bytes()
    c = client_for(sim, first_root)
    c.refresh()  # the robot knows root v1, then goes offline
    old_ts_signers = keys.signers("timestamp")
    for role in ("timestamp", "targets", "root"):
        rotate_keys(keys, [repo], role)
    repo.add_release(bundle_v2, "2.0.0")
    c2 = ReleaseClient(c.metadata_dir, c.base_url, sim, first_root)
    c2.refresh()
    assert c2.versions()["root"] == 4
    assert {r["version"] for r in c2.releases()} == {"1.0.0", "2.0.0"}
    c2.download("2.0.0", tmp_path / "slot2")
    # the rotated-out timestamp key no longer counts
    resign(store, "stable/metadata/timestamp.json", old_ts_signers, version=999)
    c3 = ReleaseClient(c.metadata_dir, c.base_url, sim, c2.current_root())
    with pytest.raises(tuf_exc.UnsignedMetadataError):
        c3.refresh()
    assert keys.pending == {} and len(list((keys.root / "retired").iterdir())) == 4


def test_root_needs_its_threshold(channel, client_for, keys):
    store, repo, sim = channel
    c = client_for(sim, repo.root_bytes())
    c.refresh()
    one_key = keys.signers("root")[:1]  # threshold is 2
    store.objects["stable/metadata/2.root.json"] = store.objects["stable/metadata/1.root.json"]
    resign(store, "stable/metadata/2.root.json", one_key, version=2)
    c2 = ReleaseClient(c.metadata_dir, c.base_url, sim, repo.root_bytes())
    with pytest.raises(tuf_exc.UnsignedMetadataError):
        c2.refresh()


def test_unknown_release_is_not_found(channel, client_for):
    _, repo, sim = channel
    c = client_for(sim, repo.root_bytes())
    with pytest.raises(ReleaseClientError) as e:
        c.release("9.9.9")
    assert e.value.kind == "not_found"

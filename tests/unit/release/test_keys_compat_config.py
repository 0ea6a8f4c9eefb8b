"""Key files and their permissions, signed documents, compatibility rules, agent config."""

from __future__ import annotations

import os
import stat

import pytest
from securesystemslib.signer import CryptoSigner

from components.robot_agent.config import ConfigError, load_config
from wallwm.release.compat import RobotProfile, check_compat
from wallwm.release.keys import KeyFileError, KeyRing
from wallwm.release.signing import (
    ASSIGNMENT,
    REPORT,
    SignatureError,
    sign_document,
    verify_document,
)


def test_keys_are_private_and_offline_apart(tmp_path):
    ring = KeyRing.create(tmp_path / "k", root_keys=3, root_threshold=2)
    files = {p.relative_to(ring.root).as_posix(): p for p in ring.root.rglob("*") if p.is_file()}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files.values())
    assert stat.S_IMODE((ring.root / "offline").stat().st_mode) == 0o700
    offline = {n.split("/")[1].split("-")[0] for n in files if n.startswith("offline/")}
    online = {n.split("/")[1].split("-")[0] for n in files if n.startswith("online/")}
    assert offline == {"root", "targets"} and online == {"snapshot", "timestamp", "director"}
    assert len(ring.signers("root")) == 3 and ring.role("root").threshold == 2
    with pytest.raises(KeyFileError, match="exists"):
        KeyRing.create(tmp_path / "k")
    victim = next(p for n, p in files.items() if n.startswith("online/timestamp"))
    os.chmod(victim, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        KeyRing(tmp_path / "k").signers("timestamp")


def test_signed_documents_bind_type_and_key():
    s = CryptoSigner.generate_ed25519()
    raw = sign_document({"robot": "r1", "version": "1.0.0"}, ASSIGNMENT, [s])
    assert verify_document(raw, ASSIGNMENT, [s.public_key]) == {"robot": "r1", "version": "1.0.0"}
    with pytest.raises(SignatureError, match="payloadType"):
        verify_document(raw, REPORT, [s.public_key])  # no replay as another document type
    with pytest.raises(SignatureError, match="not trusted"):
        verify_document(raw, ASSIGNMENT, [CryptoSigner.generate_ed25519().public_key])
    tampered = raw.replace(b'"payload": "', b'"payload": "e30', 1)
    with pytest.raises(SignatureError):
        verify_document(tampered, ASSIGNMENT, [s.public_key])


CUSTOM = {"kind": "bundle-manifest", "embodiment": "arm", "cameras": [
    {"name": "front", "height": 16, "width": 16}], "action_dim": 4, "state_dim": 4,
    "runtime": {"name": "onnxruntime", "min_version": "1.20", "opset": 21},
    "precisions": ["fp32", "fp8"], "tensorrt": [
        {"gpu_arch": "sm_90", "trt_version": "10.3", "precision": "fp8"}]}


def test_compatibility_rules():
    base = RobotProfile("arm", {"front": (16, 16), "wrist": (8, 8)}, "1.32.0")
    r = check_compat(CUSTOM, base)
    assert r.ok and r.precision == "fp32" and r.tensorrt is None
    gpu = RobotProfile("arm", {"front": (16, 16)}, "1.32.0", ("fp8", "fp32"), "sm_90", "10.3.1")
    r = check_compat(CUSTOM, gpu)
    assert r.precision == "fp8" and r.tensorrt["gpu_arch"] == "sm_90"
    orin = RobotProfile("arm", {"front": (16, 16)}, "1.32.0", ("fp8",), "sm_87", "10.3")
    assert check_compat(CUSTOM, orin).tensorrt is None  # no engine for that GPU: ORT instead
    bad = RobotProfile("leg", {"front": (32, 32)}, "1.10.0", ("bf16",), action_dim=7)
    reasons = check_compat(CUSTOM, bad).reason
    for word in ("embodiment", "32x32", "min_version", "precision", "action_dim"):
        assert word in reasons


def test_agent_config_file_env_and_errors(tmp_path, monkeypatch):
    f = tmp_path / "agent.toml"
    f.write_text('robot_id = "r1"\nrepo_url = "s3://b/stable"\ntrusted_root = "/r.json"\n'
                 'state_dir = "/tmp/x"\nembodiment = "arm"\n'
                 'cameras = [{name = "front", height = 16, width = 16}]\n')
    monkeypatch.setenv("WALLWM_AGENT_POLL_INTERVAL_S", "5")
    monkeypatch.setenv("WALLWM_AGENT_PRECISIONS", '["fp8", "fp32"]')
    cfg = load_config(f)
    assert cfg.poll_interval_s == 5 and cfg.precisions == ["fp8", "fp32"]
    monkeypatch.setenv("WALLWM_AGENT_DIRECTOR_URL", "https://x")
    with pytest.raises(ConfigError, match=r"WALLWM_AGENT_DIRECTOR_URL.*director_url"):
        load_config(f)
    monkeypatch.setenv("WALLWM_AGENT_DIRECTOR_URL", "s3://b/director/f")
    with pytest.raises(ConfigError, match="director_keys"):
        load_config(f)  # a director whose signatures cannot be checked is refused
    monkeypatch.delenv("WALLWM_AGENT_DIRECTOR_URL")
    f.write_text(f.read_text() + "poll_intervall_s = 3\n")
    with pytest.raises(ConfigError, match=rf"{f}.*poll_intervall_s"):
        load_config(f)

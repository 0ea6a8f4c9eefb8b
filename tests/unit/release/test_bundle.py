"""The bundle format: path rules, manifest checks with clear errors, whole-folder verification."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.fixtures.bundles import make_bundle, plant_symlink
from wallwm.release.bundle import (
    BundleError,
    check_relpath,
    load_manifest,
    safe_join,
    verify_bundle,
)


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/.",
                                 ".hidden", "a\\b", "", "a/b\x00", "x" * 300])
def test_unsafe_paths_are_refused(bad):
    with pytest.raises(BundleError):
        check_relpath(bad)


def test_safe_paths_pass(tmp_path):
    for ok in ("manifest.json", "graphs/fp32/event_encoder.onnx", "engines/sm_90/fp8/x.plan",
               "a_b/c+d-e.f"):
        assert check_relpath(ok) == ok
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(BundleError, match="symlink"):
        safe_join(tmp_path, "link/file")


@pytest.fixture
def bundle(tmp_path, bundle_v1):
    return shutil.copytree(bundle_v1, tmp_path / "b")


def test_verify_accepts_a_good_bundle(bundle):
    m = verify_bundle(bundle)
    assert m.format == "wallwm-bundle/1" and set(m.modes) == {"event"}
    assert "graphs/fp32/event_encoder.onnx" in m.files and "manifest.json" not in m.files


def test_tampered_truncated_missing_stray_symlink(bundle):
    f = bundle / "graphs" / "fp32" / "event_action_step.onnx"
    data = f.read_bytes()
    f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BundleError, match="sha256") as e:
        verify_bundle(bundle)
    assert e.value.field.endswith(".sha256")
    f.write_bytes(data[:-5])
    with pytest.raises(BundleError, match="size"):
        verify_bundle(bundle)
    f.unlink()
    with pytest.raises(BundleError, match="missing"):
        verify_bundle(bundle)
    f.write_bytes(data)
    (bundle / "extra.bin").write_bytes(b"rides along")
    with pytest.raises(BundleError, match="not listed"):
        verify_bundle(bundle)
    (bundle / "extra.bin").unlink()
    plant_symlink(bundle)
    with pytest.raises(BundleError, match="symlink"):
        verify_bundle(bundle)


def _edit(bundle, fn):
    p = bundle / "manifest.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


@pytest.mark.parametrize("edit,field", [
    (lambda d: d.update(format="wallwm-bundle/2"), "format"),
    (lambda d: d["files"].update({"../../x": {"sha256": "0" * 64, "size": 1}}), "files"),
    (lambda d: d.update(default_precision="fp16"), "default_precision"),
    (lambda d: d["modes"]["event"].update(steps=3), "steps"),
    (lambda d: d["modes"]["event"]["inputs"].append(
        {"name": "bogus", "dtype": "float32", "shape": ["B"]}), "bogus"),
    (lambda d: d["files"]["tokenizer.json"].update(sha256="XYZ"), "sha256"),
    (lambda d: d.update(surprise=1), "surprise"),
    (lambda d: d["modes"]["event"]["outputs"].pop("end_logits"), "end_logits"),
])
def test_manifest_errors_name_the_field(bundle, edit, field):
    _edit(bundle, edit)
    with pytest.raises(BundleError) as e:
        load_manifest(bundle)
    assert field in str(e.value) and str(bundle / "manifest.json") in str(e.value)


def test_write_manifest_lists_everything(tmp_path):
    b = make_bundle(tmp_path / "two", modes=("event", "unified"), precisions=("fp32", "fp8"))
    m = verify_bundle(b)
    assert m.precisions == ["fp32", "fp8"] and set(m.modes) == {"event", "unified"}
    assert set(m.reference) == {"event", "unified"}
    assert len(m.graph_paths()) == 8

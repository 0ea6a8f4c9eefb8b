"""Vendor the JSON schemas that the offline manifest tests validate against.

The tests must run without a network or a cluster, so the schemas live in the repository:
- KubeRay's CRDs (`ray.io/v1` RayCluster and RayJob): the `openAPIV3Schema` of the served
  `v1` version, taken from `ray-operator/config/crd/bases/ray.io_<plural>.yaml` of a
  ray-project/kuberay checkout at the operator release we document (the one to install);
- the Compose specification (compose-spec/compose-spec, `schema/compose-spec.json`).

Each output records where it came from (repository, commit, path, sha256 of the source file)
in `SOURCES.json`, so a reviewer can check it and a bump is one command:

    python infra/k8s/schemas/vendor_schemas.py --kuberay /path/to/kuberay --kuberay-ref v1.7.0 \
        --compose-spec /path/to/compose-spec --compose-ref <commit>

Both paths are git repositories (bare or not); the files are read with `git show REF:PATH`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
KUBERAY_CRDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs"}
COMPOSE_PATH = "schema/compose-spec.json"


def git_show(repo: Path, ref: str, path: str) -> tuple[bytes, str]:
    """The bytes of `path` at `ref` in `repo`, and the commit `ref` resolves to."""
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", f"{ref}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    data = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"],
                          check=True, capture_output=True).stdout
    return data, commit


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary repository files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def crd_v1_schema(crd_yaml: bytes, source: str) -> dict:
    """The `openAPIV3Schema` of the `v1` version of one CRD document."""
    crd = yaml.safe_load(crd_yaml)
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if "v1" not in versions:
        raise SystemExit(f"{source}: spec.versions has {sorted(versions)}, no 'v1'; "
                         "pick a KubeRay release that serves ray.io/v1 (>= 1.0)")
    return versions["v1"]["schema"]["openAPIV3Schema"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kuberay", type=Path, required=True, help="ray-project/kuberay git repo")
    ap.add_argument("--kuberay-ref", default="ray-operator/v1.7.0")
    ap.add_argument("--compose-spec", type=Path, required=True, help="compose-spec git repo")
    ap.add_argument("--compose-ref", default="HEAD")
    args = ap.parse_args()

    sources: dict[str, dict] = {}
    for kind, plural in KUBERAY_CRDS.items():
        path = f"ray-operator/config/crd/bases/ray.io_{plural}.yaml"
        data, commit = git_show(args.kuberay, args.kuberay_ref, path)
        schema = crd_v1_schema(data, path)
        out = f"kuberay-{kind.lower()}-v1.json"
        write_atomic(HERE / out, json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
        sources[out] = {"repository": "ray-project/kuberay", "ref": args.kuberay_ref,
                        "commit": commit, "path": path,
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "extract": "spec.versions[name=v1].schema.openAPIV3Schema"}

    data, commit = git_show(args.compose_spec, args.compose_ref, COMPOSE_PATH)
    json.loads(data)  # fail here, not in the tests, on a broken file
    write_atomic(HERE / "compose-spec.json", data.decode("utf-8"))
    sources["compose-spec.json"] = {"repository": "compose-spec/compose-spec",
                                    "ref": args.compose_ref, "commit": commit,
                                    "path": COMPOSE_PATH,
                                    "sha256": hashlib.sha256(data).hexdigest(),
                                    "extract": "whole file"}
    write_atomic(HERE / "SOURCES.json", json.dumps(sources, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

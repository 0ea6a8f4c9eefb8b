"""The production stack in infra/ checked offline, without a cluster or a Docker daemon.

- Kubernetes core kinds: `kubernetes-validate`'s bundled schemas for K8S_VERSION, strict
  (unknown fields fail, as `kubectl apply --validate=strict` would).
- KubeRay kinds: the `openAPIV3Schema` of KubeRay's ray.io/v1 CRDs vendored in
  infra/k8s/schemas/, made strict the same way (the API server would prune unknown fields
  silently; a typo there is a setting that never takes effect).
- Compose: the Compose specification's JSON schema, vendored likewise.
- systemd: `systemd-analyze verify` and `security --offline` where systemd is installed, and
  the required keys by parsing everywhere.
Beyond schemas: every reference (secret keys, ConfigMaps, service accounts, compose volumes and
dependencies) resolves, every pod runs non-root with requests/limits and probes, and no secret
has a default. Each validator also gets a broken copy that it must reject.
"""

from __future__ import annotations

import configparser
import copy
import functools
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
COMPOSE = INFRA / "compose"
SCHEMAS = K8S / "schemas"
UNIT = INFRA / "systemd" / "wallwm-agent.service"
# The oldest Kubernetes minor the manifests are written for (README, "Production stack").
K8S_VERSION = "1.33.0"
KUBERAY_KINDS = {"RayCluster": "kuberay-raycluster-v1.json", "RayJob": "kuberay-rayjob-v1.json"}
KUSTOMIZATIONS = (K8S / "kustomization.yaml", K8S / "training" / "kustomization.yaml")
SECRETS_TEMPLATE = K8S / "secrets.template.yaml"
BASE_JOB_TEMPLATE = K8S / "prefect" / "base-job-template.json"


# ---------------------------------------------------------------- loading


def load_docs(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of `path` (empty documents dropped)."""
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kustomization_resources() -> list[Path]:
    """Every manifest file named by the kustomizations, in order."""
    out = []
    for k in KUSTOMIZATIONS:
        spec = load_docs(k)[0]
        out += [k.parent / r for r in spec.get("resources", [])]
    return out


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    """(file:index, document) for every manifest, the secrets template included."""
    out = []
    for path in [*kustomization_resources(), SECRETS_TEMPLATE]:
        for i, doc in enumerate(load_docs(path)):
            out.append((f"{path.relative_to(ROOT)}:{i}", doc))
    return out


def rendered_flow_run_job() -> dict[str, Any]:
    """The Job the Kubernetes worker makes from the base job template, with its defaults.

    Prefect's own templating fills the placeholders; the values the worker adds per flow run
    (name, labels, command) are given here, and the command string is split into `args` as
    prefect-kubernetes' worker does (`command_from_string`).
    """
    from prefect.utilities.processutils import command_from_string
    from prefect.utilities.templating import apply_values

    template = json.loads(BASE_JOB_TEMPLATE.read_text())
    props = template["variables"]["properties"]
    values = {k: v["default"] for k, v in props.items() if "default" in v}
    values |= {"name": "wallwm-retrain-abc12", "labels": {"prefect.io/flow-run-id": "x"},
               "command": "prefect flow-run execute", "env": {}}
    job = apply_values(template["job_configuration"], values)["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["args"] = command_from_string(container["args"])
    return job


# ---------------------------------------------------------------- validators


def core_errors(doc: dict[str, Any]) -> list[str]:
    """Schema errors of one core Kubernetes object (strict), as readable lines."""
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        return [f"{doc['kind']}/{doc['metadata'].get('name')}: {path}: {e.message}"]
    return []


def _strict(schema: Any) -> Any:
    """Forbid unknown fields wherever the CRD lists its fields and does not keep unknown ones."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def kuberay_validator(kind: str) -> jsonschema.Draft7Validator:
    schema = _strict(json.loads((SCHEMAS / KUBERAY_KINDS[kind]).read_text()))
    return jsonschema.Draft7Validator(schema)


def kuberay_errors(doc: dict[str, Any]) -> list[str]:
    """Errors of a ray.io object against the vendored CRD schema of its kind."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if doc.get("apiVersion") != "ray.io/v1":
        return [f"{name}: apiVersion {doc.get('apiVersion')!r}; the vendored schemas are ray.io/v1"]
    errors = sorted(kuberay_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
    return [f"{name}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors]


@functools.cache
def compose_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads((SCHEMAS / "compose-spec.json").read_text()))


def compose_errors(doc: dict[str, Any]) -> list[str]:
    errors = sorted(compose_validator().iter_errors(doc), key=lambda e: list(e.path))
    return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]


# ---------------------------------------------------------------- pod-level policy


def pod_specs(name: str, doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(where, pod spec, long_running) for every pod template inside `doc`."""
    kind = doc.get("kind")
    spec = doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet"):
        yield name, spec["template"]["spec"], True
    elif kind == "Job":
        yield name, spec["template"]["spec"], False
    elif kind == "RayCluster":
        yield from _ray_cluster_pods(name, spec)
    elif kind == "RayJob":
        yield from _ray_cluster_pods(name, spec["rayClusterSpec"])
        if "submitterPodTemplate" in spec:
            yield f"{name} submitter", spec["submitterPodTemplate"]["spec"], False


def _ray_cluster_pods(name: str, spec: dict[str, Any]) -> Iterator[tuple[str, dict, bool]]:
    yield f"{name} head", spec["headGroupSpec"]["template"]["spec"], True
    for g in spec.get("workerGroupSpecs", []):
        yield f"{name} {g['groupName']}", g["template"]["spec"], True


def policy_problems(where: str, pod: dict[str, Any], long_running: bool) -> list[str]:
    """What a pod lacks of: non-root, no privilege escalation, requests+limits, probes."""
    problems = []
    pod_sc = pod.get("securityContext", {})
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        at = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{at}: runAsNonRoot is not true (pod or container securityContext)")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: securityContext.allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{at}: securityContext.capabilities.drop lacks ALL")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(part, {}):
                    problems.append(f"{at}: resources.{part}.{r} missing")
    if long_running:
        for c in pod["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problems.append(f"{where} container {c['name']}: {probe} missing")
    if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: securityContext.seccompProfile.type is not RuntimeDefault")
    return problems


# ---------------------------------------------------------------- references


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def defined_objects() -> dict[str, dict[str, set[str]]]:
    """kind -> name -> keys, of what the manifests, the generators and the template define."""
    out: dict[str, dict[str, set[str]]] = {"Secret": {}, "ConfigMap": {}, "ServiceAccount": {}}
    for _, doc in k8s_docs():
        kind = doc["kind"]
        if kind in out:
            data = {**doc.get("data", {}), **doc.get("stringData", {})}
            out[kind][doc["metadata"]["name"]] = set(data)
    for k in KUSTOMIZATIONS:
        for gen in load_docs(k)[0].get("configMapGenerator", []):
            out["ConfigMap"][gen["name"]] = {Path(f).name for f in gen.get("files", [])}
    return out


def reference_problems(where: str, doc: dict[str, Any], defined: dict) -> list[str]:
    """Every secret/ConfigMap (and key) and service account `doc` names must be defined."""
    problems = []

    def need(kind: str, name: str, key: str | None = None) -> None:
        if name not in defined[kind]:
            problems.append(f"{where}: {kind} {name!r} is not defined")
        elif key is not None and key not in defined[kind][name]:
            problems.append(f"{where}: {kind} {name!r} has no key {key!r} "
                            f"(has {sorted(defined[kind][name])})")

    for node in _walk(doc):
        if "secretKeyRef" in node:
            need("Secret", node["secretKeyRef"]["name"], node["secretKeyRef"]["key"])
        if "configMapKeyRef" in node:
            need("ConfigMap", node["configMapKeyRef"]["name"], node["configMapKeyRef"]["key"])
        if "secretRef" in node and "name" in node["secretRef"]:
            need("Secret", node["secretRef"]["name"])
        if "configMapRef" in node:
            need("ConfigMap", node["configMapRef"]["name"])
        if isinstance(node.get("configMap"), dict) and "name" in node["configMap"]:
            need("ConfigMap", node["configMap"]["name"])
        if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:
            need("Secret", node["secret"]["secretName"])
        if isinstance(node.get("serviceAccountName"), str) and "{{" not in node[
                "serviceAccountName"]:
            need("ServiceAccount", node["serviceAccountName"])
        if isinstance(node.get("authOptions"), dict) and "secretName" in node["authOptions"]:
            need("Secret", node["authOptions"]["secretName"], "auth_token")
    if doc.get("kind") == "RoleBinding":
        for s in doc["subjects"]:
            need("ServiceAccount", s["name"])
    return problems


# ================================================================ Kubernetes core


def test_core_manifests_validate_strictly():
    docs = [(w, d) for w, d in k8s_docs() if not d["apiVersion"].startswith("ray.io/")]
    errors = [e for _, d in docs for e in core_errors(d)]
    assert not errors, "\n".join(errors)
    kinds = {d["kind"] for _, d in docs}
    assert {"Namespace", "ConfigMap", "Secret", "Service", "StatefulSet", "Deployment", "Job",
            "ServiceAccount", "Role", "RoleBinding"} <= kinds


def test_core_validator_rejects_a_broken_manifest():
    deployment = next(d for _, d in k8s_docs() if d["kind"] == "Deployment"
                      and d["metadata"]["name"] == "mlflow")
    assert core_errors(deployment) == []
    typo = copy.deepcopy(deployment)
    probe = typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["paht"] = probe["httpGet"].pop("path")
    assert any("paht" in e for e in core_errors(typo))
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "one"
    assert any("spec.replicas" in e for e in core_errors(wrong_type))


def test_secrets_template_holds_no_values():
    filled = [f"{d['metadata']['name']}.{k}" for d in load_docs(SECRETS_TEMPLATE)
              for k, v in d.get("stringData", {}).items()
              if v and not k.endswith("_USERNAME")]
    assert not filled, f"secrets.template.yaml carries values: {filled}"
    assert all(not d.get("data") for d in load_docs(SECRETS_TEMPLATE))
    ignored = (K8S / ".gitignore").read_text().split()
    assert "secrets.yaml" in ignored


def test_flow_run_job_from_base_job_template_validates():
    template = json.loads(BASE_JOB_TEMPLATE.read_text())
    jsonschema.Draft7Validator.check_schema(template["variables"])
    placeholders = set(re.findall(r"\{\{\s*([\w.]+)\s*\}\}",
                                  json.dumps(template["job_configuration"])))
    assert placeholders <= set(template["variables"]["properties"]), (
        placeholders - set(template["variables"]["properties"]))
    job = rendered_flow_run_job()
    assert core_errors(job) == []
    assert job["metadata"]["namespace"] == "wallwm"
    pod = job["spec"]["template"]["spec"]
    assert policy_problems("flow-run job", pod, long_running=False) == []
    assert reference_problems("flow-run job", job, defined_objects()) == []


def test_base_job_template_keeps_prefects_shape():
    """The worker reads these keys; a template that drops one breaks flow runs at run time."""
    import prefect

    path = (Path(prefect.__file__).parent / "server" / "api" / "collections_data" / "views"
            / "aggregate-worker-metadata.json")
    default = json.loads(path.read_text())["prefect-kubernetes"]["kubernetes"][
        "default_base_job_configuration"]
    ours = json.loads(BASE_JOB_TEMPLATE.read_text())
    assert set(ours["job_configuration"]) == set(default["job_configuration"])
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    # Prefect's default puts parallelism/completions in the pod spec, where strict validation
    # (rightly) rejects them; ours has them in the Job spec.
    pod_spec = default["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert "parallelism" in pod_spec
    broken = copy.deepcopy(rendered_flow_run_job())
    broken["spec"]["template"]["spec"]["parallelism"] = 1
    assert any("parallelism" in e for e in core_errors(broken))


# ================================================================ KubeRay


def test_kuberay_kinds_validate_against_the_crd_schemas():
    docs = [(w, d) for w, d in k8s_docs() if d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for _, d in docs} == set(KUBERAY_KINDS)
    errors = [e for _, d in docs for e in kuberay_errors(d)]
    assert not errors, "\n".join(errors)


def test_kuberay_validator_rejects_broken_manifests():
    cluster = next(d for _, d in k8s_docs() if d["kind"] == "RayCluster")
    job = next(d for _, d in k8s_docs() if d["kind"] == "RayJob")
    assert kuberay_errors(cluster) == [] and kuberay_errors(job) == []

    not_a_string = copy.deepcopy(cluster)
    not_a_string["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert any("rayStartParams" in e for e in kuberay_errors(not_a_string))

    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpec"] = typo["spec"].pop("workerGroupSpecs")
    assert any("workerGroupSpec" in e for e in kuberay_errors(typo))

    not_a_bool = copy.deepcopy(job)
    not_a_bool["spec"]["shutdownAfterJobFinishes"] = "yes"
    assert any("shutdownAfterJobFinishes" in e for e in kuberay_errors(not_a_bool))

    nested_pod_typo = copy.deepcopy(job)
    head = nested_pod_typo["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["imagePullPolicyy"] = "Always"
    assert any("imagePullPolicyy" in e for e in kuberay_errors(nested_pod_typo))

    wrong_group = copy.deepcopy(cluster)
    wrong_group["apiVersion"] = "ray.io/v1alpha1"
    assert kuberay_errors(wrong_group)


def test_vendored_schemas_name_their_source():
    sources = json.loads((SCHEMAS / "SOURCES.json").read_text())
    for name in [*KUBERAY_KINDS.values(), "compose-spec.json"]:
        assert (SCHEMAS / name).stat().st_size > 10_000, name
        src = sources[name]
        assert re.fullmatch(r"[0-9a-f]{40}", src["commit"]) and re.fullmatch(
            r"[0-9a-f]{64}", src["sha256"]), src


# ================================================================ cross-cutting k8s checks


def test_every_pod_is_non_root_bounded_and_probed():
    problems = []
    for where, doc in k8s_docs():
        for at, pod, long_running in pod_specs(where, doc):
            problems += policy_problems(at, pod, long_running)
    assert not problems, "\n".join(problems)


def test_policy_check_catches_a_root_pod_without_limits():
    where, doc = next((w, d) for w, d in k8s_docs() if d["kind"] == "StatefulSet")
    broken = copy.deepcopy(doc)
    pod = broken["spec"]["template"]["spec"]
    del pod["securityContext"]["runAsNonRoot"]
    del pod["containers"][0]["resources"]["limits"]
    del pod["containers"][0]["livenessProbe"]
    problems = policy_problems(where, pod, long_running=True)
    assert any("runAsNonRoot" in p for p in problems)
    assert any("resources.limits.memory" in p for p in problems)
    assert any("livenessProbe" in p for p in problems)


def test_every_reference_resolves():
    defined = defined_objects()
    problems = [p for w, d in k8s_docs() for p in reference_problems(w, d, defined)]
    assert not problems, "\n".join(problems)


def test_reference_check_catches_a_missing_key():
    defined = defined_objects()
    where, doc = next((w, d) for w, d in k8s_docs() if d["kind"] == "Deployment"
                      and d["metadata"]["name"] == "prefect-server")
    broken = copy.deepcopy(doc)
    env = broken["spec"]["template"]["spec"]["containers"][0]["env"]
    next(e for e in env if "valueFrom" in e)["valueFrom"]["secretKeyRef"]["key"] = "PASSWORD"
    assert any("no key 'PASSWORD'" in p for p in reference_problems(where, broken, defined))


def test_kustomizations_cover_every_manifest():
    listed = {p.resolve() for p in kustomization_resources()}
    assert all(p.exists() for p in listed), [str(p) for p in listed if not p.exists()]
    # secrets.yaml is the operator's filled-in, git-ignored copy of the template.
    manifests = {p.resolve() for p in K8S.rglob("*.yaml")
                 if p.name not in ("kustomization.yaml", "secrets.yaml") and p != SECRETS_TEMPLATE}
    assert manifests == listed, f"not in a kustomization: {sorted(map(str, manifests - listed))}"
    for k in KUSTOMIZATIONS:
        spec = load_docs(k)[0]
        assert spec["namespace"] == "wallwm"
        for gen in spec.get("configMapGenerator", []):
            assert all((k.parent / f).is_file() for f in gen["files"]), gen


@pytest.mark.skipif(shutil.which("kubectl") is None,
                    reason="kubectl (with kustomize) not installed")
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.parent.name)
def test_kustomize_build_renders_valid_objects(kustomization):
    out = subprocess.run(["kubectl", "kustomize", str(kustomization.parent)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    errors = []
    for d in docs:
        errors += kuberay_errors(d) if d["apiVersion"].startswith("ray.io/") else core_errors(d)
        assert d["metadata"].get("namespace", "wallwm") == "wallwm" or d["kind"] == "Namespace"
    assert not errors, "\n".join(errors)
    images = {n["image"] for d in docs for n in _walk(d) if isinstance(n.get("image"), str)}
    unmapped = {i for i in images if i.split(":")[0] in ("wallwm", "wallwm-mlflow", "wallwm-minio")}
    assert not unmapped, f"images the kustomization does not map to a registry: {unmapped}"


# ================================================================ Compose


def compose_doc() -> dict[str, Any]:
    return load_docs(COMPOSE / "compose.yaml")[0]


def env_example() -> dict[str, str]:
    out = {}
    for line in (COMPOSE / ".env.example").read_text().splitlines():
        if re.match(r"^[A-Z][A-Z0-9_]*=", line):
            k, v = line.split("=", 1)
            out[k] = v
    return out


def test_compose_file_validates_against_the_compose_spec():
    assert compose_errors(compose_doc()) == []


def test_compose_validator_rejects_broken_files():
    doc = compose_doc()
    ports_as_string = copy.deepcopy(doc)
    ports_as_string["services"]["mlflow"]["ports"] = "127.0.0.1:5000:5000"
    assert any("services.mlflow.ports" in e for e in compose_errors(ports_as_string))
    typo = copy.deepcopy(doc)
    typo["services"]["postgres"]["healthchek"] = typo["services"]["postgres"].pop("healthcheck")
    assert any("healthchek" in e for e in compose_errors(typo))


def secret_problems(text: str, example: dict[str, str]) -> list[str]:
    """Secrets in the compose text: all from .env.example, all required, none with a default."""
    secrets = {k for k, v in example.items() if v == ""}
    problems = []
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    refs = re.findall(r"\$\{([A-Z][A-Z0-9_]*)(:?[?-])?([^}]*)\}", text)
    for name, op, _ in refs:
        if name not in example:
            problems.append(f"${{{name}}} is not in .env.example")
        elif name in secrets and op != ":?":
            problems.append(f"secret ${{{name}}} is not required with :? (op {op or 'none'})")
    for m in re.finditer(r"^\s*([A-Z][A-Z0-9_]*(PASSWORD|SECRET|TOKEN|AUTH_STRING)[A-Z_]*):"
                         r"\s*(.+)$", text, re.M):
        if "${" not in m.group(3):
            problems.append(f"{m.group(1)} has a literal value in compose.yaml")
    unused = secrets - {n for n, _, _ in refs}
    problems += [f"secret {n} in .env.example is never used" for n in sorted(unused)]
    return problems


def test_compose_secrets_are_required_and_have_no_defaults():
    text = (COMPOSE / "compose.yaml").read_text()
    assert secret_problems(text, env_example()) == []
    assert ".env" in (COMPOSE / ".gitignore").read_text().split()


def test_secret_check_catches_defaults_and_literals():
    text = (COMPOSE / "compose.yaml").read_text()
    example = env_example()
    defaulted = text.replace("${POSTGRES_PASSWORD:?", "${POSTGRES_PASSWORD:-postgres", 1)
    assert any("POSTGRES_PASSWORD" in p for p in secret_problems(defaulted, example))
    literal = text.replace("MLFLOW_WORKERS: \"2\"",
                           "MLFLOW_WORKERS: \"2\"\n      MLFLOW_AUTH_ADMIN_PASSWORD: changeme", 1)
    assert any("literal" in p for p in secret_problems(literal, example))


def compose_wiring_problems(doc: dict[str, Any]) -> list[str]:
    """What compose would reject or leave unhealthy: dangling names, unchecked services."""
    problems = []
    services = doc["services"]
    volumes = set(doc.get("volumes", {}))
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep not in services:
                problems.append(f"{name}: depends_on unknown service {dep}")
            elif cond.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"{name}: waits for {dep} healthy, but {dep} has no healthcheck")
        for v in svc.get("volumes", []):
            source = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if source and not source.startswith((".", "/")) and source not in volumes:
                problems.append(f"{name}: volume {source} is not declared")
            if source.startswith("."):
                if not (COMPOSE / source).exists():
                    problems.append(f"{name}: bind mount {source} does not exist")
        if svc.get("restart") != "no" and "healthcheck" not in svc:
            problems.append(f"{name}: long-running service without a healthcheck")
        for p in svc.get("ports", []):
            if not str(p).startswith("127.0.0.1:"):
                problems.append(f"{name}: port {p} is published beyond loopback")
    return problems


def test_compose_wiring_is_complete():
    assert compose_wiring_problems(compose_doc()) == []
    doc = compose_doc()
    assert {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "prefect-worker",
            "ray-head", "ray-worker"} <= set(doc["services"])
    cmd = " ".join(doc["services"]["mlflow"].get("command", []))
    entry = (COMPOSE / "mlflow" / "mlflow_entrypoint.py").read_text()
    assert cmd == "" and "--serve-artifacts" in entry and "basic-auth" in entry
    assert doc["services"]["prefect-server"]["environment"][
        "PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")


def test_compose_wiring_check_catches_dangling_names():
    doc = compose_doc()
    doc["services"]["mlflow"]["depends_on"]["postgress"] = {"condition": "service_healthy"}
    doc["services"]["minio"]["volumes"] = ["minio-dat:/data"]
    del doc["services"]["prefect-server"]["healthcheck"]
    problems = compose_wiring_problems(doc)
    assert any("postgress" in p for p in problems)
    assert any("minio-dat" in p for p in problems)
    assert any("prefect-server" in p and "healthcheck" in p for p in problems)


def test_make_env_fills_every_secret_once(tmp_path):
    out = tmp_path / ".env"
    script = COMPOSE / "make-env.sh"
    done = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in out.read_text().splitlines()
                  if re.match(r"^[A-Z][A-Z0-9_]*=", line))
    example = env_example()
    secrets = [k for k, v in example.items() if v == ""]
    assert all(re.fullmatch(r"[0-9a-f]{48}", values[k]) for k in secrets)
    assert len({values[k] for k in secrets}) == len(secrets)
    assert all(values[k] == v for k, v in example.items() if v)
    again = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True,
                           timeout=30, check=False)
    assert again.returncode != 0 and "exists" in again.stderr


@pytest.mark.parametrize("script", [COMPOSE / "minio" / "init-buckets.sh",
                                    COMPOSE / "make-env.sh",
                                    K8S / "postgres" / "init-databases.sh"],
                         ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    shell = "sh" if script.read_text().startswith("#!/bin/sh") else "bash"
    done = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert os.access(script, os.X_OK), f"{script} is not executable"


# ================================================================ MLflow entrypoint


@functools.cache
def entrypoint():
    spec = importlib.util.spec_from_file_location(
        "mlflow_entrypoint", COMPOSE / "mlflow" / "mlflow_entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FULL_ENV = {"MLFLOW_DB_PASSWORD": "p%w@d:/x",
            "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow-artifacts",
            "MLFLOW_AUTH_ADMIN_PASSWORD": "a" * 12, "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
            "MLFLOW_ALLOWED_HOSTS": "mlflow:5000"}


def test_entrypoint_names_every_missing_variable():
    ep = entrypoint()
    with pytest.raises(ep.ConfigError) as e:
        ep.settings({"MLFLOW_DB_PASSWORD": "x"})
    for key in ("MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_AUTH_ADMIN_PASSWORD",
                "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_ALLOWED_HOSTS"):
        assert key in str(e.value)
    assert "MLFLOW_DB_PASSWORD:" not in str(e.value)
    with pytest.raises(ep.ConfigError, match="MLFLOW_AUTH_DEFAULT_PERMISSION = 'WRITE'"):
        ep.settings({**FULL_ENV, "MLFLOW_AUTH_DEFAULT_PERMISSION": "WRITE"})
    with pytest.raises(ep.ConfigError, match="MLFLOW_AUTH_ADMIN_PASSWORD has 5 characters"):
        ep.settings({**FULL_ENV, "MLFLOW_AUTH_ADMIN_PASSWORD": "short"})


def mlflow_auth_config_reader():
    """MLflow's `read_auth_config`, loaded from its file: importing `mlflow.server.auth` would
    need Flask-WTF, which only the server's image has."""
    path = Path(importlib.util.find_spec("mlflow").origin).parent / "server" / "auth" / "config.py"
    spec = importlib.util.spec_from_file_location("mlflow_auth_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.read_auth_config


def test_entrypoint_ini_is_read_back_by_mlflow(tmp_path, monkeypatch):
    """MLflow's own reader gets the auth DB URI with the password intact (%, @, : and /)."""
    from sqlalchemy.engine import make_url

    read_auth_config = mlflow_auth_config_reader()
    ep = entrypoint()
    s = ep.settings(FULL_ENV)
    path = ep.write_private(tmp_path / "auth", "basic_auth.ini", ep.auth_ini(s))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    cfg = read_auth_config()
    url = make_url(cfg.database_uri)
    assert (url.drivername, url.password, url.database) == (
        "postgresql+psycopg2", "p%w@d:/x", "mlflow_auth")
    assert cfg.default_permission == "READ" and cfg.admin_username == "admin"
    argv = ep.server_argv(s)
    assert argv[:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    assert "--serve-artifacts" in argv
    assert argv[argv.index("--artifacts-destination") + 1] == "s3://mlflow-artifacts"
    assert make_url(argv[argv.index("--backend-store-uri") + 1]).database == "mlflow"


# ================================================================ systemd


def unit_sections(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",),
                                       comment_prefixes=("#", ";"))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(text)
    return parser


REQUIRED_UNIT = {
    "Service": {"Type": None, "ExecStart": "/opt/wallwm-agent/bin/wallwm-agent run",
                "User": None, "StateDirectory": None, "ProtectSystem": "strict",
                "NoNewPrivileges": "yes", "Restart": "on-failure",
                "EnvironmentFile": "/etc/wallwm/agent.env", "WatchdogSec": None},
    "Install": {"WantedBy": "multi-user.target"},
}


def unit_problems(text: str) -> list[str]:
    """Required keys (and values where fixed) of the agent's unit."""
    u = unit_sections(text)
    problems = []
    for section, keys in REQUIRED_UNIT.items():
        for key, want in keys.items():
            got = u.get(section, key, fallback=None)
            if not got:
                problems.append(f"[{section}] {key} is missing")
            elif want is not None and got != want:
                problems.append(f"[{section}] {key} = {got!r}, expected {want!r}")
    if u.get("Service", "User", fallback="root") in ("root", "0"):
        problems.append("[Service] User must not be root")
    if u.get("Service", "WatchdogSec", fallback=None) and u.get(
            "Service", "Type", fallback="") != "notify":
        problems.append("[Service] WatchdogSec needs Type=notify (the agent pings the watchdog)")
    return problems


def test_unit_has_the_required_keys():
    assert unit_problems(UNIT.read_text()) == []


def test_unit_key_check_catches_a_weakened_unit():
    weak = UNIT.read_text().replace("NoNewPrivileges=yes\n", "").replace(
        "User=wallwm-agent", "User=root").replace("Type=notify", "Type=simple")
    problems = unit_problems(weak)
    assert any("NoNewPrivileges" in p for p in problems)
    assert any("root" in p for p in problems)
    assert any("WatchdogSec needs Type=notify" in p for p in problems)


def _verifiable_copy(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart's binary swapped for a stub (the agent is not installed here).

    `systemd-analyze verify` fails on a missing executable; everything else is checked as is.
    """
    exe = tmp_path / "bin" / "wallwm-agent"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    path = tmp_path / "wallwm-agent.service"
    path.write_text(text.replace("ExecStart=/opt/wallwm-agent/bin/wallwm-agent",
                                 f"ExecStart={exe}"))
    return path


def _analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=30, check=False)


needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (apt-get install systemd)")


@needs_systemd
def test_unit_passes_systemd_analyze_verify(tmp_path):
    done = _analyze("verify", "--man=no", "--generators=no",
                    str(_verifiable_copy(tmp_path, UNIT.read_text())))
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stderr


@needs_systemd
def test_systemd_analyze_verify_rejects_a_broken_unit(tmp_path):
    broken = UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes").replace(
        "NoNewPrivileges=yes", "NoNewPrivilege=yes")
    done = _analyze("verify", "--man=no", "--generators=no",
                    str(_verifiable_copy(tmp_path, broken)))
    out = done.stdout + done.stderr
    assert "sometimes" in out and "NoNewPrivilege" in out


@needs_systemd
def test_unit_exposure_is_low(tmp_path):
    """`systemd-analyze security`: exposure at most 3.0 of 10 (the hardened band)."""
    path = _verifiable_copy(tmp_path, UNIT.read_text())
    done = _analyze("security", "--offline=true", "--threshold=30", str(path))
    assert done.returncode == 0, done.stdout[-2000:]
    hardening = re.compile(r"^(Protect|Private|Restrict|NoNewPrivileges|SystemCall|Capability"
                           r"|LockPersonality|RemoveIPC|UMask)", re.M)
    weak_dir = tmp_path / "weak"
    weak_dir.mkdir()
    weak = _verifiable_copy(weak_dir, hardening.sub("#", UNIT.read_text()))
    assert _analyze("security", "--offline=true", "--threshold=30", str(weak)).returncode != 0


def test_agent_speaks_sd_notify_if_the_unit_expects_it():
    agent = ROOT / "components" / "robot_agent"
    if not agent.is_dir():
        pytest.skip("components/robot_agent not in this tree yet")
    u = unit_sections(UNIT.read_text())
    if u.get("Service", "Type", fallback="") != "notify":
        return
    source = "\n".join(p.read_text() for p in agent.rglob("*.py"))
    if not source.strip():
        pytest.skip("components/robot_agent has no code yet")
    assert "NOTIFY_SOCKET" in source or "sd_notify" in source, (
        "wallwm-agent.service has Type=notify and WatchdogSec: the agent must send READY=1 and "
        "WATCHDOG=1 to $NOTIFY_SOCKET (or change the unit to Type=exec without WatchdogSec)")

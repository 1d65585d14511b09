"""The Helm chart (helm/pii-gateway), rendered by Helm's own engine through helm_python (Helm's Go SDK).

What is checked, for three value sets (chart defaults; production with everything on; an existing Secret
with PostgreSQL transcripts):

- ``helm lint --strict`` is clean, and every manifest validates against the Kubernetes API schemas
  (kubernetes-validate, strict: unknown fields fail) of the oldest and a recent supported version;
  ServiceMonitor and PrometheusRule (CRDs it has no schema for) are checked structurally;
- the invariants a platform team relies on: non-root, read-only root filesystem, no privilege
  escalation, all capabilities dropped, seccomp, probes, resource limits, no ``latest`` tag, no service
  links, no API token, the standard labels, secrets only through Secrets, a drain that fits in the
  grace period, egress limited to DNS and the upstreams;
- values.schema.json refuses wrong values, and its ``config`` block matches gateway/settings.py;
- the chart README lists every value with its default; dashboards and alerts use only exported metrics;
- NOTES.txt tells how to reach the gateway, naming only objects the chart rendered;
- and the gateway starts from exactly the rendered ConfigMaps, Secrets and environment, and answers a
  request made with the openai SDK: the production set over TLS, and the existingSecret set with its
  transcripts in PostgreSQL (127.0.0.1:5432, database ``test``; skipped when it is not reachable).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import ssl
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import openai
import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from gateway.metrics import Metrics
from gateway.settings import ENV_PREFIX, Settings, load_settings
from tests.conftest import ServerFactory
from tests.fake_upstream import FakeUpstream
from tests.test_transcripts import PG_DSN, postgres_schema
from tests.test_upstream import make_ca_and_cert

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "pii-gateway"
RELEASE = "pii-gateway"
NAMESPACE = "llm"
#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a recent one.
KUBE_VERSIONS = ("1.25.0", "1.35.0")
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
#: Settings the chart sets itself, so values.schema.json refuses them in ``config``.
CHART_MANAGED_SETTINGS = {
    "host",
    "port",
    "admin",
    "data_dir",
    "policies_dir",
    "tls",
    "master_key",
    "master_key_file",
    "upstream_api_key",
    # Per-upstream keys are secrets: they never go into the ConfigMap.
    "upstreams.api_key",
    "keys_file",
    "transcripts.dsn",
    "metrics.enabled",
}

Manifest = dict[str, Any]


def ci_values(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text(encoding="utf-8"))
    return values


def repository_policies() -> dict[str, str]:
    """What ``--set-file policies.files.<name>=policies/<name>`` passes: the repository's policies."""
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "policies").glob("*.yaml"))}


def production_values() -> dict[str, Any]:
    values = ci_values("production")
    values["policies"] = {"files": repository_policies()}
    return values


VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "production": production_values(),
    "postgres": ci_values("postgres"),
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> list[Manifest]:
    files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests: list[Manifest] = []
    for name, text in sorted(files.items()):
        if name.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                manifests.append(doc)
    return manifests


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart) -> dict[str, list[Manifest]]:
    return {name: render(chart, values) for name, values in VALUE_SETS.items()}


def only(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(manifests: list[Manifest]) -> set[str]:
    return {m["kind"] for m in manifests}


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = only(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def gateway_container(manifests: list[Manifest]) -> dict[str, Any]:
    containers = pod_spec(manifests)["containers"]
    assert [c["name"] for c in containers] == ["gateway"]
    container: dict[str, Any] = containers[0]
    return container


def rendered_config(manifests: list[Manifest]) -> dict[str, Any]:
    configmap = only(manifests, "ConfigMap", RELEASE)
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["config.yaml"])
    return config


# --- Helm's lint, and the Kubernetes API schemas ---------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict_is_clean(value_set: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[value_set], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # Severity 1 is information (Chart.yaml "icon is recommended": the project has no icon yet).
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_manifest_is_valid_kubernetes(rendered: dict[str, list[Manifest]], value_set: str) -> None:
    for manifest in rendered[value_set]:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: no schema in kubernetes-validate; see test_prometheus_operator_objects
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path)
                pytest.fail(
                    f"{manifest['kind']} {manifest['metadata']['name']} at {where} (k8s {version}): {exc.message}"
                )


def test_strict_kubernetes_validation_catches_an_unknown_field(rendered: dict[str, list[Manifest]]) -> None:
    """Guards the test above: a misspelt field must fail, not pass silently."""
    deployment = json.loads(json.dumps(only(rendered["default"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_value_sets_render_what_they_enable(rendered: dict[str, list[Manifest]]) -> None:
    base = {"ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Pod"}
    assert kinds(rendered["default"]) == base | {"Secret"}
    assert kinds(rendered["production"]) == base | {
        "Secret",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    }
    assert kinds(rendered["postgres"]) == base | {"NetworkPolicy"}


# --- Invariants of the workload ---------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pods_are_hardened(rendered: dict[str, list[Manifest]], value_set: str) -> None:
    manifests = rendered[value_set]
    spec = pod_spec(manifests)
    test_pod = only(manifests, "Pod")["spec"]
    for pod in (spec, test_pod):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        # Service links would inject PII_GATEWAY_PORT=tcp://..., which is our own settings prefix.
        assert pod["enableServiceLinks"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context.get("privileged", False) is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "add" not in context["capabilities"]
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{container['name']} {kind}"
            image = container["image"]
            tag = image.split("@")[0].rsplit(":", 1)[1]
            assert tag and tag != "latest", image
    service_account = only(manifests, "ServiceAccount")
    assert service_account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_probes_lifecycle_and_drain(rendered: dict[str, list[Manifest]], value_set: str) -> None:
    manifests = rendered[value_set]
    spec = pod_spec(manifests)
    container = gateway_container(manifests)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert pre_stop > 0
    grace = rendered_config(manifests)["shutdown_grace_seconds"]
    assert pre_stop + grace < spec["terminationGracePeriodSeconds"], "the drain must end before SIGKILL"
    assert spec["terminationGracePeriodSeconds"] == 30


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_writable_paths_are_volumes(rendered: dict[str, list[Manifest]], value_set: str) -> None:
    manifests = rendered[value_set]
    spec = pod_spec(manifests)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in gateway_container(manifests)["volumeMounts"]}
    for mount in mounts.values():
        assert mount["name"] in volumes, f"mount of unknown volume {mount['name']}"
    assert volumes[mounts["/tmp"]["name"]]["emptyDir"]["sizeLimit"]
    assert "emptyDir" in volumes[mounts["/data"]["name"]]  # no persistence in these value sets
    for path, mount in mounts.items():
        if path not in ("/tmp", "/data"):
            assert mount.get("readOnly") is True, f"{path} is writable"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_object_has_the_standard_labels(rendered: dict[str, list[Manifest]], value_set: str) -> None:
    manifests = rendered[value_set]
    tag = VALUE_SETS[value_set].get("image", {}).get("tag") or helm_app_version()
    objects = [*manifests, only(manifests, "Deployment")["spec"]["template"]]
    for manifest in objects:
        labels = manifest["metadata"]["labels"]
        missing = [label for label in STANDARD_LABELS if label not in labels]
        assert not missing, f"{manifest.get('kind', 'pod template')}: {missing}"
        assert labels["app.kubernetes.io/name"] == "pii-gateway"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == tag
        assert labels["helm.sh/chart"] == "pii-gateway-0.1.0"
    selector = only(manifests, "Deployment")["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "pii-gateway", "app.kubernetes.io/instance": RELEASE}


def helm_app_version() -> str:
    metadata = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    return str(metadata["appVersion"])


def test_app_version_is_the_package_version_and_the_default_tag(rendered: dict[str, list[Manifest]]) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert version is not None
    assert helm_app_version() == version.group(1)
    assert gateway_container(rendered["default"])["image"] == f"pii-gateway:{version.group(1)}"
    image = gateway_container(rendered["production"])["image"]
    assert image == "registry.example.com/platform/pii-gateway:0.1.0@sha256:" + "1" * 64


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pods_roll_on_checksums(chart: helm.Chart, rendered: dict[str, list[Manifest]], value_set: str) -> None:
    annotations = only(rendered[value_set], "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/policies"])
    changed = json.loads(json.dumps(VALUE_SETS[value_set]))
    changed.setdefault("config", {})["log_level"] = "debug"
    after = only(render(chart, changed), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert after["checksum/config"] != annotations["checksum/config"]


def test_a_policy_change_rolls_the_pods(chart: helm.Chart) -> None:
    def checksum(text: str) -> str:
        manifests = render(chart, {"policies": {"files": {"default.yaml": text}}})
        value: str = only(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/policies"]
        return value

    policy = repository_policies()["default.yaml"]
    assert checksum(policy) != checksum(policy + "\n# changed\n")


# --- Configuration, secrets and the environment ----------------------------------------------------


def secret_values(manifests: list[Manifest], external: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Every Secret the pod may read: the rendered ones (decoded), plus stand-ins for external ones."""
    secrets = {name: dict(data) for name, data in external.items()}
    for manifest in manifests:
        if manifest["kind"] == "Secret":
            secrets[manifest["metadata"]["name"]] = {
                key: base64.b64decode(value).decode() for key, value in manifest.get("data", {}).items()
            }
    return secrets


def container_env(container: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        data = secrets.get(ref["name"], {})
        if ref["key"] in data:
            env[item["name"]] = data[ref["key"]]
        else:
            assert ref.get("optional") is True, f"{item['name']}: Secret {ref['name']} has no key {ref['key']}"
    return env


def setting_exists(dotted: str) -> bool:
    model: type[BaseModel] = Settings
    *parents, leaf = dotted.split(".")
    for part in parents:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return False
        model = field.annotation
    return leaf in model.model_fields


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_env_names_are_settings_and_secrets_come_from_secrets(
    rendered: dict[str, list[Manifest]], value_set: str
) -> None:
    container = gateway_container(rendered[value_set])
    names = [item["name"] for item in container["env"]]
    assert len(names) == len(set(names))
    for name in names:
        if name.startswith(ENV_PREFIX):
            # The gateway ignores unknown top-level names (Kubernetes injects some), so a typo here
            # would be silently dropped: check each name against the settings model instead.
            dotted = name.removeprefix(ENV_PREFIX).lower().replace("__", ".")
            assert setting_exists(dotted), f"{name} is not a setting"
    by_name = {item["name"]: item for item in container["env"]}
    for secret in ("PII_GATEWAY_MASTER_KEY", "PII_GATEWAY_UPSTREAM_API_KEY", "PII_GATEWAY_TRANSCRIPTS__DSN"):
        if secret in by_name:
            assert "value" not in by_name[secret], f"{secret} must come from a Secret"
    assert "PII_GATEWAY_MASTER_KEY" in by_name
    assert container["args"] == ["serve", "--config", "/etc/pii-gateway/config/config.yaml"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendered_config_and_env_are_valid_settings(
    rendered: dict[str, list[Manifest]], value_set: str, tmp_path: Path
) -> None:
    manifests = rendered[value_set]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(only(manifests, "ConfigMap", RELEASE)["data"]["config.yaml"], encoding="utf-8")
    external = {
        "pii-gateway-keys": {"MASTER_KEY": base64.b64encode(os.urandom(32)).decode(), "OPENAI_API_KEY": "sk-x"},
        "pii-gateway-postgres": {"uri": "postgresql://gateway:pw@postgresql:5432/gateway"},
    }
    env = container_env(gateway_container(manifests), secret_values(manifests, external))
    settings = load_settings(environ=env, config_file=config_file)
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080
    assert settings.admin.port == 9090
    assert settings.data_dir == Path("/data")
    assert settings.production is True
    assert settings.master_key is not None
    assert len(base64.b64decode(settings.master_key.reveal())) == 32
    assert settings.shutdown_grace_seconds == 23
    if value_set == "postgres":
        assert settings.transcripts.dsn is not None
        assert settings.transcripts.dsn.reveal().startswith("postgresql://")
        assert settings.policies_dir == Path("/etc/pii-gateway/policies")
    if value_set == "production":
        assert settings.upstream_api_key is not None
        assert settings.keys_file == Path("/etc/pii-gateway/keys/keys.yaml")
        assert settings.policies_dir == Path("/etc/pii-gateway/policies")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_secret_value_outside_secrets(rendered: dict[str, list[Manifest]], value_set: str) -> None:
    values = VALUE_SETS[value_set]
    secrets = [values[k] for k in ("masterKey", "upstreamApiKey") if values.get(k)]
    for manifest in rendered[value_set]:
        if manifest["kind"] == "Secret":
            continue
        text = json.dumps(manifest)
        for secret in secrets:
            assert secret not in text, f"a secret value is in {manifest['kind']} {manifest['metadata']['name']}"


def test_generated_master_key_is_32_random_bytes_and_kept_on_uninstall(rendered: dict[str, list[Manifest]]) -> None:
    secret = only(rendered["default"], "Secret")
    key = base64.b64decode(secret["data"]["master-key"]).decode()
    assert len(base64.b64decode(key)) == 32
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    given = only(rendered["production"], "Secret")
    assert base64.b64decode(given["data"]["master-key"]).decode() == VALUE_SETS["production"]["masterKey"]
    assert base64.b64decode(given["data"]["upstream-api-key"]).decode() == "sk-upstream-production-test"


def test_existing_secret_postgres_and_existing_policies(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["postgres"]
    assert "Secret" not in kinds(manifests)
    env = {item["name"]: item for item in gateway_container(manifests)["env"]}
    assert env["PII_GATEWAY_MASTER_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "pii-gateway-keys",
        "key": "MASTER_KEY",
    }
    assert env["PII_GATEWAY_UPSTREAM_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "pii-gateway-keys",
        "key": "OPENAI_API_KEY",
        "optional": True,
    }
    assert env["PII_GATEWAY_TRANSCRIPTS__DSN"]["valueFrom"]["secretKeyRef"] == {
        "name": "pii-gateway-postgres",
        "key": "uri",
    }
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    assert volumes["policies"]["configMap"]["name"] == "pii-gateway-policies"
    annotations = only(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations


def test_tls_mounts_the_certificate_and_probes_https(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["production"]
    container = gateway_container(manifests)
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["PII_GATEWAY_TLS__CERT"] == "/etc/pii-gateway/tls/tls.crt"
    assert env["PII_GATEWAY_TLS__KEY"] == "/etc/pii-gateway/tls/tls.key"
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "pii-gateway-tls"
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


# --- NOTES.txt -------------------------------------------------------------------------------------


def notes(chart: helm.Chart, values: dict[str, Any]) -> str:
    """NOTES.txt as ``helm install`` prints it (``render`` leaves it out of the manifests)."""
    files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    [text] = [text for name, text in files.items() if name.endswith("/NOTES.txt")]
    return text


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_notes_tell_how_to_reach_the_gateway(
    chart: helm.Chart, rendered: dict[str, list[Manifest]], value_set: str
) -> None:
    """Every address and command NOTES prints names an object the chart really rendered."""
    manifests = rendered[value_set]
    text = notes(chart, VALUE_SETS[value_set])
    lines = [line.strip() for line in text.splitlines()]
    service = only(manifests, "Service", RELEASE)
    [port] = service["spec"]["ports"]
    scheme = port["appProtocol"]
    assert scheme == ("https" if value_set == "production" else "http")  # TLS in production only
    name, api_port = service["metadata"]["name"], port["port"]
    assert f"{scheme}://{name}.{NAMESPACE}.svc:{api_port}/v1" in lines
    assert (
        f"kubectl -n {NAMESPACE} rollout status deployment/{only(manifests, 'Deployment')['metadata']['name']}" in lines
    )
    assert f"kubectl -n {NAMESPACE} port-forward service/{name} 8080:{api_port}" in lines
    readyz = gateway_container(manifests)["readinessProbe"]["httpGet"]["path"]
    insecure = "-k " if scheme == "https" else ""  # the chart's certificate is the user's own, often private
    assert f"curl {insecure}{scheme}://127.0.0.1:8080{readyz}" in lines
    assert f"helm test {RELEASE} -n {NAMESPACE}" in lines
    assert only(manifests, "Pod")["metadata"]["annotations"]["helm.sh/hook"] == "test"
    metrics = only(manifests, "Service", f"{RELEASE}-metrics")
    assert f"http://{RELEASE}-metrics.{NAMESPACE}.svc:{metrics['spec']['ports'][0]['port']}/metrics" in lines
    backup = [line for line in lines if "jsonpath='{.data." in line]
    if value_set == "default":
        # The master key was generated: the backup command reads the Secret and key the chart wrote.
        secret = only(manifests, "Secret")
        key = next(iter(secret["data"]))
        assert backup == [
            f"kubectl -n {NAMESPACE} get secret {secret['metadata']['name']} -o jsonpath='{{.data.{key}}}' | base64 -d"
        ]
        assert "image.repository" in text  # the locally built name will not pull in a cluster
    else:
        assert backup == []  # the key came from the values or an existing Secret
    assert ("NETWORK POLICY: only the clients" in text) == bool(
        VALUE_SETS[value_set].get("networkPolicy", {}).get("allowedClients")
    )
    assert ("SQLite on an emptyDir" in text) == (value_set != "postgres")


@pytest.mark.parametrize(
    ("service_type", "command"),
    [
        ("LoadBalancer", "get service pii-gateway -o jsonpath='{.status.loadBalancer.ingress[0].ip}"),
        ("NodePort", "get service pii-gateway -o jsonpath='{.spec.ports[0].nodePort}'"),
    ],
)
def test_notes_tell_how_to_reach_an_exposed_service(chart: helm.Chart, service_type: str, command: str) -> None:
    text = notes(chart, {"service": {"type": service_type}})
    assert f"From outside the cluster ({service_type}" in text
    assert f"kubectl -n {NAMESPACE} {command}" in text
    assert "From outside the cluster" not in notes(chart, {})


# --- values.schema.json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": -1}, "/replicaCount"),
        ({"replicas": 2}, "'replicas' not allowed"),
        ({"image": {"tagg": "0.1.0"}}, "'tagg' not allowed"),
        ({"image": {"tag": "latest"}}, "/image/tag"),
        ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
        ({"masterKey": "too-short"}, "/masterKey"),
        ({"service": {"port": 0}}, "/service/port"),
        ({"config": {"port": 9000}}, "'port' not allowed"),
        ({"config": {"master_key": "x"}}, "'master_key' not allowed"),
        ({"config": {"transcripts": {"dsn": "postgresql://u:p@h/db"}}}, "'dsn' not allowed"),
        ({"config": {"detector": {"wrkers": 2}}}, "'wrkers' not allowed"),
        ({"config": {"log_level": "verbose"}}, "/config/log_level"),
        ({"policies": {"files": {"default.txt": "name: x"}}}, "invalid propertyName 'default.txt'"),
        ({"networkPolicy": {"upstreams": [{"cidr": "api.openai.com", "ports": [443]}]}}, "cidr"),
        ({"podSecurityContext": {"runAsNonroot": True}}, "'runAsNonroot' not allowed"),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "'enable' not allowed"),
    ],
)
def test_schema_rejects_wrong_values(chart: helm.Chart, values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    assert complaint in str(caught.value)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"tls": {"enabled": True}}, "tls.existingSecret"),
        ({"networkPolicy": {"enabled": True, "upstreams": []}}, "networkPolicy.upstreams"),
        ({"persistence": {"enabled": True}, "replicaCount": 2}, "one replica"),
        ({"config": {"shutdown_grace_seconds": 28}}, "terminationGracePeriodSeconds"),
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "maxReplicas"),
        ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}, "need metrics.enabled"),
    ],
)
def test_templates_refuse_inconsistent_values(chart: helm.Chart, values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    assert complaint in str(caught.value)


def test_persistence_with_one_replica_uses_a_claim_and_recreate(chart: helm.Chart) -> None:
    manifests = render(chart, {"persistence": {"enabled": True}, "replicaCount": 1})
    claim = only(manifests, "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    deployment = only(manifests, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def schema_properties(node: dict[str, Any]) -> dict[str, Any]:
    assert node.get("additionalProperties") is False, "every object the chart defines is closed"
    properties: dict[str, Any] = node["properties"]
    return properties


def test_schema_closes_every_object_it_defines() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))

    def walk(node: dict[str, Any], where: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{where} accepts unknown keys"
            for key, child in node["properties"].items():
                walk(child, f"{where}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")

    walk(schema, "values")


def model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``Model``, ``Model | None`` or ``list[Model]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = model_of(arg)
            if found is not None:
                return found
    return None


def test_config_schema_matches_the_gateway_settings() -> None:
    """Every setting is settable through `config` unless the chart manages it, and nothing else is."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))

    def compare(model: type[BaseModel], node: dict[str, Any], prefix: str) -> None:
        properties = schema_properties(node)
        expected = {name for name in model.model_fields if prefix + name not in CHART_MANAGED_SETTINGS}
        assert set(properties) == expected, f"config.{prefix or ''}: schema {sorted(properties)} != {sorted(expected)}"
        for name in expected:
            nested = model_of(model.model_fields[name].annotation)
            if nested is not None:
                child = properties[name]
                compare(nested, child.get("items", child), prefix + name + ".")

    compare(Settings, schema["properties"]["config"], "")


def test_chart_defaults_pass_the_schema(chart: helm.Chart) -> None:
    chart.validate_schema(chart.values)
    for values in VALUE_SETS.values():
        chart.validate_schema(chart.merge_values(values))


# --- The chart README -------------------------------------------------------------------------------


def value_leaves(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaf values: scalars, lists, and maps the schema leaves open (labels, selectors, behavior)."""
    for key, value in values.items():
        child = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and value and "properties" in child:
            yield from value_leaves(value, child, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_readme_lists_every_value_with_its_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    table = {
        match.group(1): json.loads(match.group(2))
        for match in re.finditer(r"^\| `([^`]+)` \| `([^`]*)` \|", readme, re.MULTILINE)
    }
    leaves = dict(value_leaves(values, schema))
    assert leaves, "values.yaml has no values?"
    missing = sorted(set(leaves) - set(table))
    assert not missing, f"not in helm/pii-gateway/README.md: {missing}"
    stale = sorted(set(table) - set(leaves))
    assert not stale, f"in the README but not in values.yaml: {stale}"
    wrong = {key: (table[key], value) for key, value in leaves.items() if table[key] != value}
    assert not wrong, f"README default != values.yaml default: {wrong}"


# --- Metrics: dashboard and alerts ------------------------------------------------------------------


class _IdleDetector:
    """The detector's counters as metrics read them, before any traffic."""

    cache_hits = 0
    cache_misses = 0
    cache_bytes = 0
    recycled_workers = 0


def exported_metric_names() -> set[str]:
    """Every series name gateway/metrics.py can export, with the suffixes prometheus_client adds."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names: set[str] = set()
    metrics = Metrics(CollectorRegistry())
    metrics.watch_detector(_IdleDetector())
    for family in metrics.registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


METRIC_NAME = re.compile(r"\b((?:gateway|gen_ai)_[a-z0-9_]+)\b")


def test_dashboard_is_importable_and_uses_only_exported_metrics(rendered: dict[str, list[Manifest]]) -> None:
    text = (CHART / "dashboards" / "pii-gateway.json").read_text(encoding="utf-8")
    dashboard = json.loads(text)
    assert dashboard["uid"] == "pii-gateway"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "namespace", "job"}
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    exported = exported_metric_names()
    used: set[str] = set()
    for panel in panels:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            names = set(METRIC_NAME.findall(target["expr"]))
            assert names, f"panel {panel['title']!r} queries no gateway metric"
            assert names <= exported, f"panel {panel['title']!r}: {sorted(names - exported)} are not exported"
            assert target["expr"].count("(") == target["expr"].count(")")
            used |= names
    # No two panels share a cell of Grafana's 24-column grid.
    taken: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]
    # Which models get the traffic, and how many tokens of each type they use.
    grouped = {
        (name, frozenset(re.sub(r"\s", "", by).split(",")))
        for panel in panels
        for target in panel.get("targets", [])
        for by, name in re.findall(r"sum by \(([^)]*)\) \((?:rate|increase)\(([a-z_]+)\{", target["expr"])
    }
    assert ("gateway_requests_total", frozenset({"model"})) in grouped
    assert ("gen_ai_client_token_usage_sum", frozenset({"model", "token_type"})) in grouped
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("requests", "p50 / p95 / p99", "first token", "tokens", "pii found", "actions", "blocked"):
        assert topic in titles, topic
    for topic in ("upstream errors", "detector failures", "transcript", "policy reloads"):
        assert topic in titles, topic
    for metric in (
        "gateway_requests_total",
        "gen_ai_server_request_duration_seconds_bucket",
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_client_token_usage_sum",
        "gateway_entities_total",
        "gateway_blocked_requests_total",
        "gateway_upstream_errors_total",
        "gateway_detector_errors_total",
        "gateway_transcript_write_failures_total",
        "gateway_policy_reloads_total",
    ):
        assert metric in used, metric
    configmap = only(rendered["production"], "ConfigMap", f"{RELEASE}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert json.loads(configmap["data"]["pii-gateway.json"]) == dashboard


def test_prometheus_operator_objects(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["production"]
    metrics_service = only(manifests, "Service", f"{RELEASE}-metrics")
    monitor = only(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= metrics_service["metadata"]["labels"].items()
    assert not selected.items() <= only(manifests, "Service", RELEASE)["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" == metrics_service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"])

    rule = only(manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    [group] = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) >= {
        "PiiGatewayHighErrorRate",
        "PiiGatewayDetectorFailures",
        "PiiGatewayUpstreamSlow",
        "PiiGatewayBlockedRequestsSpike",
        "PiiGatewayTranscriptWriteFailures",
        "PiiGatewayPolicyReloadFailed",
    }
    exported = exported_metric_names()
    for name, alert in alerts.items():
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert alert["annotations"]["summary"], name
        expr = alert["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), name
        assert f'namespace="{NAMESPACE}", job="{RELEASE}-metrics"' in expr, name
        assert set(METRIC_NAME.findall(expr)) <= exported, name
        if "for" in alert:
            assert re.fullmatch(r"\d+[smh]", alert["for"]), name
    # Prometheus' own template syntax survives Helm's.
    assert "{{ $value | humanizePercentage }}" in alerts["PiiGatewayHighErrorRate"]["annotations"]["description"]
    assert alerts["PiiGatewayPolicyReloadFailed"]["expr"].count('result="failure"') == 1


def test_alert_rules_file_is_what_the_rule_renders() -> None:
    text = (CHART / "files" / "alerts.yaml").read_text(encoding="utf-8")
    assert "- alert: PiiGatewayHighErrorRate" in text
    template = (CHART / "templates" / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert '.Files.Get "files/alerts.yaml"' in template


# --- NetworkPolicy ----------------------------------------------------------------------------------


def test_network_policy_allows_dns_and_the_upstreams_only(rendered: dict[str, list[Manifest]]) -> None:
    policy = only(rendered["production"], "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "pii-gateway",
        "app.kubernetes.io/instance": RELEASE,
    }
    dns, *upstreams = policy["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    configured = VALUE_SETS["production"]["networkPolicy"]["upstreams"]
    assert len(upstreams) == len(configured)
    for rule, upstream in zip(upstreams, configured, strict=True):
        assert rule["to"] == [{"ipBlock": {"cidr": upstream["cidr"], "except": upstream["except"]}}]
        assert [p["port"] for p in rule["ports"]] == upstream["ports"]
    ingress = {rule["ports"][0]["port"]: rule for rule in policy["ingress"]}
    assert set(ingress) == {"http", "metrics"}
    assert {"podSelector": {"matchLabels": {"pii-gateway-client": "true"}}} in ingress["http"]["from"]
    test_pod_labels = only(rendered["production"], "Pod")["metadata"]["labels"]
    assert test_pod_labels["pii-gateway-client"] == "true"

    postgres = only(rendered["postgres"], "NetworkPolicy")["spec"]["egress"]
    assert postgres[-1] == VALUE_SETS["postgres"]["networkPolicy"]["extraEgress"][0]
    assert [p["port"] for p in postgres[1]["ports"]] == [443, 8443]


# --- The gateway, started from what the chart renders -----------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Pod:
    """The rendered pod, laid out under ``root`` as the kubelet would lay out its volumes."""

    root: Path
    args: list[str]
    env: dict[str, str]
    #: The settings file as the gateway reads it (paths relocated under root).
    config: dict[str, Any]

    def path(self, in_container: str) -> Path:
        return self.root / in_container.lstrip("/")


def lay_out_pod(
    manifests: list[Manifest],
    root: Path,
    external: dict[str, dict[str, str]],
    external_configmaps: dict[str, dict[str, str]] | None = None,
) -> Pod:
    """``external``: Secrets the chart only refers to; ``external_configmaps``: likewise, ConfigMaps."""
    container = gateway_container(manifests)
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    configmaps = dict(external_configmaps or {})
    configmaps.update({m["metadata"]["name"]: m["data"] for m in manifests if m["kind"] == "ConfigMap"})
    secrets = secret_values(manifests, external)
    mount_paths = [m["mountPath"] for m in container["volumeMounts"]]

    def relocate(value: Any) -> Any:
        # Only the mount location changes: a path under a mount moves under root, nothing else.
        if isinstance(value, dict):
            return {k: relocate(v) for k, v in value.items()}
        if isinstance(value, list):
            return [relocate(v) for v in value]
        if isinstance(value, str) and any(value == m or value.startswith(m + "/") for m in mount_paths):
            return str(root) + value
        return value

    config: dict[str, Any] = {}
    for mount in container["volumeMounts"]:
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        volume = volumes[mount["name"]]
        files: dict[str, str] = {}
        if "configMap" in volume:
            files = configmaps[volume["configMap"]["name"]]
        elif "secret" in volume:
            files = secrets[volume["secret"]["secretName"]]
        for name, text in files.items():
            if name == "config.yaml":
                config = relocate(yaml.safe_load(text))
                text = yaml.safe_dump(config)
            (target / name).write_text(text, encoding="utf-8")
    env = {name: relocate(value) for name, value in container_env(container, secrets).items()}
    return Pod(root=root, args=relocate(container["args"]), env=env, config=config)


async def create_gateway_key(pod: Pod, keys_file: Path) -> str:
    """What a platform team does before creating the keys Secret: `pii-gateway keys create`."""
    process = await asyncio.create_subprocess_exec(
        *gateway_command(),
        "keys",
        "create",
        "--tenant",
        "platform-test",
        env={**base_environ(), "PII_GATEWAY_KEYS_FILE": str(keys_file), "HOME": str(pod.path("/tmp"))},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode().strip()


def gateway_command() -> list[str]:
    """The image's ENTRYPOINT, pii-gateway, from this environment."""
    script = Path(sys.executable).parent / "pii-gateway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


def base_environ() -> dict[str, str]:
    """The test process's environment without any PII_GATEWAY_* of its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


def read_log(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")


def tail(log: Path) -> str:
    return read_log(log)[-4000:]


async def wait_ready(
    url: str, process: asyncio.subprocess.Process, log: Path, tls: ssl.SSLContext | None = None
) -> None:
    """Poll ``url`` until it answers 200; the detector loads its model in the background first."""
    try:
        async with asyncio.timeout(90), aiohttp.ClientSession() as session:
            while True:
                if process.returncode is not None:
                    pytest.fail(f"the gateway exited with {process.returncode}:\n{tail(log)}")
                try:
                    async with session.get(url, ssl=tls if tls is not None else True) as reply:
                        if reply.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.25)
    except TimeoutError:
        pytest.fail(f"{url} not ready after 90s:\n{tail(log)}")


@dataclass
class Deployed:
    """What a platform team provides besides the values: Secrets and ConfigMaps the chart refers to."""

    values: dict[str, Any]
    secrets: dict[str, dict[str, str]]
    configmaps: dict[str, dict[str, str]]
    #: The CA that signed the TLS Secret's certificate (None: TLS off).
    ca: Path | None = None
    #: The transcripts DSN (None: SQLite under /data).
    dsn: str | None = None


async def deployed(value_set: str, tmp_path: Path) -> Deployed:
    values: dict[str, Any] = json.loads(json.dumps(VALUE_SETS[value_set]))
    if value_set == "production":
        ca, cert, key = make_ca_and_cert(tmp_path)
        tls = values["tls"]
        assert tls["enabled"] is True
        certificate = {"tls.crt": cert.read_text(encoding="utf-8"), "tls.key": key.read_text(encoding="utf-8")}
        # The gateway keys Secret starts empty: create_gateway_key writes into the mounted folder.
        secrets = {values["apiKeys"]["existingSecret"]: {}, tls["existingSecret"]: certificate}
        return Deployed(values, secrets, {}, ca=ca)
    dsn = await postgres_schema()
    if dsn is None:
        pytest.skip(f"PostgreSQL is not reachable at {PG_DSN}: the existingSecret + PostgreSQL set is not served")
    keys = {values["secretKeys"]["masterKey"]: base64.b64encode(os.urandom(32)).decode()}
    # No upstream key in the Secret (its reference is optional): clients' own provider keys pass through.
    dsn_secret = values["transcripts"]["dsnSecret"]
    secrets = {values["existingSecret"]: keys, dsn_secret["name"]: {dsn_secret["key"]: dsn}}
    policies = {values["policies"]["existingConfigMap"]: repository_policies()}
    return Deployed(values, secrets, policies, dsn=dsn)


async def transcript_rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows: list[asyncpg.Record] = await conn.fetch("SELECT route, status, outcome, content FROM transcripts")
    finally:
        await conn.close()
    return rows


async def drop_schema(dsn: str) -> None:
    schema = dsn.rsplit("search_path=", 1)[1]
    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@pytest.mark.parametrize("value_set", ["production", "postgres"])
async def test_gateway_serves_with_exactly_the_rendered_config(
    chart: helm.Chart, aiohttp_server: ServerFactory, tmp_path: Path, value_set: str
) -> None:
    """A value set as the pod would get it: the gateway starts, is ready, answers, records, drains.

    ``production``: the chart's Secret, gateway keys from ``apiKeys.existingSecret`` and TLS from a
    ``kubernetes.io/tls`` Secret, served for real (the client verifies the certificate against its CA).
    ``postgres``: the master key from ``existingSecret``, policies from an existing ConfigMap, and
    transcripts written to the PostgreSQL of the DSN Secret (skipped when it is not reachable).

    Deviations from the pod, each only where a pod and a test process must differ: the volumes live
    under a temporary folder (paths rewritten by mount location only); listen addresses and ports are
    loopback and free ports (set through the environment, which beats the file); the upstream is a
    local fake (``PII_GATEWAY_UPSTREAM``); the PostgreSQL is the test database, in a schema of its own.
    """
    setup = await deployed(value_set, tmp_path)
    values = setup.values
    manifests = render(chart, values)
    pod = lay_out_pod(manifests, tmp_path / "pod", external=setup.secrets, external_configmaps=setup.configmaps)
    if value_set == "production":
        client_key = await create_gateway_key(pod, Path(pod.config["keys_file"]))
    else:
        client_key = "sk-client-own-provider-key"
    tls = ssl.create_default_context(cafile=str(setup.ca)) if setup.ca is not None else None
    scheme = "https" if tls is not None else "http"

    fake = FakeUpstream()
    upstream = await aiohttp_server(fake.app())
    port, admin_port = free_port(), free_port()
    env = {
        **base_environ(),
        **pod.env,
        "PII_GATEWAY_HOST": "127.0.0.1",
        "PII_GATEWAY_PORT": str(port),
        "PII_GATEWAY_ADMIN__HOST": "127.0.0.1",
        "PII_GATEWAY_ADMIN__PORT": str(admin_port),
        "PII_GATEWAY_UPSTREAM": str(upstream.make_url("/v1")),
    }
    assert ("PII_GATEWAY_TLS__CERT" in env) == (value_set == "production")
    assert ("PII_GATEWAY_TRANSCRIPTS__DSN" in env) == (value_set == "postgres")
    log = tmp_path / "gateway.log"
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *gateway_command(), *pod.args, env=env, stdout=log_file, stderr=asyncio.subprocess.STDOUT, cwd=pod.root
        )
    prompt = "Hi, I'm Maria Gonzalez. Please write to john.smith@example.com about the invoice."
    try:
        await wait_ready(f"{scheme}://127.0.0.1:{port}/readyz", process, log, tls)

        async with (
            openai.DefaultAsyncHttpxClient(verify=tls if tls is not None else True) as http,
            openai.AsyncOpenAI(
                base_url=f"{scheme}://127.0.0.1:{port}/v1", api_key=client_key, max_retries=0, http_client=http
            ) as client,
        ):
            reply = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])
        assert reply.choices[0].message.content == prompt
        sent = json.dumps(fake.requests[-1])
        assert "john.smith@example.com" not in sent
        assert "Maria Gonzalez" not in sent
        if value_set == "production":
            # The upstream key came from the Secret; the client's gateway key stayed at the gateway.
            assert fake.headers[-1]["Authorization"] == "Bearer " + values["upstreamApiKey"]
            assert client_key not in json.dumps(fake.headers[-1])
        else:
            assert fake.headers[-1]["Authorization"] == "Bearer " + client_key

        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as metrics:
                assert metrics.status == 200
                # Only the models of config metrics.models are labelled by name.
                configured = "gpt-4o" in values["config"].get("metrics", {}).get("models", [])
                model = "gpt-4o" if configured else "other"
                assert f'gateway_requests_total{{model="{model}"' in await metrics.text()
            async with session.get(f"{scheme}://127.0.0.1:{port}/metrics", ssl=tls or True) as not_here:
                assert not_here.status == 404  # /metrics is on the admin port only
            if tls is not None:
                with pytest.raises(aiohttp.ClientError):  # the API port speaks TLS only
                    async with session.get(f"http://127.0.0.1:{port}/readyz"):
                        pass

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=40) == 0
        if setup.dsn is not None:
            # The transcript reached the shared store, encrypted: no prompt text in the row.
            [row] = await transcript_rows(setup.dsn)
            assert (row["route"], row["status"], row["outcome"]) == ("chat.completions", 200, "ok")
            assert row["content"] and b"john.smith@example.com" not in row["content"]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if setup.dsn is not None:
            await drop_schema(setup.dsn)
    output = read_log(log)
    secrets = [client_key, "john.smith@example.com", *(v for data in setup.secrets.values() for v in data.values())]
    secrets += [values[k] for k in ("masterKey", "upstreamApiKey") if values.get(k)]
    for secret in secrets:
        if secret.startswith("-----BEGIN CERTIFICATE"):
            continue  # a certificate is public
        assert secret not in output, "a secret or a prompt's personal data reached the log"

"""deploy/kubernetes: every manifest validates offline against the Kubernetes 1.30 schemas
(kubernetes-validate's bundled ones, strict: unknown fields are errors), and the deployment has
the properties the design needs: 3 server replicas that attest on their own, 2 KBS replicas on
PostgreSQL behind a client-affine Service, health probes on sealserve's paths, resources,
restricted security contexts, and secrets referenced, never inlined.
"""

from __future__ import annotations

import copy
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from sealserve.cli import build_parser
from sealserve.kbs.http import HEALTH_PATH as KBS_HEALTH_PATH
from sealserve.serving.model_config import parse_model_config_text
from sealserve.serving.rest import LIVE_PATH, READY_PATH
from tests.deploy.common import KUBERNETES

KUBERNETES_VERSION = "1.30"
TEMPLATE = KUBERNETES / "secrets.template.yaml"
VARIANTS = ("tdx", "sgx")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


ALL_FILES = sorted(KUBERNETES.rglob("*.yaml"))
OBJECTS = [
    (path, doc) for path in ALL_FILES for doc in _docs(path) if doc["kind"] != "Kustomization"
]


def _id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.relative_to(KUBERNETES)}:{doc['kind']}/{doc['metadata']['name']}"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Validation must use the bundled schemas only."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("schema validation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


# --- schemas ------------------------------------------------------------------------------------


def test_there_are_manifests() -> None:
    kinds = {doc["kind"] for _, doc in OBJECTS}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "Secret"} <= kinds


@pytest.mark.parametrize("item", OBJECTS, ids=[_id(item) for item in OBJECTS])
def test_validates_against_the_kubernetes_schema(
    item: tuple[Path, dict[str, Any]], no_network: None
) -> None:
    _, doc = item
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_the_validator_rejects_what_kubernetes_rejects(no_network: None) -> None:
    deployment = copy.deepcopy(_server("tdx"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment = copy.deepcopy(_server("tdx"))
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# --- kustomizations -----------------------------------------------------------------------------


def _kustomization(directory: Path) -> list[Path]:
    (doc,) = _docs(directory / "kustomization.yaml")
    assert doc["kind"] == "Kustomization"
    return [directory / entry for entry in doc["resources"]]


def _resolved(directory: Path) -> list[Path]:
    """The manifest files a kustomization builds from, recursively."""
    out: list[Path] = []
    for entry in _kustomization(directory):
        out.extend(_resolved(entry) if entry.is_dir() else [entry])
    return out


def _variant(variant: str) -> list[dict[str, Any]]:
    return [doc for path in _resolved(KUBERNETES / variant) for doc in _docs(path)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_builds_the_whole_deployment(variant: str) -> None:
    files = _resolved(KUBERNETES / variant)
    assert all(path.is_file() for path in files), files
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in _variant(variant)}
    for wanted in [
        ("Namespace", "sealserve"),
        ("Deployment", "sealserve"),
        ("Service", "sealserve"),
        ("Deployment", "sealserve-kbs"),
        ("Service", "sealserve-kbs"),
        ("StatefulSet", "sealserve-postgres"),
        ("PersistentVolumeClaim", "sealserve-models"),
    ]:
        assert wanted in names, wanted
    assert not [doc for doc in _variant(variant) if doc["kind"] == "Secret"]


def test_every_manifest_is_used_and_the_secret_template_is_not() -> None:
    used = {path.resolve() for variant in VARIANTS for path in _resolved(KUBERNETES / variant)}
    manifests = {p.resolve() for p in ALL_FILES if p.name != "kustomization.yaml"}
    assert manifests - used == {TEMPLATE.resolve()}


def test_everything_is_in_the_sealserve_namespace() -> None:
    for _, doc in OBJECTS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "sealserve", _id((_, doc))


# --- helpers over the objects -------------------------------------------------------------------


def _object(variant: str, kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _variant(variant) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (variant, kind, name)
    return found[0]


def _server(variant: str) -> dict[str, Any]:
    return _object(variant, "Deployment", "sealserve")


def _kbs() -> dict[str, Any]:
    return _object("tdx", "Deployment", "sealserve-kbs")


def _container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(found)


def _workloads() -> list[tuple[str, dict[str, Any]]]:
    """(an id, the workload): each variant's servers, then the shared KBS and database."""
    out = [(f"{variant}-server", _server(variant)) for variant in VARIANTS]
    for path in _resolved(KUBERNETES / "common"):
        for doc in _docs(path):
            if doc["kind"] in ("Deployment", "StatefulSet"):
                out.append((doc["metadata"]["name"], doc))
    return out


WORKLOADS = _workloads()
WORKLOAD_IDS = [name for name, _ in WORKLOADS]


def _template_objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in _docs(TEMPLATE)}


def _mounts(workload: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the volume mounted there."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}


def _volume_of(workload: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    matches = [
        (mount, volume)
        for mount, volume in _mounts(workload, container).items()
        if path.startswith(mount.rstrip("/") + "/")
    ]
    assert matches, f"{path} is on no volume"
    return max(matches, key=lambda mv: len(mv[0]))[1]


# --- the servers --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_three_server_replicas(variant: str) -> None:
    assert _server(variant)["spec"]["replicas"] == 3


@pytest.mark.parametrize("variant", VARIANTS)
def test_server_probes_use_the_health_paths(variant: str) -> None:
    container = _container(_server(variant), "server")
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == READY_PATH and liveness["path"] == LIVE_PATH
    for probe in (readiness, liveness, container["startupProbe"]["httpGet"]):
        assert probe["scheme"] == "HTTPS"  # the REST port serves TLS (ssl.cfg)
        assert _port(container, probe["port"]) == 8501


def test_kbs_is_ready_by_its_health_path_and_alive_by_its_port() -> None:
    container = _container(_kbs(), "kbs")
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == KBS_HEALTH_PATH and readiness["scheme"] == "HTTPS"
    assert _port(container, readiness["port"]) == 8080
    assert "tcpSocket" in container["livenessProbe"]  # a database outage must not restart it


@pytest.mark.parametrize("variant", VARIANTS)
def test_server_ports_and_service(variant: str) -> None:
    deployment = _server(variant)
    container = _container(deployment, "server")
    assert _port(container, "grpc") == 8500 and _port(container, "rest") == 8501
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for name in ("sealserve", "sealserve-pods"):
        service = _object(variant, "Service", name)
        assert service["spec"]["selector"].items() <= labels.items()
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert (ports["grpc"]["port"], ports["rest"]["port"]) == (8500, 8501)
        assert _port(container, ports["grpc"]["targetPort"]) == 8500
        assert _port(container, ports["rest"]["targetPort"]) == 8501
    budget = _object(variant, "PodDisruptionBudget", "sealserve")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_tdx_servers_attest_with_tsm_and_get_keys_from_the_kbs() -> None:
    deployment = _server("tdx")
    container = _container(deployment, "server")
    assert container["command"] == ["sealserve", "serve"]
    args = container["args"]
    assert any(a.startswith("--key_broker=") for a in args)
    assert "--attestation=tsm" in args
    parsed = build_parser().parse_args(["serve", *args])
    assert parsed.attestation == "tsm" and parsed.model_key == []
    kbs_url = urlsplit(parsed.key_broker)
    service = _object("tdx", "Service", "sealserve-kbs")
    assert kbs_url.scheme == "https"
    assert kbs_url.hostname == "sealserve-kbs.sealserve.svc"
    assert kbs_url.port == service["spec"]["ports"][0]["port"]
    # every file the server is told to read is on a volume
    assert "configMap" in _volume_of(deployment, container, parsed.key_broker_ca)
    assert "secret" in _volume_of(deployment, container, parsed.ssl_config_file)
    assert "configMap" in _volume_of(deployment, container, parsed.model_config_file)
    tsm = _volume_of(deployment, container, "/sys/kernel/config/tsm/report/x")
    assert tsm["hostPath"]["path"] == "/sys/kernel/config/tsm/report"


def test_tdx_model_config_is_valid_and_on_the_model_volume() -> None:
    config = _object("tdx", "ConfigMap", "sealserve-models-config")["data"]["models.config"]
    models = parse_model_config_text(config, "models.config")
    assert models
    deployment = _server("tdx")
    container = _container(deployment, "server")
    for model in models:
        volume = _volume_of(deployment, container, model.base_path)
        assert volume["persistentVolumeClaim"]["claimName"] == "sealserve-models"


def test_sgx_servers_run_in_gramine_with_epc_and_aesmd() -> None:
    deployment = _server("sgx")
    container = _container(deployment, "server")
    # the command line of sealserve is fixed in the signed manifest (deploy/gramine), which
    # carries --attestation=gramine and --key_broker; the host gives no arguments
    assert container["command"] == ["gramine-sgx", "sealserve"]
    assert container.get("args", []) == []
    resources = container["resources"]
    for name in ("sgx.intel.com/epc", "sgx.intel.com/enclave"):
        assert resources["requests"][name] == resources["limits"][name], name
    # EPC for the whole enclave (without EDMM it is all committed at start)
    makefile = (KUBERNETES.parent / "gramine" / "Makefile").read_text()
    (enclave_size,) = re.findall(r"^ENCLAVE_SIZE \?= (\d+)G$", makefile, re.M)
    assert resources["requests"]["sgx.intel.com/epc"] == f"{enclave_size}Gi"
    aesmd = _volume_of(deployment, container, "/var/run/aesmd/aesm.socket")
    assert aesmd["hostPath"]["path"] == "/var/run/aesmd"
    assert not [m for m in _mounts(deployment, container) if m.startswith("/etc/sealserve")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_models_are_a_read_only_volume(variant: str) -> None:
    deployment = _server(variant)
    container = _container(deployment, "server")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    assert mount["readOnly"] is True
    volume = _volume_of(deployment, container, "/models/m/1/saved_model.pb")
    assert volume["persistentVolumeClaim"] == {"claimName": "sealserve-models", "readOnly": True}


# --- the key broker -----------------------------------------------------------------------------


def test_kbs_replicas_and_command() -> None:
    kbs = _kbs()
    assert kbs["spec"]["replicas"] >= 2
    container = _container(kbs, "kbs")
    assert container["command"] == ["sealserve", "kbs", "serve"]
    args = build_parser().parse_args(["kbs", "serve", *container["args"]])
    assert args.tls_cert and args.tls_key and not args.insecure_http
    assert args.insecure_trust_sim_root is None and args.collateral == []
    assert args.pccs_url == "$(PCCS_URL)"
    assert args.host == "0.0.0.0"
    assert _port(container, "https") == args.port


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_kbs_database_is_postgresql_and_its_password_a_secret() -> None:
    kbs = _kbs()
    container = _container(kbs, "kbs")
    args = build_parser().parse_args(["kbs", "serve", *container["args"]])
    assert args.db == "$(KBS_DB_URL)"
    ref = _env(container)["KBS_DB_URL"]["valueFrom"]["configMapKeyRef"]
    url = _object("tdx", "ConfigMap", ref["name"])["data"][ref["key"]]
    parts = urlsplit(url)
    assert parts.scheme == "postgresql" and parts.password is None  # no password in the URL
    assert parts.hostname == "sealserve-postgres.sealserve.svc"
    password = _env(container)["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": "sealserve-postgres", "key": "password"}
    postgres = _object("tdx", "StatefulSet", "sealserve-postgres")
    db_env = _env(_container(postgres, "postgres"))
    assert db_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == password
    assert postgres["spec"]["volumeClaimTemplates"]


def test_kbs_key_files_come_from_secrets() -> None:
    kbs = _kbs()
    container = _container(kbs, "kbs")
    args = build_parser().parse_args(["kbs", "serve", *container["args"]])
    for path in (args.signing_key, args.admin_token_file, args.tls_cert, args.tls_key):
        assert "secret" in _volume_of(kbs, container, path), path
    # the master key: copied from the Secret into memory with mode 0600 (the KBS refuses a
    # group-readable master key, and fsGroup makes Secret files 0440)
    master = _volume_of(kbs, container, args.master_key)
    assert master["emptyDir"]["medium"] == "Memory"
    (init,) = kbs["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][:3] == ["install", "-m", "0600"]
    assert init["command"][-1] == args.master_key
    assert "secret" in _volume_of(kbs, init, init["command"][-2])


def test_kbs_service_keeps_a_client_on_one_instance() -> None:
    service = _object("tdx", "Service", "sealserve-kbs")
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    # longer than the attestation session (the KBS's cookie lives 5 minutes)
    assert service["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] >= 300
    labels = _kbs()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_only_the_kbs_reaches_the_database() -> None:
    policy = _object("tdx", "NetworkPolicy", "sealserve-postgres")
    postgres = _object("tdx", "StatefulSet", "sealserve-postgres")
    pod_labels = postgres["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    kbs_labels = _kbs()["spec"]["template"]["metadata"]["labels"]
    assert source["podSelector"]["matchLabels"].items() <= kbs_labels.items()


# --- every workload -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "workload"), WORKLOADS, ids=WORKLOAD_IDS)
def test_restricted_security_context(name: str, workload: dict[str, Any]) -> None:
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["runAsNonRoot"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "add" not in context["capabilities"]
        assert not context.get("privileged")


@pytest.mark.parametrize(("name", "workload"), WORKLOADS, ids=WORKLOAD_IDS)
def test_resources_are_requested_and_limited(name: str, workload: dict[str, Any]) -> None:
    pod = workload["spec"]["template"]["spec"]
    for container in pod["containers"] + pod.get("initContainers", []):
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), container["name"]


@pytest.mark.parametrize(("name", "workload"), WORKLOADS, ids=WORKLOAD_IDS)
def test_probes_on_every_long_running_container(name: str, workload: dict[str, Any]) -> None:
    for container in workload["spec"]["template"]["spec"]["containers"]:
        assert "readinessProbe" in container and "livenessProbe" in container


# --- secrets: referenced, never inlined ---------------------------------------------------------

_SECRETISH = ("PASSWORD", "TOKEN", "SECRET", "KEY")


@pytest.mark.parametrize(("name", "workload"), WORKLOADS, ids=WORKLOAD_IDS)
def test_secrets_are_referenced_not_inlined(name: str, workload: dict[str, Any]) -> None:
    pod = workload["spec"]["template"]["spec"]
    templates = _template_objects()
    for container in pod["containers"] + pod.get("initContainers", []):
        for name, env in _env(container).items():
            if any(word in name.upper() for word in _SECRETISH):
                assert "value" not in env, f"{name} is inlined"
                assert "secretKeyRef" in env["valueFrom"], name
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secret = templates[("Secret", ref["name"])]
                assert ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}
        for arg in container.get("args", []):
            assert "password" not in arg.lower() and "token=" not in arg.lower(), arg
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            assert ("Secret", volume["secret"]["secretName"]) in templates, volume
        if "configMap" in volume:
            assert volume["configMap"]["name"] in _config_maps(), volume


def _config_maps() -> set[str]:
    """ConfigMaps the manifests define, and those created from files (in the template)."""
    docs = [doc for variant in VARIANTS for doc in _variant(variant)]
    made = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "ConfigMap"}
    return made | {name for kind, name in _template_objects() if kind == "ConfigMap"}


def test_secret_templates_hold_placeholders_only() -> None:
    objects = _docs(TEMPLATE)
    assert {d["metadata"]["name"] for d in objects if d["kind"] == "Secret"} >= {
        "sealserve-kbs-keys",
        "sealserve-kbs-tls",
        "sealserve-postgres",
    }
    for doc in objects:
        values = {**doc.get("data", {}), **doc.get("stringData", {})}
        assert values
        for key, value in values.items():
            assert value.startswith("<") and value.endswith(">"), (doc["metadata"]["name"], key)
    keys = next(d for d in objects if d["metadata"]["name"] == "sealserve-kbs-keys")
    assert set(keys["data"]) == {"master.key", "signing-key.pem", "admin.token"}

"""deploy/kubernetes: every manifest validates offline against the Kubernetes 1.30 schemas
(kubernetes-validate's bundled ones, strict: unknown fields are errors), and the deployment has
the properties the design needs: 3 server replicas that attest on their own, 2 KBS replicas on
PostgreSQL behind a client-affine Service, probes that work with mutual TLS, resources,
restricted security contexts, and secrets referenced, never inlined.
"""

from __future__ import annotations

import copy
import hashlib
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import kubernetes_validate
import pytest

from sealserve.attestation import Policy
from sealserve.cli import build_parser
from sealserve.kbs.http import HEALTH_PATH as KBS_HEALTH_PATH
from sealserve.serving.rest import READY_PATH
from tests.deploy import kustomize, network_policy, pod_security
from tests.deploy.common import KUBERNETES, REPO, load_script

KUBERNETES_VERSION = kustomize.KUBERNETES_VERSION
TEMPLATE = KUBERNETES / "secrets.template.yaml"
VARIANTS = ("tdx", "sgx")


_docs = kustomize.documents


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


def _resolved(directory: Path) -> list[Path]:
    return kustomize.resolved(directory)


def _variant(variant: str) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k deploy/kubernetes/<variant>` creates."""
    return kustomize.build(KUBERNETES / variant)


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


def test_the_walker_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    """A kustomization field the walker would silently skip (a patch, a namespace override)
    would make it build other objects than kubectl does: it refuses instead."""
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [a.yaml]\nnamespace: elsewhere\n"
    )
    (tmp_path / "a.yaml").write_text("kind: Namespace\nmetadata: {name: a}\n")
    with pytest.raises(kustomize.KustomizationError, match="namespace"):
        kustomize.build(tmp_path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_docs_render_command_builds_and_validates(
    variant: str, capsys: pytest.CaptureFixture[str], no_network: None
) -> None:
    """docs/deployment.md's `kubectl apply -k` (test-only shim) runs this command."""
    assert kustomize.main([str(KUBERNETES / variant)]) == 0
    assert "deployment/sealserve\n" in capsys.readouterr().out


def test_the_docs_render_command_refuses_an_invalid_object_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_network: None
) -> None:
    shutil.copytree(KUBERNETES, tmp_path / "kubernetes")
    server = tmp_path / "kubernetes" / "tdx" / "server.yaml"
    server.write_text(server.read_text().replace("replicas: 3", "replicas: three"))
    assert kustomize.main([str(tmp_path / "kubernetes" / "tdx")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("kustomize: Deployment/sealserve: ")
    (tmp_path / "kubernetes" / "tdx" / "server.yaml").unlink()
    assert kustomize.main([str(tmp_path / "kubernetes" / "tdx")]) == 1
    assert "server.yaml does not exist" in capsys.readouterr().err


def test_every_manifest_is_used_and_the_secret_template_is_not() -> None:
    used = {path.resolve() for variant in VARIANTS for path in _resolved(KUBERNETES / variant)}
    manifests = {p.resolve() for p in ALL_FILES if p.name != "kustomization.yaml"}
    assert manifests - used == {TEMPLATE.resolve()}


def test_everything_is_in_the_sealserve_namespaces() -> None:
    """sealserve; the SGX servers alone in sealserve-sgx (their hostPath exception)."""
    for path, doc in OBJECTS:
        if doc["kind"] != "Namespace":
            wanted = "sealserve-sgx" if path.parent.name == "sgx" else "sealserve"
            assert doc["metadata"]["namespace"] == wanted, _id((path, doc))


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
    claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
    for name in claims:  # a StatefulSet's per-replica claims
        volumes.setdefault(name, {"name": name, "volumeClaimTemplate": name})
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


#: the server's ports: both serve TLS that requires a client certificate (the docs build its
#: ssl.cfg with `certs twoway`: client_verify), which the kubelet's probes never carry
MUTUAL_TLS_PORTS = {8500, 8501}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _probe_problems(container: dict[str, Any]) -> list[str]:
    """Why the kubelet's probes of `container` would fail against mutual TLS: every probe must
    be a TCP connect to a TLS port (httpGet and grpc probes carry no client certificate, exec
    probes are refused by the CoCo agent policy)."""
    problems = []
    for name in PROBES:
        probe = container.get(name)
        if probe is None:
            problems.append(f"{name}: missing")
            continue
        kinds = {"httpGet", "grpc", "exec", "tcpSocket"} & probe.keys()
        if kinds != {"tcpSocket"}:
            problems.append(f"{name}: {sorted(kinds)} (only tcpSocket works with mutual TLS)")
        elif _port(container, probe["tcpSocket"]["port"]) not in MUTUAL_TLS_PORTS:
            problems.append(f"{name}: port {probe['tcpSocket']['port']} is not a serving port")
    return problems


@pytest.mark.parametrize("variant", VARIANTS)
def test_server_probes_are_tcp_connects_to_the_tls_ports(variant: str) -> None:
    """The ports open only once every initial model is loaded (`serve` exits 3 otherwise), so a
    TCP connect means "loaded and serving"; the kubelet has no client certificate."""
    container = _container(_server(variant), "server")
    assert _probe_problems(container) == []
    assert container["startupProbe"]["failureThreshold"] > 1  # the models' load takes minutes


@pytest.mark.parametrize(
    "probe",
    [
        {"httpGet": {"path": READY_PATH, "port": "rest", "scheme": "HTTPS"}},
        {"grpc": {"port": 8500}},
        {"exec": {"command": ["true"]}},
        {"tcpSocket": {"port": 9999}},
    ],
    ids=["httpGet", "grpc", "exec", "other-port"],
)
@pytest.mark.parametrize("name", PROBES)
def test_probes_that_mutual_tls_refuses_are_refused(name: str, probe: dict[str, Any]) -> None:
    container = copy.deepcopy(_container(_server("tdx"), "server"))
    container[name] = probe
    assert [p for p in _probe_problems(container) if p.startswith(name)]


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


#: kinds that route HTTP (and so terminate TLS, or invite a TLS-terminating controller)
HTTP_ROUTING_KINDS = {"Ingress", "IngressClass", "Gateway", "HTTPRoute", "GRPCRoute", "TLSRoute"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_servers_are_exposed_at_layer_4_only(variant: str) -> None:
    """TLS must end inside the TEE (issue #16): requesters verify the replica's own attested
    certificate, and nothing in front of the servers may read the requests. So the servers are
    reached through Services (TCP, L4) only: no Ingress or Gateway API route, no cloud load
    balancer annotation that terminates TLS, no Service port that speaks anything but TCP."""
    assert not [_id(item) for item in OBJECTS if item[1]["kind"] in HTTP_ROUTING_KINDS]
    services = [d for d in _variant(variant) if d["kind"] == "Service"]
    selector = _server(variant)["spec"]["selector"]["matchLabels"]
    to_servers = [s for s in services if s["spec"].get("selector", {}).items() >= selector.items()]
    assert {s["metadata"]["name"] for s in to_servers} == {"sealserve", "sealserve-pods"}
    for service in to_servers:
        annotations = service["metadata"].get("annotations", {})
        assert not [a for a in annotations if re.search(r"ssl|tls|cert|backend-protocol", a)]
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
        assert all(p.get("protocol", "TCP") == "TCP" for p in service["spec"]["ports"])


def _coco_entrypoint() -> list[str]:
    from tests.deploy.test_docker import effective, load

    _, stages = load("server.Dockerfile")
    entrypoint = effective(stages, "coco", "ENTRYPOINT")
    assert entrypoint is not None
    command = entrypoint.exec_form()
    assert command is not None
    return command


def _rego() -> str:
    return (REPO / "deploy/coco/policy.rego").read_text()


def _rego_collection(name: str) -> list[str]:
    match = re.search(rf"^{name} := [\[{{](.*?)^[\]}}]", _rego(), re.M | re.S)
    assert match, name
    return re.findall(r'"([^"]*)"', match.group(1))


def test_tdx_servers_are_confidential_containers_attested_by_the_attestation_agent() -> None:
    deployment = _server("tdx")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "kata-qemu-tdx"
    container = _container(deployment, "server")
    assert "command" not in container  # the image's entrypoint, pinned by the agent policy
    command = [*_coco_entrypoint(), *container["args"]]
    assert command[0] == "/opt/sealserve/venv/bin/sealserve"  # absolute: PATH plays no part
    parsed = build_parser().parse_args(command[1:])
    assert parsed.attestation == "coco" and parsed.model_key == []
    kbs_url = urlsplit(parsed.key_broker)
    service = _object("tdx", "Service", "sealserve-kbs")
    assert kbs_url.scheme == "https"
    assert kbs_url.hostname == "sealserve-kbs.sealserve.svc"
    assert kbs_url.port == service["spec"]["ports"][0]["port"]
    # configuration inside the image (measured by its digest), not on volumes the host fills
    for path in (parsed.key_broker_ca, parsed.model_config_file, parsed.ssl_config_file):
        assert path.startswith("/etc/sealserve/")
    assert not [m for m in _mounts(deployment, container) if m.startswith("/etc")]
    assert not [v for v in pod["volumes"] if "hostPath" in v]  # no configfs-tsm, no devices


def test_the_agent_policy_pins_the_command_line_the_pod_runs() -> None:
    container = _container(_server("tdx"), "server")
    assert _rego_collection("SERVER_ARGS") == [*_coco_entrypoint(), *container["args"]]


def _initdata_text() -> str:
    return (REPO / "deploy/coco/initdata.toml").read_text()


initdata_tool = load_script(REPO / "deploy/coco/initdata.py")


def test_the_pod_carries_the_committed_init_data() -> None:
    annotations = _server("tdx")["spec"]["template"]["metadata"]["annotations"]
    value = annotations["io.katacontainers.config.hypervisor.cc_init_data"]
    assert initdata_tool.decode_annotation(value) == _initdata_text()
    assert initdata_tool.annotation(_initdata_text()) == value  # deterministic (gzip mtime 0)


def test_the_init_data_pins_the_image_the_pod_pulls_by_digest() -> None:
    container = _container(_server("tdx"), "server")
    image = container["image"]
    assert re.fullmatch(r"[^@]+@sha256:[0-9a-f]{64}", image)
    data = tomllib.loads(_initdata_text())
    assert data["version"] == "0.1.0" and data["algorithm"] == "sha384"
    policy = data["data"]["policy.rego"]
    assert f'SERVER_IMAGE := "{image}"' in policy
    parsed = build_parser().parse_args(["serve", *container["args"]])
    rebuilt = initdata_tool.build(
        image, parsed.key_broker, parsed.ssl_config_key, parsed.key_broker_tls_name
    )
    assert rebuilt == _initdata_text(), "regenerate: deploy/coco/initdata.py build"


@pytest.mark.parametrize("name", ["", "-leading", "two words", "a/b", 'a"b', "a_b"])
def test_init_data_refuses_a_tls_name_the_kbs_cannot_certify(name: str) -> None:
    image = "reg/server@sha256:" + "ab" * 32
    with pytest.raises(SystemExit, match="--key-broker-tls-name must be a DNS name"):
        initdata_tool.build(image, "https://kbs.example.com:8080", "half_plus_two", name)


def test_init_data_carries_the_tls_name_it_is_built_with() -> None:
    image = "reg/server@sha256:" + "ab" * 32
    text = initdata_tool.build(image, "https://kbs:8080", "m", "models.example.com")
    assert '"--key_broker_tls_name=models.example.com",' in text
    assert "sealserve.sealserve.svc" not in text


def test_init_data_refuses_an_image_not_by_lower_case_digest_and_says_why() -> None:
    digest = "sha256:" + "ab" * 32
    for image, why in [("REGISTRY/server@" + digest, "lower case"), ("reg/server:1", "digest")]:
        with pytest.raises(SystemExit, match=why):
            initdata_tool.build(image, "https://kbs.example.com:8080", "half_plus_two")


@pytest.mark.parametrize(
    ("request_name", "allowed"),
    [
        ("ExecProcessRequest", "false"),  # kubectl exec
        ("WriteStreamRequest", "false"),  # stdin
        ("SetPolicyRequest", "false"),  # a new policy from the host
        ("CreateContainerRequest", "false"),  # only the rules below allow containers
        ("PauseContainerRequest", "false"),
        ("UpdateEphemeralMountsRequest", "false"),
        ("ReadStreamRequest", "true"),  # logs: sealserve logs no secret
    ],
)
def test_the_agent_policy_defaults(request_name: str, allowed: str) -> None:
    assert re.search(rf"^default {request_name} := {allowed}$", _rego(), re.M)


def test_the_agent_policy_keeps_the_loader_environment_and_code_paths_fixed() -> None:
    rego = _rego()
    fixed = re.search(r"^SERVER_ENV_FIXED := \{(.*?)^\}", rego, re.M | re.S)
    assert fixed
    names = set(re.findall(r'"([A-Z_]+)":', fixed.group(1))) | set(
        _rego_collection_inline("SERVER_ENV_FREE")
    )
    for dangerous in ("LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        assert dangerous not in names
    assert '"PYTHONNOUSERSITE": "1"' in fixed.group(1)
    mounts = set(_rego_collection("SERVER_MOUNTS"))
    assert "/models" in mounts and not [m for m in mounts if m.startswith(("/opt", "/etc/sea"))]
    container = _container(_server("tdx"), "server")
    assert {m["mountPath"] for m in container["volumeMounts"]} <= mounts


def _rego_collection_inline(name: str) -> list[str]:
    match = re.search(rf"^{name} := \{{(.*?)\}}$", _rego(), re.M)
    assert match, name
    return re.findall(r'"([^"]*)"', match.group(1))


def test_init_data_digest_is_the_mrconfigid_the_kbs_policy_pins() -> None:
    text = _initdata_text()
    digest = initdata_tool.mrconfigid(text)
    assert digest == hashlib.sha384(text.encode()).hexdigest()
    measurement = "ab" * 48
    policy_text = initdata_tool.kbs_policy(text, measurement, [measurement] * 3)
    policy = Policy.from_toml(policy_text, source="test")
    (identity,) = policy.tdx
    assert identity.mr_config_id == (digest,) and identity.mr_td == (measurement,)
    other = text.replace(
        "default ExecProcessRequest := false", "default ExecProcessRequest := true"
    )
    assert initdata_tool.mrconfigid(other) != digest  # a looser policy is another TD


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "init-data is empty: write it with `initdata.py build` first"),
        ("  \n", "init-data is empty: write it with `initdata.py build` first"),
        ("version =", "init-data is not TOML: "),
        ('algorithm = "sha384"\n[data]\nx = "y"\n', "init-data version must be 0.1.0"),
        ('algorithm = "sha384"\nversion = "0.1.0"\n', "init-data has no [data]"),
        (None, "cannot read init-data "),
    ],
    ids=["empty", "blank", "not-toml", "no-version", "no-data", "missing"],
)
@pytest.mark.parametrize("command", ["annotation", "mrconfigid"])
def test_init_data_tools_refuse_what_is_not_init_data_in_one_line(
    tmp_path: Path, command: str, content: str | None, message: str
) -> None:
    path = tmp_path / "initdata.toml"
    if content is not None:
        path.write_text(content)
    ran = subprocess.run(
        [sys.executable, REPO / "deploy/coco/initdata.py", command, path],
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 1 and ran.stdout == ""
    assert ran.stderr.startswith(message) and ran.stderr.count("\n") == 1, ran.stderr


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
    # /dev/sgx_enclave is root:sgx 0660 (Gramine's udev rule): the node's sgx group
    pod = deployment["spec"]["template"]["spec"]
    (group,) = pod["securityContext"]["supplementalGroups"]
    assert isinstance(group, int) and group > 0
    assert pod["nodeSelector"] == {"sealserve.io/tee": "sgx"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_models_are_a_read_only_volume(variant: str) -> None:
    deployment = _server(variant)
    container = _container(deployment, "server")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    assert mount["readOnly"] is True
    volume = _volume_of(deployment, container, "/models/m/1/saved_model.pb")
    assert volume["persistentVolumeClaim"] == {"claimName": "sealserve-models", "readOnly": True}


def test_tdx_servers_serve_a_certificate_the_key_broker_issues_for_the_service_name() -> None:
    """Issue #16: a requester of the Kubernetes deployment verifies that it talks to an
    attested replica. Each pod makes its TLS key in the TD and serves the certificate the KBS
    issued for it after attestation (`--key_broker_tls_name`), not ssl.cfg's key (which anyone
    holding the model key could have made); the certified name is the Service's DNS name."""
    container = _container(_server("tdx"), "server")
    args = build_parser().parse_args([*_coco_entrypoint(), *container["args"]][1:])
    assert args.key_broker_tls_name and not args.attested_tls
    service = _object("tdx", "Service", "sealserve")
    namespace = _server("tdx")["metadata"]["namespace"]
    assert args.key_broker_tls_name == f"{service['metadata']['name']}.{namespace}.svc"
    # ssl.cfg stays for client verification only (mutual TLS), under a model key from the KBS
    assert args.ssl_config_file and args.ssl_config_key


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
    query = dict(parse_qsl(parts.query))
    assert query["sslmode"] == "verify-full"  # TLS, the certificate and its name checked
    assert "configMap" in _volume_of(kbs, container, query["sslrootcert"])
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


def test_kbs_issues_server_certificates_with_a_ca_from_a_secret() -> None:
    """The KBS is the CA of the attested servers' certificates: its key and certificate from
    a Secret (kubectl create secret tls, from `kbs init`'s server-ca files), mounted read-only;
    the certificate is also published for requesters (a ConfigMap of public text)."""
    kbs = _kbs()
    container = _container(kbs, "kbs")
    args = build_parser().parse_args(["kbs", "serve", *container["args"]])
    assert args.server_ca_key and args.server_ca_cert
    assert args.server_cert_lifetime <= 24 * 3600  # short-lived: renewals re-apply the policy
    key_volume = _volume_of(kbs, container, args.server_ca_key)
    assert key_volume == _volume_of(kbs, container, args.server_ca_cert)
    secret = _template_objects()[("Secret", key_volume["secret"]["secretName"])]
    assert secret["type"] == "kubernetes.io/tls"  # the API server checks key and cert match
    mount = next(m for m in container["volumeMounts"] if m["name"] == key_volume["name"])
    assert mount["readOnly"] is True
    assert {Path(args.server_ca_key).name, Path(args.server_ca_cert).name} == set(secret["data"])
    assert key_volume["secret"]["defaultMode"] == 0o400
    # no other container or init container sees the CA key
    pod = kbs["spec"]["template"]["spec"]
    others = [c for c in pod["containers"] + pod.get("initContainers", []) if c is not container]
    assert not [c for c in others for m in c.get("volumeMounts", []) if m["name"] == mount["name"]]
    published = _template_objects()[("ConfigMap", "sealserve-server-ca")]
    assert published["metadata"]["namespace"] == kbs["metadata"]["namespace"]
    assert "server-ca.pem" in published["data"]["ca.crt"]


def test_kbs_service_keeps_a_client_on_one_instance() -> None:
    service = _object("tdx", "Service", "sealserve-kbs")
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    # longer than the attestation session (the KBS's cookie lives 5 minutes)
    assert service["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] >= 300
    labels = _kbs()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_postgresql_serves_tls_only() -> None:
    postgres = _object("tdx", "StatefulSet", "sealserve-postgres")
    container = _container(postgres, "postgres")
    settings = dict(a.split("=", 1) for a in container["args"] if a != "-c")
    assert settings["ssl"] == "on"
    for name in ("ssl_cert_file", "ssl_key_file", "hba_file"):
        assert _volume_of(postgres, container, settings[name])
    assert "secret" in _volume_of(postgres, container, settings["ssl_key_file"])
    hba = _object("tdx", "ConfigMap", "sealserve-postgres-config")["data"]["pg_hba.conf"]
    rules = [line.split() for line in hba.splitlines() if line.strip()]
    assert [r for r in rules if r[0] not in ("local", "hostssl")] == []  # no plain TCP
    assert all(r[-1] == "scram-sha-256" for r in rules if r[0] == "hostssl")


def test_postgresql_is_backed_up_over_tls() -> None:
    backup = _object("tdx", "CronJob", "sealserve-postgres-backup")
    pod = backup["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "pg_dump" in " ".join(container["command"])
    env = _env(container)
    assert env["PGSSLMODE"]["value"] == "verify-full"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "sealserve-postgres"
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["sealserve-postgres-backup"]
    assert ("PersistentVolumeClaim", "sealserve-postgres-backup") in {
        (d["kind"], d["metadata"]["name"]) for d in _variant("tdx")
    }


@pytest.mark.parametrize(
    "name",
    [
        "Deployment/sealserve-kbs",
        "StatefulSet/sealserve-postgres",
        "CronJob/sealserve-postgres-backup",
    ],
)
def test_the_kbs_and_its_database_stay_off_the_tee_nodes(name: str) -> None:
    kind, _, object_name = name.partition("/")
    pod = pod_security.pod_spec(_object("tdx", kind, object_name))
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (term,) = terms["nodeSelectorTerms"]
    assert {"key": "sealserve.io/tee", "operator": "DoesNotExist"} in term["matchExpressions"]
    for variant in VARIANTS:  # and the servers are only on TEE nodes
        assert "sealserve.io/tee" in _server(variant)["spec"]["template"]["spec"]["nodeSelector"]


# --- images by digest ---------------------------------------------------------------------------


def _all_pods(variant: str) -> list[tuple[str, dict[str, Any]]]:
    kinds = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d) for d in _variant(variant) if d["kind"] in kinds
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_image_is_pulled_by_digest(variant: str) -> None:
    for name, workload in _all_pods(variant):
        pod = pod_security.pod_spec(workload)
        for container in pod["containers"] + pod.get("initContainers", []):
            image = container["image"]
            assert re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", image), (name, image)


# --- Pod Security -------------------------------------------------------------------------------


def _namespaces(variant: str) -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"]: d["metadata"].get("labels", {})
        for d in _variant(variant)
        if d["kind"] == "Namespace"
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_passes_the_pod_security_level_its_namespace_enforces(variant: str) -> None:
    namespaces = _namespaces(variant)
    failures = {}
    for name, workload in _all_pods(variant):
        labels = namespaces[workload["metadata"]["namespace"]]
        level = labels["pod-security.kubernetes.io/enforce"]
        found = pod_security.violations(pod_security.pod_spec(workload), level)
        if found:
            failures[name] = found
    assert failures == {}


def test_restricted_everywhere_but_the_sgx_servers_namespace() -> None:
    for variant in VARIANTS:
        namespaces = _namespaces(variant)
        assert namespaces["sealserve"]["pod-security.kubernetes.io/enforce"] == "restricted"
        for name, workload in _all_pods(variant):
            pod = pod_security.pod_spec(workload)
            restricted = pod_security.violations(pod, "restricted")
            if workload["metadata"]["namespace"] == "sealserve-sgx":
                # the one exception, and only it: the node's aesmd socket
                assert restricted == [
                    "HostPath Volumes (aesmd)",
                    "Volume Types (aesmd: ['hostPath'])",
                ]
            else:
                assert restricted == [], name
    sgx = _namespaces("sgx")["sealserve-sgx"]
    assert sgx["pod-security.kubernetes.io/enforce"] == "privileged"
    assert sgx["pod-security.kubernetes.io/warn"] == "restricted"
    assert sgx["pod-security.kubernetes.io/audit"] == "restricted"
    in_sgx = {n for n, w in _all_pods("sgx") if w["metadata"]["namespace"] == "sealserve-sgx"}
    assert in_sgx == {"Deployment/sealserve"}


def test_the_pod_security_check_refuses_what_the_standard_refuses() -> None:
    pod = copy.deepcopy(pod_security.pod_spec(_kbs()))
    assert pod_security.violations(pod, "restricted") == []
    pod["hostNetwork"] = True
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["containers"][0]["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}
    pod["volumes"].append({"name": "root", "hostPath": {"path": "/"}})
    found = pod_security.violations(pod, "restricted")
    for control in ("Host Namespaces", "Privilege Escalation", "Capabilities", "HostPath"):
        assert any(f.startswith(control) for f in found), (control, found)
    assert pod_security.violations(pod, "baseline")
    assert pod_security.violations(pod, "privileged") == []


# --- network policies ---------------------------------------------------------------------------

_Endpoint = network_policy.Endpoint


def _pod_endpoint(workload: dict[str, Any]) -> network_policy.Endpoint:
    spec = workload["spec"]
    template = spec.get("template") or spec["jobTemplate"]["spec"]["template"]
    return _Endpoint(
        workload["metadata"]["name"],
        workload["metadata"]["namespace"],
        template["metadata"]["labels"],
    )


def _endpoints(variant: str) -> dict[str, network_policy.Endpoint]:
    server_ns = "sealserve-sgx" if variant == "sgx" else "sealserve"
    return {
        "server": _pod_endpoint(_server(variant)),
        "kbs": _pod_endpoint(_object(variant, "Deployment", "sealserve-kbs")),
        "postgres": _pod_endpoint(_object(variant, "StatefulSet", "sealserve-postgres")),
        "backup": _pod_endpoint(_object(variant, "CronJob", "sealserve-postgres-backup")),
        "client": _Endpoint("client", ip="203.0.113.7"),
        "pccs": _Endpoint("pccs", ip="192.0.2.10"),
        "elsewhere": _Endpoint("elsewhere", ip="198.51.100.9"),
        "other-pod": _Endpoint("other", "default", {"app": "other"}),
        "other-pod-in-ns": _Endpoint("other", server_ns, {"app": "other"}),
    }


_ALLOWED = {
    # requesters, from outside or from pods elsewhere; not from pods of our namespaces, whose
    # egress the default deny closes
    *(
        (client, "server", port)
        for client in ("client", "other-pod", "elsewhere", "pccs")
        for port in (8500, 8501)
    ),
    ("server", "kbs", 8080),
    ("kbs", "postgres", 5432),
    ("backup", "postgres", 5432),
    ("kbs", "pccs", 443),
}
_OUTSIDE = {"client", "pccs", "elsewhere", "other-pod"}


def _policies(variant: str) -> list[dict[str, Any]]:
    return [d for d in _variant(variant) if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_network_policies_allow_exactly_the_flows_sealserve_needs(variant: str) -> None:
    endpoints = _endpoints(variant)
    policies = _policies(variant)
    namespaces = _namespaces(variant)
    seen = set()
    for source, a in endpoints.items():
        for destination, b in endpoints.items():
            if source == destination or {source, destination} <= _OUTSIDE:
                continue  # nothing of ours selects these: not sealserve's to police
            for port in (443, 5432, 8080, 8500, 8501, 22, 9090):
                if network_policy.allowed(policies, a, b, port, namespaces=namespaces):
                    seen.add((source, destination, port))
    assert seen == _ALLOWED


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_sealserve_pod_can_resolve_names(variant: str) -> None:
    dns = _Endpoint("coredns", "kube-system", {"k8s-app": "kube-dns"})
    elsewhere = _Endpoint("resolver", "default", {"k8s-app": "kube-dns"})
    endpoints = _endpoints(variant)
    for name in ("server", "kbs", "postgres", "backup"):
        for protocol in ("UDP", "TCP"):
            assert network_policy.allowed(_policies(variant), endpoints[name], dns, 53, protocol)
        assert not network_policy.allowed(_policies(variant), endpoints[name], elsewhere, 53)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_namespace_denies_by_default(variant: str) -> None:
    for namespace in _namespaces(variant):
        deny = [
            p
            for p in _policies(variant)
            if p["metadata"]["namespace"] == namespace
            and p["spec"]["podSelector"] == {}
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert deny, namespace


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
        "sealserve-kbs-server-ca",
        "sealserve-postgres",
    }
    for doc in objects:
        values = {**doc.get("data", {}), **doc.get("stringData", {})}
        assert values
        for key, value in values.items():
            assert value.startswith("<") and value.endswith(">"), (doc["metadata"]["name"], key)
    keys = next(d for d in objects if d["metadata"]["name"] == "sealserve-kbs-keys")
    assert set(keys["data"]) == {"master.key", "signing-key.pem", "admin.token"}

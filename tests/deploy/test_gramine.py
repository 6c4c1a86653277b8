"""deploy/gramine: the manifest template renders to a production SGX manifest whose settings keep
the host out (fixed argv and env, DCAP, no debug, nothing insecure, all code and configuration
measured, only the encrypted models unmeasured), and the Makefile drives gramine's tools with
every variable the template needs.

Rendered with Jinja2 as `gramine-manifest` does (StrictUndefined) with the variables the
Makefile passes, including the real paths of the interpreter running these tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
import jinja2.meta
import pytest

import sealserve
from sealserve.attestation import Policy
from sealserve.cli import build_parser
from tests.deploy.common import GRAMINE, load_script

TEMPLATE = GRAMINE / "sealserve.manifest.template"
LIBOS = "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"
RUNTIME = "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc"
CONFIG_DIR = "/etc/sealserve"
MODELS_DIR = "/models"
KEY_BROKER = "https://sealserve-kbs.sealserve.svc:8080"
#: the name the KBS certifies the enclave's TLS key for (the SGX Service's DNS name)
TLS_NAME = "sealserve.sealserve-sgx.svc"
MR_ENCLAVE = "3f" * 32
MR_SIGNER = "a1" * 32

helper = load_script(GRAMINE / "gramine_helper.py")


def _gramine_stub() -> SimpleNamespace:
    """What `gramine-manifest` provides to templates (its man page: gramine.libos, runtimedir)."""
    return SimpleNamespace(libos=LIBOS, runtimedir=lambda libc="glibc": RUNTIME)


def make_defaults() -> dict[str, str]:
    """The -D options the Makefile passes besides the interpreter's, with its defaults."""
    text = (GRAMINE / "Makefile").read_text()
    defaults = dict(re.findall(r"^([A-Z_]+) \?= (.*)$", text, re.M))
    options = dict(re.findall(r"-D(\w+)=\$\((\w+)\)", text))
    assert options, "no -D options found in the Makefile"
    values = {
        "CONFIG_DIR": CONFIG_DIR,
        "MODELS_DIR": MODELS_DIR,
        "KEY_BROKER": KEY_BROKER,
        "SSL_CONFIG_KEY": "half_plus_two",
        "KEY_BROKER_TLS_NAME": TLS_NAME,
    }
    return {name: values.get(var, defaults.get(var, "")) for name, var in options.items()}


def variables(**overrides: str) -> dict[str, Any]:
    found = {**helper.python_defines(), **make_defaults(), **overrides}
    return {"gramine": _gramine_stub(), **found}


def render(**overrides: str) -> dict[str, Any]:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    text = env.from_string(TEMPLATE.read_text()).render(**variables(**overrides))
    return tomllib.loads(text)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return render()


def _keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        out = []
        for key, value in node.items():
            out.append(prefix + key)
            out.extend(_keys(value, prefix + key + "."))
        return out
    return []


def _uris(entries: list[Any]) -> list[str]:
    return [e if isinstance(e, str) else e["uri"] for e in entries]


def _covered(path: str, uris: list[str]) -> bool:
    """Whether a trusted/allowed list covers the host `path` as Gramine decides it: the path and
    the entries normalised (`.`, `..`, `//`; Gramine's get_norm_path), then compared as text,
    an entry ending in `/` covering everything under it. Symbolic links are not resolved."""
    path = os.path.normpath(path)
    for uri in uris:
        assert uri.startswith("file:"), uri
        entry = uri[len("file:") :]
        directory = entry.endswith("/")
        entry = os.path.normpath(entry)
        if path == entry or (directory and path.startswith(entry.rstrip("/") + "/")):
            return True
    return False


def host_path(manifest: dict[str, Any], path: str) -> str:
    """The host file the enclave reaches when it opens `path`: Gramine mounts in order, a later
    mount hiding earlier ones under its path, so the last mount containing `path` wins."""
    found = None
    for mount in manifest["fs"]["mounts"]:
        top = mount["path"].rstrip("/") or "/"
        if path == top or path.startswith(top.rstrip("/") + "/"):
            found = mount
    assert found is not None, f"{path} is on no mount"
    assert found.get("type", "chroot") == "chroot", f"{path} is on a {found['type']} mount"
    return found["uri"][len("file:") :] + path[len(found["path"].rstrip("/")) :]


def _origin(module: str) -> str:
    """Where Python opens the module from (as the enclave's Python will: no link resolved)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    return os.path.abspath(spec.origin)


# --- the template and the Makefile agree -------------------------------------------------------


def test_every_template_variable_is_supplied_by_the_makefile() -> None:
    env = jinja2.Environment()
    used = jinja2.meta.find_undeclared_variables(env.parse(TEMPLATE.read_text()))
    supplied = set(helper.python_defines()) | set(make_defaults()) | {"gramine"}
    assert used == supplied


def test_a_missing_variable_fails_the_rendering() -> None:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    values = variables()
    del values["key_broker"]
    with pytest.raises(jinja2.UndefinedError):
        env.from_string(TEMPLATE.read_text()).render(**values)


# --- attestation and the enclave ---------------------------------------------------------------


def test_production_enclave_with_dcap(manifest: dict[str, Any]) -> None:
    sgx = manifest["sgx"]
    assert sgx["remote_attestation"] == "dcap"
    assert sgx["debug"] is False
    assert "enable_stats" not in sgx and "profile" not in sgx and "vtune_profile" not in sgx
    assert sgx["file_check_policy"] == "strict"
    assert manifest["loader"]["log_level"] == "error"


def test_no_insecure_option_anywhere(manifest: dict[str, Any]) -> None:
    keys = _keys(manifest)
    assert "loader.argv" in keys  # the walk sees nested keys
    assert [k for k in keys if "insecure" in k] == []
    assert "loader.argv_src_file" not in keys and "loader.env_src_file" not in keys


def test_enclave_resources(manifest: dict[str, Any]) -> None:
    sgx = manifest["sgx"]
    assert sgx["enclave_size"] == "8G"
    assert sgx["max_threads"] == 256
    assert sgx["edmm_enable"] is False
    assert sgx["isvprodid"] == 1 and sgx["isvsvn"] == 1
    assert render(edmm="1")["sgx"]["edmm_enable"] is True


def test_the_domain_names_of_the_host_are_sanitised_not_mounted(manifest: dict[str, Any]) -> None:
    assert manifest["sys"]["enable_extra_runtime_domain_names_conf"] is True
    paths = {m["path"] for m in manifest["fs"]["mounts"]}
    assert "/etc" not in paths and "/" not in paths


# --- what runs: entrypoints, argv, environment -------------------------------------------------


def test_entrypoints(manifest: dict[str, Any]) -> None:
    assert manifest["loader"]["entrypoint"]["uri"] == f"file:{LIBOS}"
    python = os.path.realpath(sys.executable)
    assert manifest["libos"]["entrypoint"] == python


def test_argv_is_fixed_and_runs_sealserve_serve_with_the_key_broker(
    manifest: dict[str, Any],
) -> None:
    argv = manifest["loader"]["argv"]
    assert argv[0] == os.path.abspath(sys.executable)  # the environment's python (pyvenv.cfg)
    assert Path(argv[1]).name == "sealserve" and argv[2] == "serve"
    assert "--attestation=gramine" in argv
    args = build_parser().parse_args(argv[2:])
    assert args.attestation == "gramine"
    assert args.key_broker == KEY_BROKER
    assert args.key_broker_ca == f"{CONFIG_DIR}/kbs-ca.pem"
    assert args.model_config_file == f"{CONFIG_DIR}/models.config"
    assert args.ssl_config_file == f"{CONFIG_DIR}/ssl.cfg"
    assert args.ssl_config_key == "half_plus_two"
    assert (args.port, args.rest_api_port) == (8500, 8501)
    assert args.model_key == []  # no key file: keys come from the KBS only


def test_the_enclave_serves_a_certificate_the_key_broker_issues_not_ssl_cfg_s(
    manifest: dict[str, Any],
) -> None:
    """Issue #16: requesters verify that they talk to an attested enclave. The enclave makes
    its TLS key in its memory and serves the certificate the KBS issued for it after
    attestation; the name is measured (in argv), so the host cannot change what is certified."""
    args = build_parser().parse_args(manifest["loader"]["argv"][2:])
    assert args.key_broker_tls_name == TLS_NAME and not args.attested_tls
    assert args.key_broker  # the flag needs the key broker the certificate comes from


def test_environment_is_fixed(manifest: dict[str, Any]) -> None:
    env = manifest["loader"]["env"]
    assert env and all(isinstance(v, str) for v in env.values()), env  # no passthrough tables
    for name in ("LD_PRELOAD", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONINSPECT"):
        assert name not in env
    assert env["LD_LIBRARY_PATH"].split(":")[0] == "/lib"  # Gramine's patched glibc first


# --- what is measured --------------------------------------------------------------------------


def _must_be_trusted(manifest: dict[str, Any], origins: dict[str, str]) -> dict[str, str]:
    """What the enclave opens (in-enclave paths) that no trusted-file entry covers."""
    trusted = _uris(manifest["sgx"]["trusted_files"])
    must = {
        "python": manifest["libos"]["entrypoint"],
        "sealserve script": manifest["loader"]["argv"][1],
        **origins,
    }
    missing = {
        what: path
        for what, path in must.items()
        if not _covered(host_path(manifest, path), trusted)
    }
    if not _covered(LIBOS, trusted):
        missing["libos"] = LIBOS
    if not _covered(host_path(manifest, "/lib/libc.so.6"), trusted):
        missing["glibc"] = "/lib/libc.so.6"
    return missing


def _module_origins() -> dict[str, str]:
    origins = {
        "sealserve package": os.path.abspath(sealserve.__file__),
        "sealserve cli": os.path.abspath(Path(sealserve.__file__).with_name("cli.py")),
        "stdlib": os.path.abspath(os.__file__),
        **{m: _origin(m) for m in _MODULES},
    }
    if sys.prefix != sys.base_prefix:
        origins["pyvenv.cfg"] = os.path.join(os.path.abspath(sys.prefix), "pyvenv.cfg")
    return origins


_MODULES = ("_ctypes", "tensorflow", "grpc", "cryptography")


def test_code_is_trusted(manifest: dict[str, Any]) -> None:
    assert _must_be_trusted(manifest, _module_origins()) == {}


_ORIGINS_SCRIPT = """
import importlib.util, json, os, sys
out = {m: os.path.abspath(importlib.util.find_spec(m).origin) for m in sys.argv[1:]}
out["stdlib"] = os.path.abspath(os.__file__)
out["pyvenv.cfg"] = os.path.join(os.path.abspath(sys.prefix), "pyvenv.cfg")
print(json.dumps(out))
"""


def test_code_is_trusted_when_the_environment_is_reached_through_a_symbolic_link(
    tmp_path: Path,
) -> None:
    """`.venv` as a symbolic link: Python opens `.venv/lib/...` (the link, not its target), and
    Gramine checks that path's URI as text, so the trusted entries must name it so too."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("needs the tests to run in a virtual environment")
    link = tmp_path / "venv-link"
    link.symlink_to(sys.prefix, target_is_directory=True)
    python = link / "bin" / Path(sys.executable).name
    helper_path = str(GRAMINE / "gramine_helper.py")
    defines = subprocess.run(
        [str(python), helper_path, "defines"], capture_output=True, text=True, check=True
    ).stdout.split()
    values = dict(d[len("-D") :].split("=", 1) for d in defines)
    assert values["venv"] == str(link)  # the link's path, as Python sees it
    origins = json.loads(
        subprocess.run(
            [str(python), "-c", _ORIGINS_SCRIPT, *_MODULES],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert origins["grpc"].startswith(str(link))
    manifest = render(**values)
    assert _must_be_trusted(manifest, origins) == {}


def test_configuration_is_trusted(manifest: dict[str, Any]) -> None:
    trusted = _uris(manifest["sgx"]["trusted_files"])
    args = build_parser().parse_args(manifest["loader"]["argv"][2:])
    for path in (args.key_broker_ca, args.model_config_file, args.ssl_config_file):
        assert _covered(path, trusted), path


def test_only_the_encrypted_models_are_unmeasured(manifest: dict[str, Any]) -> None:
    allowed = _uris(manifest["sgx"].get("allowed_files", []))
    assert allowed == [f"file:{MODELS_DIR}/"]
    trusted = _uris(manifest["sgx"]["trusted_files"])
    for uri in trusted:  # no trusted file lies under an allowed directory, nor the reverse
        assert not _covered(uri[len("file:") :].rstrip("/") + "/x", allowed), uri
    for uri in allowed:
        assert not _covered(uri[len("file:") :].rstrip("/") + "/x", trusted), uri


def _hidden_mounts(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(earlier, later) pairs where the later mount hides the earlier (same path or a parent)."""
    mounts = [m["path"].rstrip("/") or "/" for m in manifest["fs"]["mounts"]]
    return [
        (earlier, later)
        for i, earlier in enumerate(mounts)
        for later in mounts[i + 1 :]
        if earlier == later or earlier.startswith(later.rstrip("/") + "/")
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"config_dir": "/tmp/sealserve-config"},  # under the tmpfs at /tmp
        {"models_dir": "/tmp/models"},
        {"config_dir": "/opt/sealserve", "venv": "/opt/sealserve/venv"},  # a parent of the venv
        {"models_dir": "/usr/share/models"},  # under /usr
    ],
    ids=["defaults", "config-under-tmp", "models-under-tmp", "config-parent-of-venv", "under-usr"],
)
def test_no_mount_hides_another(overrides: dict[str, str]) -> None:
    manifest = render(**overrides)
    assert _hidden_mounts(manifest) == []
    for name in ("config_dir", "models_dir", "venv"):
        if name in overrides:  # each still reaches its own host directory
            path = overrides[name]
            assert host_path(manifest, path + "/x") == path + "/x"


def test_the_hidden_mount_check_sees_a_tmpfs_mounted_last() -> None:
    manifest = render(config_dir="/tmp/sealserve-config")
    mounts = manifest["fs"]["mounts"]
    tmpfs = next(m for m in mounts if m.get("type") == "tmpfs")
    reordered = {**manifest, "fs": {"mounts": [m for m in mounts if m is not tmpfs] + [tmpfs]}}
    assert ("/tmp/sealserve-config", "/tmp") in _hidden_mounts(reordered)


def test_no_subprocesses(manifest: dict[str, Any]) -> None:
    assert manifest["sys"]["disallow_subprocesses"] is True


_NO_FORK = """
import _posixsubprocess, os
def refuse(*args, **kwargs):
    raise BlockingIOError(11, "Resource temporarily unavailable")  # Gramine: -EAGAIN
_posixsubprocess.fork_exec = refuse
os.fork = os.posix_spawn = os.posix_spawnp = refuse
import sealserve.fsio, sealserve.cli, sealserve.serving.server, sealserve.kbs.client
assert sealserve.fsio._SYNC_FILE_RANGE is not None  # found without running ldconfig
print("ok")
"""


def test_the_server_imports_and_starts_up_without_child_processes() -> None:
    """What `sealserve serve` imports works where every fork fails, as in the enclave."""
    result = subprocess.run(
        [sys.executable, "-c", _NO_FORK], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


# --- the keys Gramine documents for the version the image installs -----------------------------

KEYS_FILE = GRAMINE / "manifest-keys-1.8.txt"


def _documented_keys() -> tuple[list[re.Pattern[str]], set[str]]:
    patterns, deprecated = [], set()
    for line in KEYS_FILE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("deprecated:"):
            deprecated.add(line.split(":", 1)[1].strip())
            continue
        parts = [r"[^.]+" if p.startswith("[") else re.escape(p) for p in line.split(".")]
        patterns.append(re.compile(r"\.".join(parts)))
    return patterns, deprecated


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        name = prefix + key
        if isinstance(value, dict):
            out.extend(_leaf_keys(value, name + "."))
        else:
            out.append(name)
    return out


def test_the_key_list_is_the_pinned_gramine_version() -> None:
    version = re.search(r"^GRAMINE_VERSION \?= (\S+)$", (GRAMINE / "Makefile").read_text(), re.M)
    assert version is not None and KEYS_FILE.name == f"manifest-keys-{version.group(1)}.txt"
    assert "tag v" + version.group(1) in KEYS_FILE.read_text()  # its provenance


@pytest.mark.parametrize("overrides", [{}, {"edmm": "1"}], ids=["default", "edmm"])
def test_every_manifest_key_is_documented_for_the_pinned_gramine(
    overrides: dict[str, str],
) -> None:
    patterns, deprecated = _documented_keys()
    keys = _leaf_keys(render(**overrides))
    assert len(keys) > 20
    unknown = [k for k in keys if not any(p.fullmatch(k) for p in patterns)]
    assert unknown == []
    assert [k for k in keys if k in deprecated] == []


def test_the_key_check_refuses_a_misspelt_or_deprecated_key(manifest: dict[str, Any]) -> None:
    patterns, deprecated = _documented_keys()
    for key in ("sgx.remote_atestation", "sys.disallow_subprocess", "loader.entrypoint"):
        assert not any(p.fullmatch(key) for p in patterns) or key in deprecated, key
    assert any(p.fullmatch("loader.env.ANYTHING") for p in patterns)


def test_models_are_mounted_as_host_files_for_sealserve_to_decrypt(
    manifest: dict[str, Any],
) -> None:
    mounts = {m["path"]: m for m in manifest["fs"]["mounts"]}
    models = mounts[MODELS_DIR]
    assert models.get("type", "chroot") == "chroot" and models["uri"] == f"file:{MODELS_DIR}"
    assert not [m for m in mounts.values() if m.get("type") == "encrypted"]
    assert mounts["/tmp"]["type"] == "tmpfs"  # scratch space stays in enclave memory
    assert mounts[CONFIG_DIR]["uri"] == f"file:{CONFIG_DIR}"


# --- the KBS policy from the SIGSTRUCT --------------------------------------------------------


def _sigstruct(**changes: Any) -> dict[str, Any]:
    base = {
        "mr_signer": MR_SIGNER,
        "mr_enclave": MR_ENCLAVE,
        "isv_prod_id": 1,
        "isv_svn": 3,
        "debug_enclave": False,
    }
    return {**base, **changes}


def test_policy_pins_the_enclave() -> None:
    policy = Policy.from_toml(helper.policy_toml(_sigstruct()), source="test")
    (identity,) = policy.sgx
    assert identity.mr_enclave == (MR_ENCLAVE,)
    assert identity.mr_signer == (MR_SIGNER,)
    assert identity.isv_prod_id == (1,)
    assert identity.min_isv_svn == 3
    assert policy.tee == ("sgx",)
    assert policy.allow_debug_insecure is False


def test_policy_accepts_up_to_date_platforms_only_by_default() -> None:
    text = helper.policy_toml(_sigstruct())
    policy = Policy.from_toml(text, source="test")
    assert policy.accepted_tcb_statuses == ("UpToDate",)
    assert policy.denied_advisories == ()


def _policy_fields() -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(Policy)}


def test_policy_options_map_onto_the_kbs_policy_fields() -> None:
    """Every option names a field; the ones this sealserve's policy has are accepted by it."""
    assert set(helper.POLICY_FIELDS.values()) >= {"accepted_tcb_statuses", "denied_advisories"}
    text = helper.policy_toml(
        _sigstruct(),
        accept_tcb_status=["UpToDate", "SWHardeningNeeded"],
        deny_advisory=["intel-sa-00615"],
        tcb_grace_period_seconds=86400,
    )
    policy = Policy.from_toml(text, source="test")
    assert policy.accepted_tcb_statuses == ("UpToDate", "SWHardeningNeeded")
    assert policy.denied_advisories == ("INTEL-SA-00615",)
    assert policy.tcb_grace_period_seconds == 86400


@pytest.mark.parametrize(
    ("option", "value"),
    [("accept_advisory", ["INTEL-SA-00615"]), ("max_collateral_age_seconds", 3600)],
)
def test_policy_options_for_newer_kbs_fields(option: str, value: Any) -> None:
    """Written when the KBS policy has the field; refused by name (never dropped) when not."""
    field = helper.POLICY_FIELDS[option]
    text = helper.policy_toml(_sigstruct(), **{option: value})
    assert tomllib.loads(text)[field] == value
    if field in _policy_fields():
        Policy.from_toml(text, source="test")
    else:
        with pytest.raises(SystemExit, match=field):
            helper._check_with_sealserve(text)


@pytest.mark.parametrize(
    "options",
    [
        {"accept_tcb_status": ["UpToDate", "Revoked"]},
        {"deny_advisory": ["SA-615"]},
        {"accept_advisory": ["INTEL-SA-6"]},
        {"tcb_grace_period_seconds": -1},
    ],
)
def test_policy_refuses_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(SystemExit):
        helper.policy_toml(_sigstruct(), **options)


def test_policy_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sigstruct = tmp_path / "sigstruct.json"
    sigstruct.write_text(json.dumps(_sigstruct()))
    helper.main(
        [
            "policy",
            str(sigstruct),
            "--accept-tcb-status",
            "SWHardeningNeeded",
            "--deny-advisory",
            "INTEL-SA-00615",
        ]
    )
    policy = Policy.from_toml(capsys.readouterr().out, source="test")
    assert policy.accepted_tcb_statuses == ("UpToDate", "SWHardeningNeeded")
    assert policy.denied_advisories == ("INTEL-SA-00615",)


@pytest.mark.parametrize(("given", "pinned"), [("any", None), ("ab" * 32, ("ab" * 32,))])
def test_policy_for_a_rebuilt_enclave_names_the_builders_signer(
    given: str, pinned: tuple[str, ...] | None
) -> None:
    policy = Policy.from_toml(helper.policy_toml(_sigstruct(), mr_signer=given), source="test")
    assert policy.sgx[0].mr_signer == pinned
    assert policy.sgx[0].mr_enclave == (MR_ENCLAVE,)  # the code stays pinned
    with pytest.raises(SystemExit):
        helper.policy_toml(_sigstruct(), mr_signer="abc")


def test_compare_a_rebuilt_enclave(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sigstruct = tmp_path / "sigstruct.json"
    sigstruct.write_text(json.dumps(_sigstruct()))
    assert helper.main(["compare", str(sigstruct), "--mrenclave", MR_ENCLAVE.upper()]) == 0
    assert "reproduced" in capsys.readouterr().out
    assert helper.main(["compare", str(sigstruct), "--mrenclave", "00" * 32]) == 1
    assert "NOT reproduced" in capsys.readouterr().out
    policy = tmp_path / "policy.toml"
    policy.write_text(helper.policy_toml(_sigstruct()))
    assert helper.main(["compare", str(sigstruct), "--policy", str(policy)]) == 0


@pytest.mark.parametrize(
    "changes",
    [{"debug_enclave": True}, {"mr_enclave": "00"}, {"mr_signer": ""}, {"isv_svn": "1"}],
)
def test_policy_refuses_a_debug_or_malformed_sigstruct(changes: dict[str, Any]) -> None:
    with pytest.raises(SystemExit):
        helper.policy_toml(_sigstruct(**changes))


# --- the Makefile, with stand-ins for gramine's tools -----------------------------------------

_STUB_MANIFEST = """
import sys, tomllib, types, jinja2
defines, files = {}, []
for arg in sys.argv[1:]:
    if arg.startswith("-D"):
        key, _, value = arg[2:].partition("=")
        defines[key] = value
    else:
        files.append(arg)
source, output = files
gramine = types.SimpleNamespace(libos=LIBOS, runtimedir=lambda libc="glibc": RUNTIME)
env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
text = env.from_string(open(source).read()).render(gramine=gramine, **defines)
tomllib.loads(text)
open(output, "w").write(text)
"""
_STUB_SIGN = """
import sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
assert open(args["--key"]).read() == "signing key"
open(args["--output"], "w").write(open(args["--manifest"]).read())
open(args["--manifest"].removesuffix(".manifest") + ".sig", "wb").write(b"sigstruct")
"""
_STUB_VIEW = """
import json, sys
assert sys.argv[1:3] == ["--output-format", "json"] and open(sys.argv[3], "rb").read()
print(json.dumps({SIGSTRUCT}))
"""


def _stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)


@pytest.fixture
def gramine_tools(tmp_path: Path) -> dict[str, str]:
    make = shutil.which("make")
    assert make, "GNU make is needed to test deploy/gramine/Makefile"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(
        bin_dir,
        "gramine-manifest",
        _STUB_MANIFEST.replace("LIBOS", repr(LIBOS)).replace("RUNTIME", repr(RUNTIME)),
    )
    _stub(bin_dir, "gramine-sgx-sign", _STUB_SIGN)
    view = _STUB_VIEW.replace("{SIGSTRUCT}", repr(_sigstruct()))
    _stub(bin_dir, "gramine-sgx-sigstruct-view", view)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.fixture
def build_dir(tmp_path: Path) -> Path:
    work = tmp_path / "gramine"
    work.mkdir()
    for name in ("Makefile", "sealserve.manifest.template", "gramine_helper.py"):
        shutil.copy(GRAMINE / name, work / name)
    config = tmp_path / "config"
    config.mkdir()
    for name in ("models.config", "ssl.cfg", "kbs-ca.pem"):
        (config / name).write_text(name)
    (tmp_path / "models").mkdir()
    (tmp_path / "enclave-key.pem").write_text("signing key")
    return work


def _make(build_dir: Path, env: dict[str, str], *targets: str, **variables: str) -> Any:
    root = build_dir.parent
    settings = {
        "PYTHON": sys.executable,
        "CONFIG_DIR": str(root / "config"),
        "MODELS_DIR": str(root / "models"),
        "SGX_SIGNER_KEY": str(root / "enclave-key.pem"),
        "KEY_BROKER": KEY_BROKER,
        "SSL_CONFIG_KEY": "half_plus_two",
        "KEY_BROKER_TLS_NAME": TLS_NAME,
        **variables,
    }
    command = [
        "make",
        "--no-print-directory",
        "-C",
        str(build_dir),
        *targets,
        *(f"{k}={v}" for k, v in settings.items()),
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_makefile_renders_signs_and_writes_the_policy(
    build_dir: Path, gramine_tools: dict[str, str]
) -> None:
    result = _make(build_dir, gramine_tools, "all", "policy.toml", MAX_THREADS="128")
    assert result.returncode == 0, result.stdout + result.stderr
    signed = tomllib.loads((build_dir / "sealserve.manifest.sgx").read_text())
    assert signed["sgx"]["max_threads"] == 128
    assert f"--key_broker={KEY_BROKER}" in signed["loader"]["argv"]
    assert f"--key_broker_tls_name={TLS_NAME}" in signed["loader"]["argv"]
    assert (build_dir / "sealserve.sig").read_bytes() == b"sigstruct"
    policy = Policy.load(build_dir / "policy.toml")
    assert policy.sgx[0].mr_enclave == (MR_ENCLAVE,)
    assert json.loads((build_dir / "sigstruct.json").read_text())["mr_enclave"] == MR_ENCLAVE
    # once signed, running needs none of the build's settings and rebuilds nothing
    again = _make(build_dir, gramine_tools, "-n", "run", KEY_BROKER="", SSL_CONFIG_KEY="")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines() == ["gramine-sgx sealserve"]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"KEY_BROKER": ""}, "set KEY_BROKER"),
        ({"KEY_BROKER": "http://kbs:8080"}, "must be an https:// URL"),
        ({"SSL_CONFIG_KEY": ""}, "set SSL_CONFIG_KEY"),
        ({"KEY_BROKER_TLS_NAME": ""}, "set KEY_BROKER_TLS_NAME"),
        ({"KEY_BROKER_TLS_NAME": "two words"}, "KEY_BROKER_TLS_NAME must be a DNS name"),
        ({"KEY_BROKER_TLS_NAME": "a/b"}, "KEY_BROKER_TLS_NAME must be a DNS name"),
    ],
)
def test_makefile_refuses_an_incomplete_configuration(
    build_dir: Path, gramine_tools: dict[str, str], variables: dict[str, str], message: str
) -> None:
    result = _make(build_dir, gramine_tools, "all", **variables)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (build_dir / "sealserve.manifest").exists()


def test_makefile_names_a_missing_config_file(
    build_dir: Path, gramine_tools: dict[str, str]
) -> None:
    (build_dir.parent / "config" / "ssl.cfg").unlink()
    result = _make(build_dir, gramine_tools, "all")
    assert result.returncode != 0
    assert "ssl.cfg is missing" in result.stderr


def test_makefile_refuses_another_gramine_than_the_pinned_one(
    build_dir: Path, gramine_tools: dict[str, str], tmp_path: Path
) -> None:
    bin_dir = Path(gramine_tools["PATH"].split(":")[0])
    _stub(bin_dir, "dpkg-query", 'import sys\nprint("1.7", end="")\n')
    result = _make(build_dir, gramine_tools, "all")
    assert result.returncode != 0
    assert "Gramine 1.7 is installed, the reference build uses 1.8" in result.stderr
    _stub(bin_dir, "dpkg-query", 'import sys\nprint("1.8", end="")\n')
    assert _make(build_dir, gramine_tools, "all").returncode == 0


_STUB_BUILDER = """
import json, os, sys
args = sys.argv[1:]
open(os.environ["BUILDER_LOG"], "w").write(json.dumps(args))
dest = [a for a in args if a.startswith("type=local,dest=")][0].split("dest=", 1)[1]
os.makedirs(dest, exist_ok=True)
open(os.path.join(dest, "sigstruct.json"), "w").write(json.dumps({SIGSTRUCT}))
"""


@pytest.mark.parametrize("expected", [MR_ENCLAVE, "00" * 32], ids=["same", "different"])
def test_makefile_reproduce_mrenclave_rebuilds_and_compares(
    build_dir: Path, gramine_tools: dict[str, str], expected: str
) -> None:
    bin_dir = Path(gramine_tools["PATH"].split(":")[0])
    _stub(bin_dir, "builder", _STUB_BUILDER.replace("{SIGSTRUCT}", repr(_sigstruct())))
    log = build_dir.parent / "builder.json"
    env = {**gramine_tools, "BUILDER_LOG": str(log)}
    result = _make(
        build_dir,
        env,
        "reproduce-mrenclave",
        CONTAINER_BUILD="builder",
        EXPECTED_MRENCLAVE=expected,
        HOST_PYTHON=sys.executable,
    )
    args = json.loads(log.read_text())
    assert args[args.index("--target") + 1] == "sgx-measurement"
    assert args[args.index("-f") + 1] == "../docker/server.Dockerfile"
    assert f"KEY_BROKER={KEY_BROKER}" in args and "SSL_CONFIG_KEY=half_plus_two" in args
    assert f"KEY_BROKER_TLS_NAME={TLS_NAME}" in args  # in argv, so in MRENCLAVE
    assert f"sgx-config={build_dir.parent / 'config'}" in args
    if expected == MR_ENCLAVE:
        assert result.returncode == 0, result.stderr
        assert "reproduced: MRENCLAVE" in result.stdout
    else:
        assert result.returncode != 0
        assert "NOT reproduced" in result.stdout


def test_makefile_reproduce_mrenclave_needs_the_expected_value(
    build_dir: Path, gramine_tools: dict[str, str]
) -> None:
    result = _make(build_dir, gramine_tools, "reproduce-mrenclave")
    assert result.returncode != 0 and "EXPECTED_MRENCLAVE" in result.stderr


def test_makefile_policy_options_reach_the_policy(
    build_dir: Path, gramine_tools: dict[str, str]
) -> None:
    result = _make(
        build_dir,
        gramine_tools,
        "all",
        "policy.toml",
        POLICY_OPTIONS="--accept-tcb-status SWHardeningNeeded --deny-advisory INTEL-SA-00615",
    )
    assert result.returncode == 0, result.stderr
    policy = Policy.load(build_dir / "policy.toml")
    assert policy.accepted_tcb_statuses == ("UpToDate", "SWHardeningNeeded")
    assert policy.denied_advisories == ("INTEL-SA-00615",)

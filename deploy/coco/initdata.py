"""Init-data for the sealserve Confidential Containers pod (deploy/kubernetes/tdx).

Init-data (Trustee's initdata spec, version 0.1.0) is a TOML document the host hands to the
TD at launch; Kata puts its digest in the TD's MRCONFIGID (48 bytes: SHA-384, or a shorter
digest zero-padded), so a quote shows exactly which init-data the TD was started with. Ours
carries the Kata agent policy (policy.rego: no exec, the pinned image, command line,
environment and mounts). The KBS policy pins that MRCONFIGID next to MRTD and RTMR0-2.

    initdata.py build --image REF@sha256:... [--key-broker URL] [--ssl-config-key NAME]
                      [--key-broker-tls-name NAME]
                                             the init-data TOML (write it to initdata.toml)
    initdata.py annotation initdata.toml     the pod annotation's value (gzip, then base64)
    initdata.py mrconfigid initdata.toml     the MRCONFIGID a TD launched with it carries (hex)
    initdata.py policy initdata.toml --mr-td HEX --rtmr0 HEX --rtmr1 HEX --rtmr2 HEX
                                             a KBS policy pinning the TD and this init-data

The digest is taken over the TOML text exactly as given, which is what Kata's runtime does for
the annotation it receives (kata-containers src/libs/kata-types initdata.rs,
calculate_initdata_digest); check it once against a real quote's mr_config_id
(`sealserve attest verify`), as some Kata versions re-serialise the document first.

Standard library only. Prints nothing secret: init-data is integrity-protected, not secret.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
POLICY = HERE / "policy.rego"
ALGORITHM = "sha384"
VERSION = "0.1.0"
MRCONFIGID_SIZE = 48
DEFAULT_KEY_BROKER = "https://sealserve-kbs.sealserve.svc:8080"
DEFAULT_SSL_CONFIG_KEY = "half_plus_two"
#: the name the KBS certifies the servers' TLS keys for (`serve --key_broker_tls_name`): the
#: Service's DNS name, so that a requester reaching them through it finds that name
DEFAULT_KEY_BROKER_TLS_NAME = "sealserve.sealserve.svc"
_DIGEST_IMAGE = re.compile(r"^[a-z0-9][a-z0-9./:_-]*@sha256:[0-9a-f]{64}$")
_HEX48 = re.compile(r"^[0-9a-f]{96}$")


def agent_policy(
    image: str,
    key_broker: str,
    ssl_config_key: str,
    key_broker_tls_name: str = DEFAULT_KEY_BROKER_TLS_NAME,
) -> str:
    """policy.rego with this deployment's image, key broker, ssl.cfg key and the name the
    KBS certifies the servers' TLS keys for."""
    if not _DIGEST_IMAGE.match(image):
        raise SystemExit(
            f"--image {image!r} must name the image by digest, in lower case (as image "
            "references are): ref@sha256:<64 hex>"
        )
    if not key_broker.startswith("https://") or '"' in key_broker:
        raise SystemExit("--key-broker must be an https:// URL")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", ssl_config_key):
        raise SystemExit("--ssl-config-key must be a model name")
    # a KBS resource path segment (sealserve/tls-cert/NAME) and a DNS name in the certificate
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", key_broker_tls_name):
        raise SystemExit("--key-broker-tls-name must be a DNS name (letters, digits, '.', '-')")
    text = POLICY.read_text()
    text, n = re.subn(r'^SERVER_IMAGE := ".*"$', f'SERVER_IMAGE := "{image}"', text, flags=re.M)
    assert n == 1, "policy.rego has no SERVER_IMAGE line"
    for flag, default, value in (
        ("--key_broker", DEFAULT_KEY_BROKER, key_broker),
        ("--ssl_config_key", DEFAULT_SSL_CONFIG_KEY, ssl_config_key),
        ("--key_broker_tls_name", DEFAULT_KEY_BROKER_TLS_NAME, key_broker_tls_name),
    ):
        text, n = re.subn(
            rf'^  "{flag}={re.escape(default)}",$', f'  "{flag}={value}",', text, flags=re.M
        )
        assert n == 1, f"policy.rego's SERVER_ARGS has no {flag}={default} line"
    return text


def build(
    image: str,
    key_broker: str,
    ssl_config_key: str,
    key_broker_tls_name: str = DEFAULT_KEY_BROKER_TLS_NAME,
) -> str:
    policy = agent_policy(image, key_broker, ssl_config_key, key_broker_tls_name)
    if "'''" in policy:
        raise SystemExit("policy.rego must not contain ''' (TOML literal string delimiter)")
    return (
        "# sealserve's init-data (deploy/coco/initdata.py build): the Kata agent policy.\n"
        f'algorithm = "{ALGORITHM}"\n'
        f'version = "{VERSION}"\n'
        "\n"
        "[data]\n"
        f"\"policy.rego\" = '''\n{policy}'''\n"
    )


def checked(text: str) -> dict[str, object]:
    """The init-data document in `text`, or SystemExit with one line saying what is wrong:
    an empty file, a file that is not TOML, or another version or algorithm would otherwise
    become an annotation (or MRCONFIGID) no TD should launch with."""
    import tomllib

    if not text.strip():
        raise SystemExit("init-data is empty: write it with `initdata.py build` first")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SystemExit(f"init-data is not TOML: {err}") from None
    if document.get("version") != VERSION:
        raise SystemExit(f"init-data version must be {VERSION}")
    if document.get("algorithm") not in ("sha256", "sha384", "sha512"):
        raise SystemExit("init-data algorithm must be sha256, sha384 or sha512")
    if not isinstance(document.get("data"), dict) or not document["data"]:
        raise SystemExit("init-data has no [data] (the agent policy goes there)")
    return document


def annotation(text: str) -> str:
    """The value of the pod annotation io.katacontainers.config.hypervisor.cc_init_data."""
    checked(text)
    # mtime=0: the same document always gives the same annotation
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


def decode_annotation(value: str) -> str:
    return gzip.decompress(base64.b64decode("".join(value.split()))).decode()


def mrconfigid(text: str) -> str:
    """The MRCONFIGID (hex) of a TD launched with this init-data: its digest, sized to 48."""
    algorithm = str(checked(text)["algorithm"])
    digest = hashlib.new(algorithm, text.encode()).digest()
    return digest[:MRCONFIGID_SIZE].ljust(MRCONFIGID_SIZE, b"\0").hex()


def kbs_policy(text: str, mr_td: str, rtmrs: list[str]) -> str:
    values = [mr_td.lower(), *(r.lower() for r in rtmrs)]
    for value in values:
        if not _HEX48.match(value):
            raise SystemExit(f"{value!r} is not 48 bytes of hex")
    lines = [
        "# KBS policy for sealserve in a Confidential Containers TD (deploy/coco/initdata.py)",
        "version = 1",
        'tee = ["tdx"]',
        'accepted_tcb_statuses = ["UpToDate"]',
        "",
        "[[tdx]]",
        f'mr_td = ["{values[0]}"]',
        *(f'rtmr{i} = ["{value}"]' for i, value in enumerate(values[1:])),
        f'mr_config_id = ["{mrconfigid(text)}"]',
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("build", help="init-data TOML with this deployment's agent policy")
    make.add_argument("--image", required=True, help="the coco server image, REF@sha256:...")
    make.add_argument("--key-broker", default=DEFAULT_KEY_BROKER)
    make.add_argument("--ssl-config-key", default=DEFAULT_SSL_CONFIG_KEY)
    make.add_argument(
        "--key-broker-tls-name",
        default=DEFAULT_KEY_BROKER_TLS_NAME,
        help="the name the KBS certifies the servers' TLS keys for (its policy "
        "sealserve/tls-cert/NAME decides which servers get one)",
    )
    for name in ("annotation", "mrconfigid"):
        sub.add_parser(name).add_argument("initdata")
    policy = sub.add_parser("policy", help="a KBS policy pinning the TD and this init-data")
    policy.add_argument("initdata")
    policy.add_argument("--mr-td", required=True)
    for i in range(3):
        policy.add_argument(f"--rtmr{i}", required=True)
    args = parser.parse_args(argv)
    if args.command == "build":
        sys.stdout.write(
            build(args.image, args.key_broker, args.ssl_config_key, args.key_broker_tls_name)
        )
        return 0
    try:
        text = Path(args.initdata).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SystemExit(f"cannot read init-data {args.initdata}: {err}") from None
    if args.command == "annotation":
        print(annotation(text))
    elif args.command == "mrconfigid":
        print(mrconfigid(text))
    else:
        sys.stdout.write(kbs_policy(text, args.mr_td, [args.rtmr0, args.rtmr1, args.rtmr2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

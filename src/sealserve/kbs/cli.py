"""The `sealserve kbs ...` commands, as argument builders and runners for the main CLI.

For the lead's `cli.py`: each command group has `add_*_arguments(parser)` and
`run_*(args) -> int`; `add_arguments(parser)` / `run(args)` build and dispatch the whole
`kbs` tree (`init`, `serve`, `secret put|list|delete`, `policy set|show|from-ra-config`,
`audit`, `secret-prov map|show`, `get-resource` from `kbs.get_resource`). Runners
raise `SealserveError` for the main CLI to print; they never print secrets.

Admin commands talk to a running KBS over HTTPS with the admin token read from a file
(`--admin-token-file`, or the `SEALSERVE_KBS_ADMIN_TOKEN` environment variable), never from
the command line (it would show in `ps`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

from sealserve.errors import AlreadyExists, Code, InvalidArgument, SealserveError
from sealserve.fsio import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, atomic_output_file, read_user_file

log = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = "SEALSERVE_KBS_ADMIN_TOKEN"
INIT_FILES = {"master_key": "master.key", "signing_key": "signing-key.pem", "admin": "admin.token"}


# --- init ----------------------------------------------------------------------------------


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="new directory for the KBS's keys (mode 0700)")
    parser.set_defaults(kbs_run=run_init)


def run_init(args: argparse.Namespace) -> int:
    """Create master.key (32 bytes), signing-key.pem (EC P-256) and admin.token, all 0600,
    and the CA of attested servers (server-ca-key.pem 0600, server-ca.pem)."""
    from sealserve.kbs.server_ca import CA_FILES, make_server_ca
    from sealserve.kbs.store import generate_master_key_file

    directory = Path(args.directory)
    if directory.exists() and any(directory.iterdir()):
        raise AlreadyExists(f"{directory} exists and is not empty")
    directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    generate_master_key_file(directory / INIT_FILES["master_key"])
    with atomic_output_file(directory / INIT_FILES["signing_key"], mode=PRIVATE_FILE_MODE) as f:
        f.write(ECKey.generate_key("P-256").as_pem(private=True))
    with atomic_output_file(directory / INIT_FILES["admin"], mode=PRIVATE_FILE_MODE) as f:
        f.write(secrets.token_urlsafe(32).encode() + b"\n")
    make_server_ca(directory)
    print(
        f"KBS keys written to {directory} (master.key, signing-key.pem, admin.token; "
        f"{CA_FILES['key']} and {CA_FILES['cert']}, the CA of attested servers' certificates)"
    )
    return 0


# --- serve ---------------------------------------------------------------------------------


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        required=True,
        help="SQLite database file (created if missing) or a postgresql:// URL",
    )
    parser.add_argument("--master-key", required=True, help="32-byte KBS master key file (0600)")
    parser.add_argument("--signing-key", required=True, help="EC P-256 private key PEM (tokens)")
    parser.add_argument("--admin-token-file", help="admin bearer token; without it: deny-all")
    parser.add_argument(
        "--collateral",
        action="append",
        default=[],
        help="DCAP collateral JSON to verify quotes against (repeat: one per platform family)",
    )
    parser.add_argument("--pccs-url", help="fetch collateral from this PCCS / Intel PCS")
    parser.add_argument("--collateral-dir", help="cache fetched collateral here (with --pccs-url)")
    parser.add_argument(
        "--insecure-trust-sim-root",
        metavar="SIM_DIR",
        help="trust this simulated TEE's root CA (INSECURE: tests/demos); its collateral is "
        "used when --collateral is not given",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--tls-cert", help="server certificate PEM")
    parser.add_argument("--tls-key", help="server private key PEM")
    parser.add_argument("--insecure-http", action="store_true", help="serve plain HTTP (INSECURE)")
    parser.add_argument(
        "--server-ca-key",
        help="issue attested servers' TLS certificates with this CA key (kbs init's "
        "server-ca-key.pem; with --server-ca-cert)",
    )
    parser.add_argument("--server-ca-cert", help="the certificate of --server-ca-key")
    parser.add_argument(
        "--server-cert-lifetime",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="lifetime of the server certificates issued (default 3600; servers renew them)",
    )
    parser.add_argument(
        "--secret-prov-port",
        type=int,
        metavar="PORT",
        help="also serve Gramine's secret provisioning (RA-TLS client certificates) on this "
        "port (4433 by convention; 0 picks a free one), with the --tls-cert certificate",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="also serve GET /metrics without a token on this port (plain HTTP; on the main "
        "port /metrics needs the admin token)",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of --metrics-port (a private one)"
    )
    parser.set_defaults(kbs_run=run_serve)


def _read_token(path: str | None) -> str | None:
    if path:
        token = read_user_file(path, "admin token file").decode("utf-8", "replace").strip()
        if not token:
            raise InvalidArgument(f"admin token file {path} is empty")
        return token
    return os.environ.get(ADMIN_TOKEN_ENV) or None


def build_service(args: argparse.Namespace) -> Any:
    """A `KbsService` from `serve`'s arguments (also used by tests and benchmarks)."""
    from sealserve.attestation import load_collateral, load_sim
    from sealserve.kbs.collateral import CollateralFiles
    from sealserve.kbs.service import KbsConfig, KbsService
    from sealserve.kbs.store import MasterKey, open_store

    sim_root: bytes | None = None
    files = [load_collateral(path) for path in args.collateral]
    if args.insecure_trust_sim_root:
        sim = load_sim(args.insecure_trust_sim_root)
        sim_root = sim.root_ca_der
        if not files and not args.pccs_url:
            files.append(sim.collateral)
    if files and args.pccs_url:
        raise InvalidArgument("give --collateral files or --pccs-url, not both")
    if not files and not args.pccs_url:
        raise InvalidArgument(
            "give --collateral FILE or --pccs-url URL (or --insecure-trust-sim-root SIM_DIR)"
        )
    # With --pccs-url the source is bound to the server's event loop in run_serve.
    collateral: Any = CollateralFiles(files) if files else None
    try:
        signing = ECKey.import_key(read_user_file(args.signing_key, "KBS signing key"))
    except ValueError as err:
        raise InvalidArgument(f"{args.signing_key} is not an EC private key: {err}") from None
    server_ca = None
    if bool(args.server_ca_key) != bool(args.server_ca_cert):
        raise InvalidArgument("give both --server-ca-key and --server-ca-cert")
    if args.server_ca_key:
        from sealserve.kbs.server_ca import ServerCA

        server_ca = ServerCA.load(
            args.server_ca_key, args.server_ca_cert, lifetime_seconds=args.server_cert_lifetime
        )
    store = open_store(args.db, MasterKey.load(args.master_key))
    config = KbsConfig(
        signing_key=signing,
        collateral=collateral or _no_collateral_yet,
        admin_token=_read_token(args.admin_token_file),
        insecure_trust_sim_root=sim_root,
        server_ca=server_ca,
    )
    return KbsService(store, config)


def _no_collateral_yet(quote: bytes) -> Any:
    raise SealserveError("the KBS's collateral source is not ready", code=Code.UNAVAILABLE)


def run_serve(args: argparse.Namespace) -> int:
    from sealserve.attestation import CollateralCache
    from sealserve.attestation.collateral import INTEL_ROOT_CA_SHA256
    from sealserve.kbs.collateral import CachedCollateral
    from sealserve.kbs.http import bound_port, server_ssl_context, start_kbs, start_metrics

    if bool(args.tls_cert) != bool(args.tls_key):
        raise InvalidArgument("give both --tls-cert and --tls-key")
    if not args.tls_cert and not args.insecure_http:
        raise InvalidArgument("the KBS serves HTTPS: give --tls-cert and --tls-key")
    context = server_ssl_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    if args.secret_prov_port is not None and not args.tls_cert:
        raise InvalidArgument("--secret-prov-port needs --tls-cert and --tls-key")
    service = build_service(args)

    async def serve() -> None:
        if args.pccs_url:
            roots = {INTEL_ROOT_CA_SHA256}
            if service.config.insecure_trust_sim_root is not None:
                roots.add(hashlib.sha256(service.config.insecure_trust_sim_root).hexdigest())
            cache = CollateralCache(
                args.pccs_url, directory=args.collateral_dir, trusted_root_sha256=frozenset(roots)
            )
            service.config.collateral = CachedCollateral(cache, asyncio.get_running_loop())
        runner = await start_kbs(
            service,
            host=args.host,
            port=args.port,
            ssl_context=context,
            insecure_http=args.insecure_http,
        )
        runners = [runner]
        if args.metrics_port is not None:
            runners.append(
                await start_metrics(service, host=args.metrics_host, port=args.metrics_port)
            )
        scheme = "https" if context else "http"
        # the bound port, which --port 0 leaves to the system
        print(f"KBS listening on {scheme}://{args.host}:{bound_port(runner)}", flush=True)
        secret_prov = _start_secret_prov(args, service)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            if secret_prov is not None:
                secret_prov.stop()
            for each in reversed(runners):
                await each.cleanup()
            service.store.close()

    asyncio.run(serve())
    return 0


def _start_secret_prov(args: argparse.Namespace, service: Any) -> Any:
    if args.secret_prov_port is None:
        return None
    from sealserve.kbs.secret_prov import SecretProvServer, server_context

    server = SecretProvServer(
        service,
        server_context(args.tls_cert, args.tls_key),
        host=args.host,
        port=args.secret_prov_port,
    ).start()
    print(f"secret provisioning (Gramine RA-TLS) on {args.host}:{server.port}", flush=True)
    return server


# --- admin commands -------------------------------------------------------------------------


def _add_admin_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the KBS, https://host:port")
    parser.add_argument("--ca", help="PEM file of the CA that signed the KBS's certificate")
    parser.add_argument("--admin-token-file", help=f"admin token file (or ${ADMIN_TOKEN_ENV})")


def _admin_call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    from sealserve.kbs.client import KbsClient, _detail

    token = _read_token(args.admin_token_file)
    if token is None:
        raise InvalidArgument(f"give --admin-token-file FILE (or set ${ADMIN_TOKEN_ENV})")
    client = KbsClient(args.url, ca_pem=args.ca, attempts=2)
    headers = {"Authorization": f"Bearer {token}"}
    answer = client.call(method, path, headers=headers, **kwargs)
    if answer.status >= 400:
        codes = {401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED, 404: Code.NOT_FOUND}
        raise SealserveError(
            f"KBS refused ({answer.status}): {_detail(answer)}",
            code=codes.get(answer.status, Code.INVALID_ARGUMENT),
        )
    if not answer.body:
        return None
    return json.loads(answer.body)


def add_secret_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kbs_secret_command", required=True)
    put = sub.add_parser("put", help="add or rotate a secret (a new version)")
    put.add_argument("resource", help="<repository>/<type>/<tag>, e.g. sealserve/model-key/m")
    put.add_argument("--file", required=True, help="file holding the secret's bytes ('-': stdin)")
    _add_admin_connection(put)
    lst = sub.add_parser("list", help="list stored secrets (paths, versions, sizes; no values)")
    _add_admin_connection(lst)
    delete = sub.add_parser("delete", help="delete a secret")
    delete.add_argument("resource")
    _add_admin_connection(delete)
    revoke = sub.add_parser(
        "revoke",
        help="revoke a secret: never released again, and servers holding it on a lease "
        "(key_lease_seconds in its policy) unload what it protects within one lease",
    )
    revoke.add_argument("resource")
    _add_admin_connection(revoke)
    parser.set_defaults(kbs_run=run_secret)


def run_secret(args: argparse.Namespace) -> int:
    command = args.kbs_secret_command
    if command == "put":
        if args.file == "-":
            value = sys.stdin.buffer.read()
        else:
            value = read_user_file(args.file, "secret file")
        info = _admin_call(args, "PUT", f"/kbs/v0/resource/{args.resource}", data=value)
        print(f"stored {info['path']} version {info['version']} ({info['size']} bytes)")
    elif command == "list":
        for info in _admin_call(args, "GET", "/kbs/v0/resources"):
            print(f"{info['path']}\tversion {info['version']}\t{info['size']} bytes")
    elif command == "delete":
        _admin_call(args, "DELETE", f"/kbs/v0/resource/{args.resource}")
        print(f"deleted {args.resource}")
    elif command == "revoke":
        _admin_call(args, "DELETE", f"/kbs/v0/resource/{args.resource}?revoke=true")
        print(f"revoked {args.resource}: servers holding it on a lease drop it when it ends")
    return 0


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kbs_policy_command", required=True)
    set_ = sub.add_parser("set", help="set a resource's attestation policy (TOML or .json)")
    set_.add_argument("resource", help='<repository>/<type>/<tag>, or "default"')
    set_.add_argument("policy_file")
    _add_admin_connection(set_)
    show = sub.add_parser("show", help="print a resource's policy")
    show.add_argument("resource")
    _add_admin_connection(show)
    convert = sub.add_parser(
        "from-ra-config",
        help="print the policy equivalent to a Gramine/CCZoo ra_config.json (JSON policy)",
    )
    convert.add_argument("ra_config", help="the seed's ra_config.json")
    _add_tcb_relaxation(convert)
    parser.set_defaults(kbs_run=run_policy)


def _add_tcb_relaxation(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--accept-tcb-status",
        action="append",
        default=[],
        metavar="STATUS",
        help="also accept platforms with this TCB status (e.g. SWHardeningNeeded); strict "
        "(UpToDate only) unless given: see docs/coming-from-gramine.md for what each costs",
    )
    parser.add_argument(
        "--accept-advisory",
        action="append",
        default=[],
        metavar="ID",
        help="also accept platforms whose TCB level names this advisory (e.g. INTEL-SA-00615), "
        "one by one: a platform naming any advisory not listed is refused (statuses other than "
        "UpToDate usually name some)",
    )
    parser.add_argument(
        "--insecure-sim",
        action="store_true",
        help="accept the simulated TEE with these measurements instead of SGX (INSECURE: "
        "tests and demos only)",
    )


def _policy_from_ra_config(args: argparse.Namespace) -> Any:
    import dataclasses

    from sealserve.attestation import Policy

    path = args.ra_config
    policy = Policy.from_ra_config(read_user_file(path, "ra_config.json"), source=path)
    changes: dict[str, Any] = {}
    if args.accept_tcb_status:
        statuses = (*policy.accepted_tcb_statuses, *args.accept_tcb_status)
        changes["accepted_tcb_statuses"] = tuple(dict.fromkeys(statuses))
    if args.accept_advisory:
        advisories = (a.strip().upper() for a in args.accept_advisory)
        changes["accepted_advisories"] = tuple(dict.fromkeys(advisories))
    if args.insecure_sim:
        changes.update(sim=policy.sgx, sgx=(), tee=("sim",))
    return dataclasses.replace(policy, **changes) if changes else policy


def run_policy(args: argparse.Namespace) -> int:
    from sealserve.attestation import Policy

    if args.kbs_policy_command == "from-ra-config":
        policy = _policy_from_ra_config(args)
        print(json.dumps(policy.to_dict(), indent=2))
        return 0
    if args.kbs_policy_command == "set":
        Policy.load(args.policy_file)  # fail here, with the file's name, before sending
        text = read_user_file(args.policy_file, "policy file").decode("utf-8")
        fmt = "json" if args.policy_file.lower().endswith(".json") else "toml"
        _admin_call(
            args,
            "PUT",
            f"/kbs/v0/resource-policy/{args.resource}",
            json_body={"format": fmt, "policy": text},
        )
        print(f"policy of {args.resource} set")
    else:
        result = _admin_call(args, "GET", f"/kbs/v0/resource-policy/{args.resource}")
        text = result["policy"]
        # a JSON policy is stored as sent, without a final newline
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        nargs="?",
        choices=["show", "verify"],
        default="show",
        help="show (default): records from a running KBS, each authenticated by it; verify: "
        "check the whole log offline, from the database, with the KBS's public key",
    )
    parser.add_argument("--resource", help="show: only records of this resource")
    parser.add_argument("--since", type=int, default=0, help="show: records after this seq")
    parser.add_argument("--limit", type=int, default=1000, help="show: at most this many")
    parser.add_argument("--url", help="show: the KBS, https://host:port")
    parser.add_argument("--ca", help="show: PEM of the CA that signed the KBS's certificate")
    parser.add_argument(
        "--admin-token-file", help=f"show: admin token file (or ${ADMIN_TOKEN_ENV})"
    )
    parser.add_argument("--checkpoint-out", help="show: write the latest signed checkpoint here")
    parser.add_argument("--db", help="verify: the SQLite file or postgresql:// URL")
    parser.add_argument(
        "--public-key", help="verify: the KBS's signing key, public (or private) PEM"
    )
    parser.add_argument(
        "--from-checkpoint",
        help="verify: start at this signed checkpoint (a file kept outside the database)",
    )
    parser.add_argument(
        "--master-key", help="verify: also check every record's MAC with the master key"
    )
    parser.set_defaults(kbs_run=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    """show: print the records as JSON lines (exit 1 if one fails authentication); verify:
    the whole chain offline (exit 1 if it is broken)."""
    if args.action == "verify":
        return _run_audit_verify(args)
    from urllib.parse import urlencode

    if not args.url:
        raise InvalidArgument("give --url (or use `sealserve kbs audit verify --db ...`)")
    query = {"since": args.since, "limit": args.limit}
    if args.resource:
        query["resource"] = args.resource
    result = _admin_call(args, "GET", "/kbs/v0/audit?" + urlencode(query))
    for record in result["records"]:
        print(json.dumps(record, sort_keys=True))
    checkpoint = result.get("checkpoint")
    if args.checkpoint_out and checkpoint:
        with atomic_output_file(Path(args.checkpoint_out), replace=True) as out:
            out.write(checkpoint["signed"].encode() + b"\n")
    chain = result["chain"]
    if not chain["ok"]:
        print(
            f"audit record {chain['first_bad_seq']} FAILS AUTHENTICATION: {chain['reason']}",
            file=sys.stderr,
        )
        return 1
    where = f"; latest signed checkpoint at {checkpoint['seq']}" if checkpoint else ""
    print(
        f"{chain['records']} audit records authenticated by the KBS{where} "
        "(`sealserve kbs audit verify` checks the whole chain)",
        file=sys.stderr,
    )
    return 0


def _run_audit_verify(args: argparse.Namespace) -> int:
    from sealserve.kbs.audit_verify import load_public_key, verify_audit_log
    from sealserve.kbs.sealing import MasterKey

    if not args.db or not args.public_key:
        raise InvalidArgument("audit verify needs --db and --public-key")
    public_key = load_public_key(read_user_file(args.public_key, "KBS public key"))
    start = None
    if args.from_checkpoint:
        start = read_user_file(args.from_checkpoint, "checkpoint file").decode("ascii", "replace")
    master = MasterKey.load(args.master_key) if args.master_key else None
    status = verify_audit_log(args.db, public_key, from_checkpoint=start, master_key=master)
    if not status.ok:
        print(
            f"audit log BROKEN at record {status.first_bad_seq}: {status.reason}",
            file=sys.stderr,
        )
        return 1
    last = status.first_seq + status.records - 1
    covered = (
        "every record's MAC checked"
        if master is not None
        else f"{max(0, last - max(status.last_checkpoint_seq, status.first_seq - 1))} records "
        "after the last checkpoint are covered by the hash chain only"
    )
    print(
        f"audit log verified: records {status.first_seq}..{last}, {status.checkpoints} signed "
        f"checkpoints (the last at {status.last_checkpoint_seq}); {covered}"
    )
    return 0


def add_migrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="the schema-1 SQLite file or postgresql:// URL")
    parser.add_argument("--master-key", required=True, help="the KBS master key file")
    parser.add_argument("--signing-key", required=True, help="the KBS signing key PEM")
    parser.set_defaults(kbs_run=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    """Upgrade a schema-1 store in place (`kbs.migrate`)."""
    from sealserve.kbs.migrate import migrate_store
    from sealserve.kbs.sealing import MasterKey

    try:
        signing = ECKey.import_key(read_user_file(args.signing_key, "KBS signing key"))
    except ValueError as err:
        raise InvalidArgument(f"{args.signing_key} is not an EC private key: {err}") from None
    done = migrate_store(args.db, MasterKey.load(args.master_key), signing)
    print(
        f"KBS store upgraded: {done.resources} secrets, {done.policies} policies, "
        f"{done.audit_records} audit records; review the policies (`sealserve kbs policy show`)"
    )
    return 0


def add_secret_prov_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kbs_secret_prov_command", required=True)
    map_ = sub.add_parser(
        "map",
        help="the resources Gramine's secret provisioning may release (tried in order)",
    )
    map_.add_argument("resources", nargs="+", metavar="RESOURCE")
    map_.add_argument(
        "--ra-config",
        help="also set each resource's policy from this ra_config.json (the seed's format)",
    )
    _add_tcb_relaxation(map_)
    _add_admin_connection(map_)
    show = sub.add_parser("show", help="print the mapped resources")
    _add_admin_connection(show)
    parser.set_defaults(kbs_run=run_secret_prov)


def run_secret_prov(args: argparse.Namespace) -> int:
    from sealserve.kbs.http import SECRET_PROV_MAP_PATH

    if args.kbs_secret_prov_command == "show":
        for resource in _admin_call(args, "GET", SECRET_PROV_MAP_PATH)["resources"]:
            print(resource)
        return 0
    if (args.accept_tcb_status or args.accept_advisory or args.insecure_sim) and not args.ra_config:
        raise InvalidArgument(
            "--accept-tcb-status, --accept-advisory and --insecure-sim go with --ra-config"
        )
    if args.ra_config:
        policy = _policy_from_ra_config(args)
        text = json.dumps(policy.to_dict())
        for resource in args.resources:
            _admin_call(
                args,
                "PUT",
                f"/kbs/v0/resource-policy/{resource}",
                json_body={"format": "json", "policy": text},
            )
            print(f"policy of {resource} set from {args.ra_config}")
    _admin_call(args, "PUT", SECRET_PROV_MAP_PATH, json_body={"resources": args.resources})
    print(f"secret provisioning releases: {', '.join(args.resources)}")
    return 0


# --- the whole tree --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`kbs init|serve|secret|policy|audit` under `parser` (the `kbs` subcommand's parser)."""
    sub = parser.add_subparsers(dest="kbs_command", required=True)
    add_init_arguments(sub.add_parser("init", help="create a KBS's master/signing/admin keys"))
    add_serve_arguments(sub.add_parser("serve", help="run the key broker (HTTPS)"))
    add_secret_arguments(sub.add_parser("secret", help="put|list|delete secrets"))
    add_policy_arguments(sub.add_parser("policy", help="set|show resource policies"))
    add_audit_arguments(sub.add_parser("audit", help="show or verify the audit log"))
    add_migrate_arguments(
        sub.add_parser("migrate", help="upgrade a store of an older sealserve (schema 1)")
    )
    add_secret_prov_arguments(
        sub.add_parser("secret-prov", help="map|show what Gramine's secret provisioning releases")
    )
    from sealserve.kbs import get_resource

    get_resource.add_arguments(
        sub.add_parser("get-resource", help="attest and fetch one resource (debugging, in a TEE)")
    )


def run(args: argparse.Namespace) -> int:
    runner = getattr(args, "kbs_run", None)
    if runner is None:
        raise InvalidArgument("choose a kbs command")
    return int(runner(args))

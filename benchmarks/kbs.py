"""Key broker figures: attest-and-release round trips per second, releases per attested
session, and a server's start-up attestations; optionally against a reference version of the
code measured in the same run.

A real `sealserve kbs serve` process (HTTPS, SQLite store with durable writes, collateral
loaded once: the cached case) per code tree holds the secrets under a policy pinning the
simulated TEE's measurement.

1. Round trips: `--clients` client processes each run complete round trips for `--seconds`:
   auth → challenge → a fresh simulated SGX quote bound to the nonce and an ephemeral key →
   attest → token → resource → JWE decrypted (a new session every time: the cost of one
   attestation). With `--reference GIT_REF` the same runs go against the KBS and client of
   that commit too, in alternating segments (`--rounds`), so both see the same machine; the
   ratio is the figure to read. Target: ≥ 100/s, and not below the reference.
2. Releases on one session: the same clients fetch the resource over and over on one
   attested session (what a server does for its models and their reloads).
3. Start-up: a server's key provider fetching 3 model keys and the TLS configuration's key;
   the attestations are counted at the KBS (its audit log). Target: 1 (the reference code:
   one per key).

Clients run in their own processes so that the broker does not share a GIL with them (they
share the machine's 2 cores, as a server fleet would not: the figures are lower bounds).

Usage: .venv/bin/python benchmarks/kbs.py [--seconds 20] [--clients 4] [--rounds 2]
           [--reference 5866a80~1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from charts import add_charts_option, write_results

TARGET_PER_SECOND = 100
RESOURCE = "sealserve/model-key/bench"
MODELS = ("half_plus_two", "digits", "resnet")
TLS_KEY = "sealserve/model-key/tls-config"
MR_ENCLAVE = bytes(range(32))
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sealserve(*args: object) -> str:
    command = [str(Path(sys.executable).with_name("sealserve")), *map(str, args)]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


# --- what runs in the client processes (imports from PYTHONPATH: one code tree) --------------


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import sealserve
    from sealserve.attestation import SimAttester
    from sealserve.kbs.client import KbsKeyProvider

    attester = SimAttester(spec["sim_dir"], mr_enclave=MR_ENCLAVE)
    provider = KbsKeyProvider(spec["url"], spec["ca"], attester, lambda name: name)
    session = getattr(provider, "session", None)  # None: code from before sessions

    def fetch(fresh: bool) -> None:
        if fresh and session is not None:
            session.invalidate()  # a full round trip: a new attestation
        provider.key_for(RESOURCE)

    if spec["mode"] == "startup":
        started = time.perf_counter()
        for name in spec["resources"]:
            provider.key_for(name)
        return {"seconds": time.perf_counter() - started, "code": sealserve.__file__}
    fetch(True)  # warm-up
    time.sleep(max(0.0, spec["start_at"] - time.time()))
    latencies, failures = [], 0
    deadline = time.monotonic() + spec["seconds"]
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            fetch(spec["mode"] == "round-trips")
        except Exception:  # counted, not fatal
            failures += 1
            continue
        latencies.append(time.perf_counter() - started)
    return {"latencies": latencies, "failures": failures, "code": sealserve.__file__}


# --- orchestration ---------------------------------------------------------------------------


class Tree:
    """One version of the code: its source directory, its KBS process and database."""

    def __init__(self, label: str, src: Path, work: Path, tls: Any) -> None:
        self.label, self.src, self.work = label, src, work / f"kbs-{label}"
        self.work.mkdir()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = str(tls.server_cert)
        self.env = {**os.environ, "PYTHONPATH": str(src)}
        kbs = work / "kbs"
        self.admin = ["--url", self.url, "--ca", self.ca, "--admin-token-file", kbs / "admin.token"]
        command = [
            sys.executable,
            "-c",
            "import sys; from sealserve.cli import main; sys.exit(main())",
            "kbs",
            "serve",
            "--db",
            self.work / "kbs.db",
            "--master-key",
            kbs / "master.key",
            "--signing-key",
            kbs / "signing-key.pem",
            "--admin-token-file",
            kbs / "admin.token",
            "--insecure-trust-sim-root",
            work / "sim",
            "--tls-cert",
            tls.server_cert,
            "--tls-key",
            tls.server_key,
            "--port",
            self.port,
        ]
        self.process = subprocess.Popen(
            [str(a) for a in command],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=self.env,
        )
        assert self.process.stdout is not None and "https://" in self.process.stdout.readline()

    def admin_call(self, *args: object) -> str:
        command = [
            sys.executable,
            "-c",
            "import sys; from sealserve.cli import main; sys.exit(main())",
            *map(str, args),
        ]
        return subprocess.run(
            command, check=True, capture_output=True, text=True, env=self.env
        ).stdout

    def provision(self, work: Path) -> None:
        policy = work / "policy.toml"
        for name in (RESOURCE, TLS_KEY, *(f"sealserve/model-key/{m}" for m in MODELS)):
            secret = self.work / "secret"
            secret.write_bytes(os.urandom(16))
            self.admin_call("kbs", "secret", "put", name, "--file", secret, *self.admin)
            self.admin_call("kbs", "policy", "set", name, policy, *self.admin)

    def attestations(self) -> int:
        """Verified attestations, as the KBS's own audit log counts them (admin API)."""
        from sealserve.kbs.client import KbsClient

        token = (self.work.parent / "kbs" / "admin.token").read_text().strip()
        client = KbsClient(self.url, ca_pem=self.ca, attempts=2)
        count, since = 0, 0
        while True:
            answer = client.call(
                "GET",
                f"/kbs/v0/audit?since={since}&limit=1000",
                headers={"Authorization": f"Bearer {token}"},
            )
            records = json.loads(answer.body)["records"]
            if not records:
                return count
            count += sum(
                1 for r in records if r["action"] == "attest" and r["decision"] == "verified"
            )
            since = max(int(r["seq"]) for r in records)

    def run_workers(self, spec: dict[str, Any], clients: int) -> list[dict[str, Any]]:
        spec = {**spec, "url": self.url, "ca": self.ca}
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                stdout=subprocess.PIPE,
                text=True,
                env=self.env,
            )
            for _ in range(clients)
        ]
        out = []
        for proc in procs:
            stdout, _ = proc.communicate(timeout=spec.get("seconds", 0) + 180)
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        code = {o["code"] for o in out}
        assert code == {str(self.src / "sealserve" / "__init__.py")}, code  # the right tree
        return out

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def summarise(results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    latencies = [x for r in results for x in r["latencies"]]
    failures = sum(r["failures"] for r in results)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "count": len(latencies),
        "seconds": seconds,
        "failures": failures,
        "per_second": len(latencies) / seconds,
        "p50_ms": quantiles[49] * 1000,
        "p99_ms": quantiles[98] * 1000,
    }


def progress(message: str) -> None:
    """One line on stderr per step of a run that takes minutes (stdout keeps the table)."""
    print(message, file=sys.stderr, flush=True)


def export_reference(ref: str, work: Path) -> Path:
    """The `src/` tree of commit `ref`, exported (not checked out: no worktree to clean)."""
    target = work / "reference"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="per segment")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="alternating segments per tree")
    parser.add_argument("--reference", metavar="GIT_REF", help="also measure this commit's code")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    add_charts_option(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    from sealserve.tools.certs import make_oneway

    work = Path(tempfile.mkdtemp(prefix="sealserve-kbs-bench-"))
    trees: list[Tree] = []
    try:
        sealserve("sim", "init", work / "sim")
        sealserve("kbs", "init", work / "kbs")
        tls = make_oneway("localhost", work / "tls", sans=["127.0.0.1"])
        (work / "policy.toml").write_text(
            f'tee = ["sim"]\n[[sim]]\nmr_enclave = ["{MR_ENCLAVE.hex()}"]\n'
            'mr_signer = "any"\nisv_prod_id = [0]\n'
        )
        sources = [("current", REPO / "src")]
        if args.reference:
            sources.insert(0, ("reference", export_reference(args.reference, work)))
        for label, src in sources:
            tree = Tree(label, src, work, tls)
            trees.append(tree)
            tree.provision(work)

        common = {"sim_dir": str(work / "sim"), "seconds": args.seconds}
        round_trips: dict[str, list[dict[str, Any]]] = {t.label: [] for t in trees}
        for segment in range(args.rounds):
            for tree in trees:
                progress(f"round trips, segment {segment + 1}/{args.rounds}, {tree.label} code")
                spec = {**common, "mode": "round-trips", "start_at": time.time() + 3}
                round_trips[tree.label] += tree.run_workers(spec, args.clients)
        progress("releases on one attested session")
        per_session = trees[-1].run_workers(
            {**common, "mode": "session", "start_at": time.time() + 3}, args.clients
        )
        progress("start-up attestations")
        startup: dict[str, dict[str, Any]] = {}
        resources = [*(f"sealserve/model-key/{m}" for m in MODELS), TLS_KEY]
        for tree in trees:
            before = tree.attestations()
            (result,) = tree.run_workers({**common, "mode": "startup", "resources": resources}, 1)
            startup[tree.label] = {
                "attestations": tree.attestations() - before,
                "seconds": result["seconds"],
            }
    finally:
        for tree in trees:
            tree.stop()
        shutil.rmtree(work, ignore_errors=True)

    total = args.seconds * args.rounds
    results: dict[str, Any] = {
        "benchmark": "kbs",
        "clients": args.clients,
        "round_trips": {k: summarise(v, total) for k, v in round_trips.items()},
        "releases_on_one_session": summarise(per_session, args.seconds),
        "startup": startup,
        "reference": args.reference,
        "target_per_second": TARGET_PER_SECOND,
    }
    current = results["round_trips"]["current"]
    reference = results["round_trips"].get("reference")
    ratio = current["per_second"] / reference["per_second"] if reference else None
    results["ratio_to_reference"] = ratio
    passed = (
        current["per_second"] >= TARGET_PER_SECOND
        and current["failures"] == 0
        and (ratio is None or ratio >= 0.95)  # same code path: equal within noise
        and startup["current"]["attestations"] == 1
    )
    results["passed"] = passed

    print(
        f"{args.clients} client processes; round trips in {args.rounds} alternating segments "
        f"of {args.seconds:g} s per code tree\n"
    )
    print("| measure | value | target | status |\n| --- | ---: | --- | --- |")
    print(
        f"| round trips / s ({current['count']:,} in {total:g} s, {current['failures']} failed)"
        f" | {current['per_second']:.0f} | ≥ {TARGET_PER_SECOND} | "
        f"{'pass' if current['per_second'] >= TARGET_PER_SECOND else '**FAIL**'} |"
    )
    if reference:
        print(
            f"| reference {args.reference}: round trips / s ({reference['count']:,}) | "
            f"{reference['per_second']:.0f} | — | — |"
        )
        print(
            f"| ratio to the reference | {ratio:.2f}× | ≥ 0.95× | "
            f"{'pass' if ratio and ratio >= 0.95 else '**FAIL**'} |"
        )
    latency = f"{current['p50_ms']:.1f} / {current['p99_ms']:.1f} ms"
    print(f"| round-trip latency p50 / p99 | {latency} | — | — |")
    session = results["releases_on_one_session"]
    print(
        f"| releases / s on one attested session ({session['count']:,}) | "
        f"{session['per_second']:.0f} | — | — |"
    )
    for label, item in startup.items():
        target = "1" if label == "current" else "—"
        status = (
            ("pass" if item["attestations"] == 1 else "**FAIL**") if label == "current" else "—"
        )
        print(
            f"| start-up, 3 model keys + TLS key ({label}): attestations at the KBS, time | "
            f"{item['attestations']}, {item['seconds'] * 1000:.0f} ms | {target} | {status} |"
        )
    write_results(results, args)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""Attest-and-release round trips per second against a local key broker.

A real `sealserve kbs serve` process (HTTPS, SQLite store with durable writes, collateral
loaded once: the cached case) serves one secret under a policy pinning the simulated TEE's
measurement. `--clients` client processes each run complete round trips for `--seconds`:
auth → challenge → a fresh simulated SGX quote bound to the nonce and an ephemeral key →
attest → token → resource → JWE decrypted. Reported: round trips per second and latency
p50/p99. Target: ≥ 100/s on a 2-core machine. Clients run in their own processes so that the
broker does not share a GIL with them (they share the machine's cores, as a server fleet
would not: the figure is a lower bound).

Usage: .venv/bin/python benchmarks/kbs.py [--seconds 20] [--clients 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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

TARGET_PER_SECOND = 100
RESOURCE = "sealserve/model-key/bench"
MR_ENCLAVE = bytes(range(32))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sealserve(*args: object) -> None:
    command = [str(Path(sys.executable).with_name("sealserve")), *map(str, args)]
    subprocess.run(command, check=True, capture_output=True, text=True)


def client(
    url: str, ca: str, sim_dir: str, seconds: float, start_at: float, results: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    from sealserve.attestation import SimAttester
    from sealserve.kbs.client import KbsKeyProvider

    provider = KbsKeyProvider(
        url,
        ca,
        SimAttester(sim_dir, mr_enclave=MR_ENCLAVE),
        resource_for_model=lambda name: RESOURCE,
    )
    provider.key_for("warm-up")
    time.sleep(max(0.0, start_at - time.time()))
    latencies, failures = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            provider.key_for("bench")
        except Exception:  # counted, not fatal
            failures += 1
            continue
        latencies.append(time.perf_counter() - started)
    results.put((latencies, failures))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()

    from sealserve.tools.certs import make_oneway

    work = Path(tempfile.mkdtemp(prefix="sealserve-kbs-bench-"))
    broker = None
    try:
        sealserve("sim", "init", work / "sim")
        sealserve("kbs", "init", work / "kbs")
        tls = make_oneway("localhost", work / "tls", sans=["127.0.0.1"])
        port = free_port()
        broker = subprocess.Popen(
            [
                str(a)
                for a in [
                    Path(sys.executable).with_name("sealserve"),
                    "kbs",
                    "serve",
                    "--db",
                    work / "kbs.db",
                    "--master-key",
                    work / "kbs" / "master.key",
                    "--signing-key",
                    work / "kbs" / "signing-key.pem",
                    "--admin-token-file",
                    work / "kbs" / "admin.token",
                    "--collateral",
                    work / "sim" / "collateral.json",
                    "--insecure-trust-sim-root",
                    work / "sim",
                    "--tls-cert",
                    tls.server_cert,
                    "--tls-key",
                    tls.server_key,
                    "--port",
                    port,
                ]
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert broker.stdout is not None and "https://" in broker.stdout.readline()
        url = f"https://127.0.0.1:{port}"
        admin = [
            "--url",
            url,
            "--ca",
            tls.server_cert,
            "--admin-token-file",
            work / "kbs" / "admin.token",
        ]
        secret = work / "secret"
        secret.write_bytes(os.urandom(16))
        sealserve("kbs", "secret", "put", RESOURCE, "--file", secret, *admin)
        policy = work / "policy.toml"
        policy.write_text(
            f'tee = ["sim"]\n[[sim]]\nmr_enclave = ["{MR_ENCLAVE.hex()}"]\n'
            'mr_signer = "any"\nisv_prod_id = [0]\n'
        )
        sealserve("kbs", "policy", "set", RESOURCE, policy, *admin)

        results: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        start_at = time.time() + 3
        workers = [
            multiprocessing.Process(
                target=client,
                args=(
                    url,
                    str(tls.server_cert),
                    str(work / "sim"),
                    args.seconds,
                    start_at,
                    results,
                ),
            )
            for _ in range(args.clients)
        ]
        for worker in workers:
            worker.start()
        latencies: list[float] = []
        failures = 0
        for _ in workers:
            part, failed = results.get(timeout=args.seconds + 120)
            latencies += part
            failures += failed
        for worker in workers:
            worker.join()
    finally:
        if broker is not None:
            broker.send_signal(signal.SIGTERM)
            broker.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    rate = len(latencies) / args.seconds
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0] * 99
    p50, p99 = quantiles[49] * 1000, quantiles[98] * 1000
    passed = rate >= TARGET_PER_SECOND and failures == 0
    print(
        f"{len(latencies)} attest-and-release round trips in {args.seconds:g} s, "
        f"{args.clients} client processes, {failures} failed\n"
    )
    print("| measure | value | target | status |\n| --- | ---: | --- | --- |")
    print(
        f"| round trips / s | {rate:.0f} | ≥ {TARGET_PER_SECOND} | "
        f"{'pass' if passed else '**FAIL**'} |"
    )
    print(f"| latency p50 | {p50:.1f} ms | — | — |")
    print(f"| latency p99 | {p99:.1f} ms | — | — |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "round_trips": len(latencies),
                    "seconds": args.seconds,
                    "clients": args.clients,
                    "failures": failures,
                    "per_second": rate,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "passed": passed,
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""The KBS's Prometheus metrics (`sealserve_kbs_*`), one `CollectorRegistry` per service.

What is counted, and why the labels are safe: label values come only from bounded sets —
TEE names the protocol accepts, results and decisions we name, resource paths that *exist in
the store* (a request for any other path is counted without its path), and certificate paths
`sealserve/tls-cert/NAME` the owner set a policy for (any other NAME, which the attested caller
chooses, is counted as `sealserve/tls-cert/(other)`), so an attacker cannot grow the number
of series. No metric carries a secret, a session id or a
measurement.

Series: attestations by TEE and result; releases by resource and decision; evidence
verification and policy evaluation latency (histograms); open sessions (by state); requests
refused for the anonymous budget or connection caps; unauthenticated failures by endpoint
(counted instead of audited); store errors and detected tampering by what was hit.

Thread-safe (prometheus_client's metric objects lock internally).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class KbsMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.attestations = Counter(
            "sealserve_kbs_attestations",
            "Attestations by TEE type and result (verified, rejected, error)",
            ["tee", "result"],
            registry=r,
        )
        self.releases = Counter(
            "sealserve_kbs_releases",
            "Resource release decisions by resource and decision (allowed, denied)",
            ["resource", "decision"],
            registry=r,
        )
        self.verification_seconds = Histogram(
            "sealserve_kbs_evidence_verification_seconds",
            "Time to verify TEE evidence (collateral lookup and dcap-qvl)",
            ["tee"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.policy_seconds = Histogram(
            "sealserve_kbs_policy_evaluation_seconds",
            "Time to load and evaluate a resource policy",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.sessions = Gauge(
            "sealserve_kbs_open_sessions",
            "Open sessions by state (pending: not attested yet)",
            ["state"],
            registry=r,
        )
        self.rate_limited = Counter(
            "sealserve_kbs_rate_limited_requests",
            "Requests or connections refused by the per-client limits",
            ["limit"],
            registry=r,
        )
        self.unauthenticated = Counter(
            "sealserve_kbs_unauthenticated_failures",
            "Refused requests without credentials (counted, not audited), by endpoint",
            ["endpoint"],
            registry=r,
        )
        self.store_errors = Counter(
            "sealserve_kbs_store_errors",
            "Store operations that failed, by operation",
            ["operation"],
            registry=r,
        )
        self.tampering = Counter(
            "sealserve_kbs_tampering_detected",
            "Stored records that failed authentication (policy, resource, audit)",
            ["what"],
            registry=r,
        )

    def track_sessions(self, pending: Callable[[], int], attested: Callable[[], int]) -> None:
        self.sessions.labels("pending").set_function(pending)
        self.sessions.labels("attested").set_function(attested)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

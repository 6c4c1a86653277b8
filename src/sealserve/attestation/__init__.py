"""Attestation: evidence, its verification, and the policy that turns claims into a decision.

The flow (DESIGN.md): an `Attester` inside the TEE binds 64 bytes of `report_data` into a
quote (`Evidence`); the verifier checks the quote with dcap-qvl against `Collateral`
(`verify_quote` → `Claims`); a `Policy` decides (`Policy.decide(claims, now)` → `Decision`).
The simulated TEE (`sim`) runs the same verifier under a local root of trust; its claims say
`tee="sim"`.

Imports only `sealserve.errors`, `sealserve.fsio`, `cryptography` and `dcap_qvl`: never
TensorFlow, gRPC or a web framework.
"""

from __future__ import annotations

from sealserve.attestation.attesters import CocoAttester, GramineAttester, TsmAttester
from sealserve.attestation.claims import TCB_STATUSES, TEE_TYPES, Claims
from sealserve.attestation.collateral import (
    Collateral,
    CollateralCache,
    CollateralKey,
    collateral_expiry,
    load_collateral,
)
from sealserve.attestation.errors import (
    AttestationDenied,
    AttestationFailed,
    AttestationUnavailable,
    AttestationUnsupported,
)
from sealserve.attestation.evidence import Attester, Evidence
from sealserve.attestation.measurement import installed_code_digest, measurement
from sealserve.attestation.policy import Decision, Policy, SgxIdentity, TdxIdentity
from sealserve.attestation.sim import SimAttester, SimTee, init_sim, load_sim
from sealserve.attestation.verify import verify_quote

__all__ = [
    "TCB_STATUSES",
    "TEE_TYPES",
    "AttestationDenied",
    "AttestationFailed",
    "AttestationUnavailable",
    "AttestationUnsupported",
    "Attester",
    "Claims",
    "CocoAttester",
    "Collateral",
    "CollateralCache",
    "CollateralKey",
    "Decision",
    "Evidence",
    "GramineAttester",
    "Policy",
    "SgxIdentity",
    "SimAttester",
    "SimTee",
    "TdxIdentity",
    "TsmAttester",
    "collateral_expiry",
    "init_sim",
    "installed_code_digest",
    "load_collateral",
    "load_sim",
    "measurement",
    "verify_quote",
]

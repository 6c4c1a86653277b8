"""Constants shared by the attestation tests."""

from __future__ import annotations

from tests.testvectors import TESTVECTORS

#: The real DCAP quotes and collateral (dcap-qvl's samples); see its README for the windows.
DCAP = TESTVECTORS / "dcap"

#: The time the simulated TEE is created at (any fixed time works: every window is relative).
SIM_NOW = 1_800_000_000

"""The key broker (KBS): attested release of model keys (Trustee KBS protocol v0.4.0).

- `protocol`: messages, the report_data binding, nonces, JWKs (pure);
- `store`: secrets encrypted at rest, per-resource policies, the hash-chained audit log;
- `service`: the flow (sessions, verification, token, policy, JWE) and admin operations;
- `http`: the aiohttp adapter (HTTPS by default);
- `client`: `KbsKeyProvider`, what a server in a TEE uses to get its keys;
- `cli`: the `sealserve kbs ...` command functions.

Imports `attestation`, never `serving` (the client implements `serving.keys.KeyProvider`
structurally). Nothing is imported eagerly here: `http` pulls in aiohttp.
"""

from __future__ import annotations

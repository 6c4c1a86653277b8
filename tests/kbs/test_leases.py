"""Key leases on the wire: the policy's key_lease_seconds rides in the resource JWE's
authenticated protected header, and only where the policy sets one."""

from __future__ import annotations

import json

import pytest
from joserfc.jwk import ECKey

from sealserve.attestation import Policy
from sealserve.errors import InvalidArgument
from sealserve.kbs.client import Lease
from sealserve.kbs.jwe import (
    LEASE_HEADER,
    b64url,
    b64url_decode,
    open_resource_with_header,
    seal_resource,
)

IDENTITY = '[[sim]]\nmr_enclave = ["' + "ab" * 32 + '"]\nmr_signer = "any"\nisv_prod_id = "any"\n'


def policy(text: str) -> Policy:
    return Policy.from_toml('tee = ["sim"]\n' + text + IDENTITY)


def test_a_lease_is_authenticated_with_the_key() -> None:
    key = ECKey.generate_key("P-256")
    header = {LEASE_HEADER: {"seconds": 30, "keep_when_unreachable": True}}
    sealed = seal_resource(b"wrap key", key.as_dict(private=False), header)

    secret, protected = open_resource_with_header(json.dumps(sealed), key)
    assert secret == b"wrap key"
    assert Lease.from_header(protected.get(LEASE_HEADER)) == Lease(30, True)

    # the host cannot shorten or lengthen it: the header is the ciphertext's AAD
    header_json = json.loads(b64url_decode(sealed["protected"], "protected"))
    header_json[LEASE_HEADER]["seconds"] = 3_000_000
    forged = dict(sealed, protected=b64url(json.dumps(header_json).encode()))
    with pytest.raises(ValueError):
        open_resource_with_header(json.dumps(forged), key)


def test_no_lease_unless_the_policy_sets_one() -> None:
    key = ECKey.generate_key("P-256")
    _, protected = open_resource_with_header(
        json.dumps(seal_resource(b"k", key.as_dict(private=False))), key
    )
    assert LEASE_HEADER not in protected
    assert policy("").key_lease_seconds == 0
    leased = policy("key_lease_seconds = 600\nkeep_key_when_kbs_unreachable = true\n")
    assert (leased.key_lease_seconds, leased.keep_key_when_kbs_unreachable) == (600, True)
    assert Policy.from_dict(leased.to_dict()) == leased


@pytest.mark.parametrize(
    "setting",
    [
        "key_lease_seconds = -1",
        "key_lease_seconds = 1",
        "key_lease_seconds = true",
        "key_lease_seconds = 99999999999",
        'keep_key_when_kbs_unreachable = "yes"',
    ],
)
def test_bad_lease_settings_do_not_load(setting: str) -> None:
    with pytest.raises(InvalidArgument):
        policy(setting + "\n")

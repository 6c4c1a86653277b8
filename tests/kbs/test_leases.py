"""Key leases on the wire: the policy's key_lease_seconds rides in the resource JWE's
authenticated protected header, and only where the policy sets one; a renewal the KBS refuses
ends the model with one clear sentence."""

from __future__ import annotations

import json

import pytest
from joserfc.jwk import ECKey

from sealserve.attestation import Policy
from sealserve.attestation.sim import SimAttester
from sealserve.errors import InvalidArgument, NotFound
from sealserve.kbs.client import HeldLease, KbsDenied, KbsKeyProvider, Lease, LeaseKeeper
from sealserve.kbs.jwe import (
    LEASE_HEADER,
    b64url,
    b64url_decode,
    open_resource_with_header,
    seal_resource,
)
from tests.kbs.conftest import POLICY, RESOURCE, Kbs

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


def refused_renewal(kbs: Kbs, attester: SimAttester) -> str:
    """The END reason the lease keeper gives model "mnist" once the KBS refuses its key."""
    provider = KbsKeyProvider(kbs.url, kbs.ca, attester, attempts=1)
    ended: list[tuple[str, str]] = []
    keeper = LeaseKeeper(provider, lambda model, reason: ended.append((model, reason)))
    keeper._renew(
        "mnist", HeldLease(expires_at=0.0, renew_at=0.0, keep_when_unreachable=False), 0.0
    )
    assert [model for model, _ in ended] == ["mnist"]
    return ended[0][1]


def test_a_revoked_key_ends_its_model_with_one_clear_reason(
    kbs: Kbs, attester: SimAttester
) -> None:
    kbs.service.admin_delete_resource(kbs.admin_token, RESOURCE, revoke=True)
    reason = refused_renewal(kbs, attester)
    assert (
        reason == f"key revoked: the key broker no longer releases {RESOURCE} (resource not found)"
    )


def test_a_policy_that_no_longer_admits_the_server_ends_its_model_with_one_clear_reason(
    kbs: Kbs, attester: SimAttester
) -> None:
    kbs.store.set_policy(RESOURCE, POLICY.replace("min_isv_svn = 2", "min_isv_svn = 9"), "toml")
    reason = refused_renewal(kbs, attester)
    assert reason.startswith(f"key revoked: the key broker no longer releases {RESOURCE} (")
    assert reason.count(RESOURCE) == 1 and reason.count("denies") == 1


def test_a_refused_key_names_its_resource_once(kbs: Kbs, attester: SimAttester) -> None:
    """The load failure of a model whose key the KBS refuses: the KBS's words name the
    resource already, the client's prefix does not repeat it."""
    provider = KbsKeyProvider(kbs.url, kbs.ca, attester, attempts=1)
    with pytest.raises(NotFound) as missing:
        provider.key_for("absent")
    assert str(missing.value).count("sealserve/model-key/absent") == 1
    kbs.store.set_policy(RESOURCE, POLICY.replace("min_isv_svn = 2", "min_isv_svn = 9"), "toml")
    with pytest.raises(KbsDenied, match="denied this TEE") as denied:
        provider.key_for("mnist")
    assert str(denied.value).count(RESOURCE) == 1

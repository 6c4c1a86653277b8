"""Which connections a set of Kubernetes NetworkPolicies allows (networking.k8s.io/v1
semantics): a connection from A to B on a port is allowed iff A's egress allows it (no policy
selecting A for Egress, or one of those policies has a rule matching B and the port) and B's
ingress allows it (the same for Ingress). Peers: podSelector (in the policy's namespace unless
a namespaceSelector is given), namespaceSelector (by the namespace's labels, including the
automatic kubernetes.io/metadata.name), ipBlock (external addresses only here: pods are never
matched by an ipBlock in these checks). matchLabels only; matchExpressions are refused so that
nothing is silently misread. Pure functions.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace and labels) or an external address (ip)."""

    name: str
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    ip: str | None = None


def _matches_labels(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert "matchExpressions" not in selector, "matchExpressions: not supported by this check"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _namespace_labels(namespace: str, namespaces: dict[str, dict[str, str]]) -> dict[str, str]:
    return {**namespaces.get(namespace, {}), "kubernetes.io/metadata.name": namespace}


def _peer_matches(
    peer: dict[str, Any], policy_ns: str, other: Endpoint, namespaces: dict[str, dict[str, str]]
) -> bool:
    if "ipBlock" in peer:
        if other.ip is None:
            return False
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        inside = address in ipaddress.ip_network(block["cidr"])
        excluded = any(address in ipaddress.ip_network(e) for e in block.get("except", []))
        return inside and not excluded
    if other.namespace is None:  # an external address: only ipBlock peers match it
        return False
    if "namespaceSelector" in peer:
        ns_ok = _matches_labels(
            peer["namespaceSelector"], _namespace_labels(other.namespace, namespaces)
        )
    else:
        ns_ok = other.namespace == policy_ns
    pod_ok = _matches_labels(peer.get("podSelector") or {}, other.labels)
    return ns_ok and pod_ok


def _port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    return any(
        p.get("port") in (None, port) and p.get("protocol", "TCP") == protocol for p in ports
    )


def _direction_allows(
    policies: list[dict[str, Any]],
    subject: Endpoint,
    other: Endpoint,
    port: int,
    protocol: str,
    direction: str,
    namespaces: dict[str, dict[str, str]],
) -> bool:
    if subject.namespace is None:  # external endpoints have no policies
        return True
    kind = "Ingress" if direction == "ingress" else "Egress"
    peers_key = "from" if direction == "ingress" else "to"
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == subject.namespace
        and _matches_labels(p["spec"]["podSelector"], subject.labels)
        and kind in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(direction) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(
                _peer_matches(peer, policy["metadata"]["namespace"], other, namespaces)
                for peer in peers
            )
            if peer_ok and _port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(
    policies: list[dict[str, Any]],
    source: Endpoint,
    destination: Endpoint,
    port: int,
    protocol: str = "TCP",
    namespaces: dict[str, dict[str, str]] | None = None,
) -> bool:
    namespaces = namespaces or {}
    return _direction_allows(
        policies, source, destination, port, protocol, "egress", namespaces
    ) and _direction_allows(policies, destination, source, port, protocol, "ingress", namespaces)

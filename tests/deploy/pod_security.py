"""The Kubernetes Pod Security Standards (baseline and restricted, as of v1.30), checked on pod
specs: what the Pod Security admission controller would refuse in a namespace enforcing that
level. Written from the standard's table of controls
(https://kubernetes.io/docs/concepts/security/pod-security-standards/), one function per
control; `violations(pod_spec, level)` lists every failed control by name, so a test shows all
at once. Pure functions; no cluster needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

LEVELS = ("privileged", "baseline", "restricted")

# baseline: the capabilities a container may add
_BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
# restricted: the volume types a pod may use
_RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Pod, a workload with a pod template, or a CronJob."""
    kind = workload["kind"]
    if kind == "Pod":
        return workload["spec"]
    if kind == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def _containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(key, [])


def _context(container: dict[str, Any]) -> dict[str, Any]:
    return container.get("securityContext") or {}


def _baseline(pod: dict[str, Any]) -> list[str]:
    out = []
    psc = pod.get("securityContext") or {}
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("HostProcess")
    for c in _containers(pod):
        if (_context(c).get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"HostProcess ({c['name']})")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"Host Namespaces ({field})")
    for c in _containers(pod):
        ctx = _context(c)
        if ctx.get("privileged"):
            out.append(f"Privileged Containers ({c['name']})")
        added = set((ctx.get("capabilities") or {}).get("add") or [])
        if added - _BASELINE_CAPABILITIES:
            out.append(f"Capabilities ({c['name']}: {sorted(added - _BASELINE_CAPABILITIES)})")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                out.append(f"Host Ports ({c['name']})")
        if ctx.get("procMount") not in (None, "Default"):
            out.append(f"/proc Mount Type ({c['name']})")
        if (ctx.get("appArmorProfile") or {}).get("type") not in (
            None,
            "RuntimeDefault",
            "Localhost",
        ):
            out.append(f"AppArmor ({c['name']})")
        if _bad_selinux(ctx.get("seLinuxOptions") or {}):
            out.append(f"SELinux ({c['name']})")
        if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"Seccomp ({c['name']})")
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            out.append(f"HostPath Volumes ({volume['name']})")
    if (psc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        out.append("AppArmor (pod)")
    if _bad_selinux(psc.get("seLinuxOptions") or {}):
        out.append("SELinux (pod)")
    if (psc.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.append("Seccomp (pod)")
    for sysctl in psc.get("sysctls", []):
        if sysctl["name"] not in _SAFE_SYSCTLS:
            out.append(f"Sysctls ({sysctl['name']})")
    return out


def _bad_selinux(options: dict[str, Any]) -> bool:
    allowed_types = (None, "", "container_t", "container_init_t", "container_kvm_t",
                     "container_engine_t")  # fmt: skip
    return options.get("type") not in allowed_types or bool(
        options.get("user") or options.get("role")
    )


def _restricted(pod: dict[str, Any]) -> list[str]:
    out = []
    psc = pod.get("securityContext") or {}
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            out.append(f"Volume Types ({volume['name']}: {sorted(kinds)})")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    for c in _containers(pod):
        ctx = _context(c)
        name = c["name"]
        if ctx.get("allowPrivilegeEscalation") is not False:
            out.append(f"Privilege Escalation ({name})")
        if not (
            ctx.get("runAsNonRoot") is True
            or (psc.get("runAsNonRoot") is True and ctx.get("runAsNonRoot") is not False)
        ):
            out.append(f"Running as Non-root ({name})")
        if ctx.get("runAsUser") == 0 or (
            ctx.get("runAsUser") is None and psc.get("runAsUser") == 0
        ):
            out.append(f"Running as Non-root user ({name})")
        seccomp = (ctx.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"Seccomp ({name})")
        capabilities = ctx.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            out.append(f"Capabilities drop ALL ({name})")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"Capabilities add ({name})")
    return out


def violations(pod: dict[str, Any], level: str) -> list[str]:
    """The controls of `level` this pod spec fails (empty: admitted)."""
    if level not in LEVELS:
        raise ValueError(f"unknown Pod Security level {level!r}")
    if level == "privileged":
        return []
    found = _baseline(pod)
    if level == "restricted":
        found += _restricted(pod)
    return found

# Kata agent policy for the sealserve Confidential Containers pod (deploy/kubernetes/tdx).
#
# It travels in the pod's init-data (initdata.toml), whose SHA-384 the TD carries as
# MRCONFIGID, and the KBS policy pins that MRCONFIGID: a pod whose agent would accept anything
# else gets no model key. The host (kubelet, the Kata shim) asks the agent inside the TD for
# everything; this policy is what the agent lets it do:
# - no exec into the containers (`kubectl exec`), no writing to their stdin, and no new policy;
# - only the pinned server image (by digest, SERVER_IMAGE below), started with the pinned
#   command line, environment and mounts; the sandbox's pause container as Kata starts it;
# - reading the containers' output stays allowed: `kubectl logs` shows sealserve's log, which
#   holds no key or plaintext by design.
# Kata's genpolicy tool generates a stricter policy from the pod spec (every OCI field, the
# storages, the image layers); for production, generate it from deploy/kubernetes/tdx/server.yaml
# and put it in initdata.toml in place of this one (docs/deployment.md).
package agent_policy

import future.keywords.every
import future.keywords.if
import future.keywords.in

default AddARPNeighborsRequest := true
default AddSwapRequest := false
default CloseStdinRequest := true
default CopyFileRequest := true
default CreateContainerRequest := false
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default ExecProcessRequest := false
default GetMetricsRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default MemHotplugByProbeRequest := true
default OnlineCPUMemRequest := true
default PauseContainerRequest := false
default PullImageRequest := true
default ReadStreamRequest := true
default RemoveContainerRequest := true
default RemoveStaleVirtiofsShareMountsRequest := true
default ReseedRandomDevRequest := true
default ResumeContainerRequest := false
default SetGuestDateTimeRequest := true
default SetPolicyRequest := false
default SignalProcessRequest := true
default StartContainerRequest := true
default StartTracingRequest := false
default StatsContainerRequest := true
default StopTracingRequest := false
default TtyWinResizeRequest := true
default UpdateContainerRequest := true
default UpdateEphemeralMountsRequest := false
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default WaitProcessRequest := true
default WriteStreamRequest := false

# the server image, by digest: `initdata.py build --image REF@sha256:...` sets it
SERVER_IMAGE := "registry.example.com/sealserve/sealserve-server-coco@sha256:0000000000000000000000000000000000000000000000000000000000000000"

# the command line: the coco image's entrypoint (deploy/docker/server.Dockerfile, target
# coco; its configuration files are inside the image) and the pod's args
# (deploy/kubernetes/tdx/server.yaml): the key broker, the model key that decrypts ssl.cfg (its
# client verification: the CA of the requesters' certificates), and the name the key broker
# certifies the server's TLS key for (made in the TD's memory; ssl.cfg's own key and
# certificate are not served)
SERVER_ARGS := [
  "/opt/sealserve/venv/bin/sealserve",
  "serve",
  "--attestation=coco",
  "--key_broker_ca=/etc/sealserve/kbs-ca.pem",
  "--model_config_file=/etc/sealserve/models.config",
  "--ssl_config_file=/etc/sealserve/ssl.cfg",
  "--port=8500",
  "--rest_api_port=8501",
  "--key_broker=https://sealserve-kbs.sealserve.svc:8080",
  "--ssl_config_key=half_plus_two",
  "--key_broker_tls_name=sealserve.sealserve.svc",
]

# environment variables the server may get, and their values where they matter: nothing that
# changes what Python or the dynamic linker loads (no LD_*, PYTHONPATH, PYTHONHOME, ...)
SERVER_ENV_FIXED := {
  "PATH": "/opt/sealserve/venv/bin:/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  "PYTHONNOUSERSITE": "1",
  "PYTHONDONTWRITEBYTECODE": "1",
  "PYTHONUNBUFFERED": "1",
}
SERVER_ENV_FREE := {"HOSTNAME", "HOME", "LANG", "GPG_KEY", "PYTHON_VERSION", "PYTHON_SHA256", "SEALSERVE_HEALTH_URL", "TERM"}

# where the server may have mounts: the encrypted models (ciphertext, authenticated by
# sealserve), scratch space, and what every container gets; nothing over its code or config
SERVER_MOUNTS := {
  "/models", "/tmp", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/termination-log",
  "/proc", "/dev", "/dev/pts", "/dev/mqueue", "/dev/shm", "/sys", "/sys/fs/cgroup",
}

CreateContainerRequest if {
  input.OCI.Annotations["io.kubernetes.cri.container-type"] == "sandbox"
  input.OCI.Process.Args == ["/pause"]
}

CreateContainerRequest if {
  input.OCI.Annotations["io.kubernetes.cri.container-type"] == "container"
  input.OCI.Annotations["io.kubernetes.cri.image-name"] == SERVER_IMAGE
  input.OCI.Process.Args == SERVER_ARGS
  input.OCI.Process.Terminal == false
  every entry in input.OCI.Process.Env {
    allowed_env(entry)
  }
  every name, value in SERVER_ENV_FIXED {
    concat("=", [name, value]) in input.OCI.Process.Env
  }
  every mount in input.OCI.Mounts {
    mount.destination in SERVER_MOUNTS
  }
}

allowed_env(entry) if {
  parts := split(entry, "=")
  SERVER_ENV_FIXED[parts[0]] == substring(entry, count(parts[0]) + 1, -1)
}

allowed_env(entry) if {
  parts := split(entry, "=")
  parts[0] in SERVER_ENV_FREE
}

#!/bin/sh
# Build an image of deploy/docker/*.Dockerfile without any container registry: Debian's
# debootstrap makes the base (bookworm with Python 3.11 from Debian), podman (buildah) builds
# on it. Packages still come from Debian's archive and PyPI (hash-locked). As root:
#
#   apt-get install podman buildah debootstrap runc
#   deploy/docker/build-with-podman.sh [server|kbs|client] [TAG]    (TARGET=coco: another stage)
#
# The base differs from the reference image (python:3.11-slim-bookworm by digest: python.org's
# build of 3.11, Debian's 3.11 here), so an sgx image built this way has another MRENCLAVE than
# the reference build; both are reproducible from their own inputs.
#
# Hosts with cgroups in hybrid mode (crun refuses them) need runc and the cgroupfs manager;
# container limits must not exceed the caller's (PODMAN_RUN_OPTIONS below); behind a proxy
# that re-signs TLS, put its CA in the base with BASE_CA_BUNDLE=/path/to/ca-bundle.crt.
set -eu

IMAGE=${1:-server}
TAG=${2:-localhost/sealserve-$IMAGE:debootstrap}
BASE=${BASE:-localhost/debian-bookworm-debootstrap:latest}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PODMAN=${PODMAN:-podman --runtime runc --cgroup-manager cgroupfs}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! $PODMAN image exists "$BASE"; then
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates "$SUITE" "$work/rootfs" "$MIRROR"
    change=""
    if [ -n "${BASE_CA_BUNDLE:-}" ]; then
        cp "$BASE_CA_BUNDLE" "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
        change="ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt"
    fi
    tar -C "$work/rootfs" -c . | $PODMAN import ${change:+--change "$change"} - "$BASE"
fi

$PODMAN build --isolation chroot -f "$ROOT/deploy/docker/$IMAGE.Dockerfile" --target "${TARGET:-$IMAGE}" \
    --build-arg PYTHON_IMAGE="$BASE" -t "$TAG" "$ROOT"
echo "built $TAG on $BASE"
echo "run: $PODMAN run --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 --network=host $TAG ..."

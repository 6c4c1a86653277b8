# syntax=docker/dockerfile:1.7
# The model server, `sealserve serve` (TensorFlow Serving's flags), as a non-root user. The image
# holds no key material: models stay encrypted on a volume, their keys come from the key broker
# after attestation (or from --model_key files mounted at run time).
#
#   docker build -f deploy/docker/server.Dockerfile -t sealserve-server .
#
# Target `sgx`: the same server inside a Gramine SGX enclave (deploy/gramine). Its configuration
# (the key broker, ports, models.config, the encrypted ssl.cfg, the KBS's CA) is measured into
# MRENCLAVE when the image is built, so it comes in as build inputs, and the enclave signing key
# as a build secret that never lands in a layer:
#
#   docker build -f deploy/docker/server.Dockerfile --target sgx -t sealserve-server-sgx \
#       --build-context sgx-config=DIR_WITH_models.config_ssl.cfg_kbs-ca.pem \
#       --secret id=enclave-key,src=enclave-key.pem \
#       --build-arg KEY_BROKER=https://sealserve-kbs.sealserve.svc:8080 \
#       --build-arg SSL_CONFIG_KEY=half_plus_two \
#       --build-arg KEY_BROKER_TLS_NAME=sealserve.sealserve-sgx.svc .
#
# Reproducible: everything that ends up measured in MRENCLAVE is pinned, so that the model
# owner can rebuild the enclave from this source and get the same MRENCLAVE
# (`make -C deploy/gramine reproduce-mrenclave`, which builds target `sgx-measurement`):
# - the base image by digest (PYTHON_IMAGE);
# - the Python packages by version and hash (deploy/docker/requirements.lock, installed with
#   --require-hashes; regenerate with `make -C deploy/docker lock`), byte code compiled with
#   SOURCE_DATE_EPOCH so that .pyc files hold source hashes, not install times;
# - the Debian packages by a snapshot of the archive (DEBIAN_SNAPSHOT) plus explicit versions
#   of what is named (Gramine GRAMINE_VERSION, whose keyring may be pinned by its SHA-256);
# - the build arguments and the sgx-config files, which the owner has.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    SOURCE_DATE_EPOCH=0
WORKDIR /src
COPY deploy/docker/requirements.lock ./
RUN python -m venv /opt/sealserve/venv \
 && /opt/sealserve/venv/bin/pip install --no-deps --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY src ./src
# sealserve itself: its dependencies and build backend all came from the lock file above
RUN /opt/sealserve/venv/bin/pip install --no-deps --no-build-isolation --no-index .

FROM ${PYTHON_IMAGE} AS server
RUN groupadd --system --gid 10001 sealserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin sealserve
COPY --from=build /opt/sealserve/venv /opt/sealserve/venv
COPY deploy/docker/healthcheck.py /opt/sealserve/healthcheck.py
ENV PATH=/opt/sealserve/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEALSERVE_HEALTH_URL=https://127.0.0.1:8501/v1/health/ready
WORKDIR /opt/sealserve
USER 10001:10001
# gRPC, REST (TLS on both when --ssl_config_file is given)
EXPOSE 8500 8501
# Readiness of every model over REST; see healthcheck.py for TLS (SEALSERVE_HEALTH_CA, and a
# client certificate under mutual TLS). Start-up loads and decrypts every model first.
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "/opt/sealserve/healthcheck.py"]
ENTRYPOINT ["sealserve", "serve"]
CMD ["--help"]

# --- Confidential Containers (TDX): the configuration in the image ------------------------
# The pod's TD is attested by the Attestation Agent (--attestation=coco); the Kata agent
# policy in its init-data pins this image's digest and the whole command line (this
# entrypoint and the pod's args: --key_broker, --ssl_config_key, --key_broker_tls_name), see
# deploy/coco.
#   docker build -f deploy/docker/server.Dockerfile --target coco -t sealserve-server-coco \
#       --build-context coco-config=DIR_WITH_models.config_ssl.cfg_kbs-ca.pem .
FROM server AS coco
# (coco-config is a named build context, `--build-context coco-config=DIR`, not a stage)
# hadolint ignore=DL3022
COPY --from=coco-config models.config ssl.cfg kbs-ca.pem /etc/sealserve/
# user site-packages never (a venv ignores them already; the agent policy checks it is set)
ENV PYTHONNOUSERSITE=1
ENTRYPOINT ["/opt/sealserve/venv/bin/sealserve", "serve", "--attestation=coco", \
            "--key_broker_ca=/etc/sealserve/kbs-ca.pem", \
            "--model_config_file=/etc/sealserve/models.config", \
            "--ssl_config_file=/etc/sealserve/ssl.cfg", "--port=8500", "--rest_api_port=8501"]
CMD []

# --- SGX: Gramine, and the manifest rendered from the measured configuration --------------
FROM server AS sgx-unsigned
# root to install Gramine; every stage that is run as an image goes back to user 10001
# hadolint ignore=DL3002
USER 0:0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian as it was on this date (snapshot.debian.org): Gramine's dependencies land in
# /usr/lib/x86_64-linux-gnu, which the enclave trusts, so their versions are measured too.
ARG DEBIAN_SNAPSHOT=20251101T000000Z
# Gramine from its own repository (its Debian 12 installation page for 1.8, where the keyring
# is named gramine-keyring-bookworm.gpg; before 1.8 it was gramine-keyring.gpg). Only Gramine's
# repository: Intel's (in that page for the DCAP libraries of RA-TLS) is not used, quotes come
# from the host's aesmd (mount /var/run/aesmd), and no Intel library runs in here.
ARG GRAMINE_VERSION=1.8
ARG GRAMINE_KEYRING_SHA256=
ARG MAKE_VERSION=4.3-4.1
RUN rm -f /etc/apt/sources.list.d/debian.sources \
 && printf '%s\n' \
        "deb [check-valid-until=no] http://snapshot.debian.org/archive/debian/${DEBIAN_SNAPSHOT} bookworm main" \
        "deb [check-valid-until=no] http://snapshot.debian.org/archive/debian/${DEBIAN_SNAPSHOT} bookworm-updates main" \
        "deb [check-valid-until=no] http://snapshot.debian.org/archive/debian-security/${DEBIAN_SNAPSHOT} bookworm-security main" \
        > /etc/apt/sources.list \
 && mkdir -p /etc/apt/keyrings \
 && python -c 'import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:])' \
        https://packages.gramineproject.io/gramine-keyring-bookworm.gpg \
        /etc/apt/keyrings/gramine-keyring-bookworm.gpg \
 && if [ -n "${GRAMINE_KEYRING_SHA256}" ]; then \
        echo "${GRAMINE_KEYRING_SHA256}  /etc/apt/keyrings/gramine-keyring-bookworm.gpg" | sha256sum -c -; \
    fi \
 && echo "deb [arch=amd64 signed-by=/etc/apt/keyrings/gramine-keyring-bookworm.gpg] https://packages.gramineproject.io/ bookworm main" \
        > /etc/apt/sources.list.d/gramine.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends "gramine=${GRAMINE_VERSION}" "make=${MAKE_VERSION}" \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/gramine/ /opt/sealserve/gramine/
# Public or encrypted files only: the model config, ssl.cfg encrypted under a model key
# (`sealserve certs ... --encrypt-ssl-cfg`; with KEY_BROKER_TLS_NAME it only sets client
# verification, the server's certificate comes from the key broker), the CA certificate of the
# key broker.
# (sgx-config is a named build context, `--build-context sgx-config=DIR`, not a stage)
# hadolint ignore=DL3022
COPY --from=sgx-config models.config ssl.cfg kbs-ca.pem /etc/sealserve/
ARG KEY_BROKER
ARG SSL_CONFIG_KEY
ARG KEY_BROKER_TLS_NAME
ARG ENCLAVE_SIZE=8G
ARG MAX_THREADS=256
ARG EDMM=0
ARG ISV_PROD_ID=1
ARG ISV_SVN=1
ENV GRAMINE_MAKE_ARGS="PYTHON=/opt/sealserve/venv/bin/python CONFIG_DIR=/etc/sealserve MODELS_DIR=/models GRAMINE_VERSION=${GRAMINE_VERSION}"
RUN mkdir -p /models \
 && make -C /opt/sealserve/gramine sealserve.manifest ${GRAMINE_MAKE_ARGS} \
        KEY_BROKER="$KEY_BROKER" SSL_CONFIG_KEY="$SSL_CONFIG_KEY" \
        KEY_BROKER_TLS_NAME="$KEY_BROKER_TLS_NAME" \
        ENCLAVE_SIZE="$ENCLAVE_SIZE" MAX_THREADS="$MAX_THREADS" EDMM="$EDMM" \
        ISV_PROD_ID="$ISV_PROD_ID" ISV_SVN="$ISV_SVN"

# The owner's rebuild: signed with a throw-away key (MRENCLAVE does not depend on the signer),
# only sigstruct.json comes out (`--output type=local,dest=DIR`).
FROM sgx-unsigned AS sgx-measurement-build
RUN gramine-sgx-gen-private-key /tmp/throw-away-key.pem \
 && make -C /opt/sealserve/gramine sigstruct.json ${GRAMINE_MAKE_ARGS} \
        SGX_SIGNER_KEY=/tmp/throw-away-key.pem \
 && rm /tmp/throw-away-key.pem

FROM scratch AS sgx-measurement
COPY --from=sgx-measurement-build /opt/sealserve/gramine/sigstruct.json /sigstruct.json

# The enclave image: signed with the builder's key, a build secret that never lands in a layer.
FROM sgx-unsigned AS sgx
RUN --mount=type=secret,id=enclave-key,required=true \
    make -C /opt/sealserve/gramine sigstruct.json ${GRAMINE_MAKE_ARGS} \
        SGX_SIGNER_KEY=/run/secrets/enclave-key
USER 10001:10001
WORKDIR /opt/sealserve/gramine
# The command line is fixed in the signed manifest; nothing given to `docker run` reaches it.
# /dev/sgx_enclave is root:sgx 0660 where the host follows Gramine's udev rule: run with the
# host's sgx group (`docker run --group-add "$(stat -c %g /dev/sgx_enclave)"`, Kubernetes
# supplementalGroups).
ENTRYPOINT ["gramine-sgx", "sealserve"]
CMD []

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
#       --build-arg SSL_CONFIG_KEY=half_plus_two .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/sealserve/venv \
 && /opt/sealserve/venv/bin/pip install .

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

FROM server AS sgx
USER root
# Gramine from its own Debian repository (Debian 12 instructions of Gramine's installation page).
# Quotes come from the host's aesmd (mount /var/run/aesmd): no Intel library runs in here.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg make \
 && curl -fsSLo /usr/share/keyrings/gramine-keyring.gpg \
        https://packages.gramineproject.io/gramine-keyring.gpg \
 && echo "deb [arch=amd64 signed-by=/usr/share/keyrings/gramine-keyring.gpg] https://packages.gramineproject.io/ bookworm main" \
        > /etc/apt/sources.list.d/gramine.list \
 && curl -fsSLo /usr/share/keyrings/intel-sgx-deb.asc \
        https://download.01.org/intel-sgx/sgx_repo/ubuntu/intel-sgx-deb.key \
 && echo "deb [arch=amd64 signed-by=/usr/share/keyrings/intel-sgx-deb.asc] https://download.01.org/intel-sgx/sgx_repo/ubuntu jammy main" \
        > /etc/apt/sources.list.d/intel-sgx.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends gramine \
 && apt-get purge -y curl gnupg \
 && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/gramine/ /opt/sealserve/gramine/
# Public or encrypted files only: the model config, ssl.cfg encrypted under a model key
# (`sealserve certs ... --encrypt-ssl-cfg`), the CA certificate of the key broker.
COPY --from=sgx-config models.config ssl.cfg kbs-ca.pem /etc/sealserve/
ARG KEY_BROKER
ARG SSL_CONFIG_KEY
ARG ENCLAVE_SIZE=8G
ARG MAX_THREADS=256
ARG EDMM=0
ARG ISV_SVN=1
RUN --mount=type=secret,id=enclave-key,required=true \
    mkdir -p /models \
 && make -C /opt/sealserve/gramine all policy.toml \
        PYTHON=/opt/sealserve/venv/bin/python CONFIG_DIR=/etc/sealserve MODELS_DIR=/models \
        KEY_BROKER="$KEY_BROKER" SSL_CONFIG_KEY="$SSL_CONFIG_KEY" \
        ENCLAVE_SIZE="$ENCLAVE_SIZE" MAX_THREADS="$MAX_THREADS" EDMM="$EDMM" ISV_SVN="$ISV_SVN" \
        SGX_SIGNER_KEY=/run/secrets/enclave-key
USER 10001:10001
WORKDIR /opt/sealserve/gramine
# The command line is fixed in the signed manifest; nothing given to `docker run` reaches it.
ENTRYPOINT ["gramine-sgx", "sealserve"]
CMD []

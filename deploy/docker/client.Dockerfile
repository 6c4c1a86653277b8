# syntax=docker/dockerfile:1.7
# The requester's benchmark client, `sealserve client` (the seed's resnet_client_grpc flags), as
# a non-root user. Certificates are mounted at run time. `--entrypoint sealserve` gives the other
# requester tools (`sealserve predict ...`).
#
#   docker build -f deploy/docker/client.Dockerfile -t sealserve-client .

# pinned by digest, and the Python packages by hash: see server.Dockerfile
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
RUN /opt/sealserve/venv/bin/pip install --no-deps --no-build-isolation --no-index .

FROM ${PYTHON_IMAGE} AS client
RUN groupadd --system --gid 10001 sealserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin sealserve
COPY --from=build /opt/sealserve/venv /opt/sealserve/venv
ENV PATH=/opt/sealserve/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/sealserve
USER 10001:10001
# a one-shot command: nothing to probe
HEALTHCHECK NONE
ENTRYPOINT ["sealserve", "client"]
CMD ["--help"]

# syntax=docker/dockerfile:1.7
# The key broker, `sealserve kbs serve`, as a non-root user, with the PostgreSQL store. Its keys
# (master key, token signing key, admin token) and TLS key are mounted at run time, never built
# in: create them with `sealserve kbs init` and `sealserve certs oneway`.
#
#   docker build -f deploy/docker/kbs.Dockerfile -t sealserve-kbs .

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

FROM ${PYTHON_IMAGE} AS kbs
RUN groupadd --system --gid 10001 sealserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin sealserve
COPY --from=build /opt/sealserve/venv /opt/sealserve/venv
COPY deploy/docker/healthcheck.py /opt/sealserve/healthcheck.py
ENV PATH=/opt/sealserve/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEALSERVE_HEALTH_URL=https://127.0.0.1:8080/healthz
WORKDIR /opt/sealserve
USER 10001:10001
# HTTPS (the KBS's default port)
EXPOSE 8080
# Healthy while /healthz answers 200: the KBS serves and its store answers queries.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/opt/sealserve/healthcheck.py"]
# Listen on every interface of the container (the KBS's own default is 127.0.0.1).
ENTRYPOINT ["sealserve", "kbs", "serve", "--host=0.0.0.0"]
CMD ["--help"]

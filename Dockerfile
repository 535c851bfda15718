# flowcraft-puller container image: the daemon in a virtual environment on python:3.11-slim.
#
#   docker build -t flowcraft-puller:0.1.0 .
#   podman build --format docker -t flowcraft-puller:0.1.0 .   (HEALTHCHECK needs docker format)
#   docker run --read-only --tmpfs /tmp \
#     -v ./config.toml:/etc/flowcraft-puller/config.toml:ro \
#     -v ./secrets:/run/secrets:ro \
#     -e FLOWCRAFT_API_TOKEN_FILE=/run/secrets/api-token \
#     -e FLOWCRAFT_COORDINATOR_SECRET_FILE=/run/secrets/coordinator-secret \
#     --stop-timeout 40 flowcraft-puller:0.1.0
#
# The configuration must set [observability] listen = "0.0.0.0:9464" for /metrics to be reachable
# from outside the container; the health check calls /livez on 127.0.0.1:9464 (set
# FLOWCRAFT_LIVEZ_URL if you listen elsewhere). Keep the stop timeout above [daemon]
# drain_timeout (25s by default): `docker stop` waits only 10 s unless told otherwise.
# docs/operations.md covers adding your node code, Kubernetes and Compose.

# Pin the base by digest for reproducible builds, e.g.
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest from `docker pull`>
# (no digest is written here: it was not verifiable offline). Both stages must use the same image,
# because the runtime stage runs the virtual environment built in the first one.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

# WHEELHOUSE: optional directory (mounted during the build) holding every wheel, for offline
# builds; without it pip uses its configured index.
ARG WHEELHOUSE=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY flowcraft_puller/ flowcraft_puller/

# The project's wheel, its runtime dependencies pinned by constraints.txt (binary wheels only,
# so no compiler is needed), then a virtual environment with exactly those and without pip.
RUN python3 -m venv /opt/flowcraft-puller \
    && /opt/flowcraft-puller/bin/python -m pip wheel \
        ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} \
        --no-deps --wheel-dir /wheels . \
    && /opt/flowcraft-puller/bin/python -m pip wheel \
        ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} \
        --only-binary=:all: --constraint constraints.txt --wheel-dir /wheels /wheels/flowcraft_puller-*.whl \
    && /opt/flowcraft-puller/bin/python -m pip install \
        --no-index --find-links /wheels --constraint constraints.txt flowcraft-puller \
    && /opt/flowcraft-puller/bin/python -m pip uninstall --yes pip setuptools \
    && /opt/flowcraft-puller/bin/flowcraft-puller version


FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
ARG SOURCE_URL=""
ARG REVISION=""
LABEL org.opencontainers.image.title="flowcraft-puller" \
      org.opencontainers.image.description="Runs flowcraft workflows from Cloudflare Queues (HTTP pull) with Python node code" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT"

ENV PATH=/opt/flowcraft-puller/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1

RUN groupadd --gid 10001 flowcraft \
    && useradd --uid 10001 --gid flowcraft --no-create-home --no-log-init \
        --home-dir /nonexistent --shell /usr/sbin/nologin flowcraft

COPY --from=build /opt/flowcraft-puller /opt/flowcraft-puller

USER 10001:10001
WORKDIR /
EXPOSE 9464
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as r; r.build_opener(r.ProxyHandler({})).open(os.environ.get('FLOWCRAFT_LIVEZ_URL', 'http://127.0.0.1:9464/livez'), timeout=4)"]
ENTRYPOINT ["flowcraft-puller"]
CMD ["run", "--config", "/etc/flowcraft-puller/config.toml"]

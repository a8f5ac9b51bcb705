# erathos-prefect-bridge: a slim, non-root image of the service.
#
#   docker build -t erathos-prefect-bridge .
#   docker run -p 8080:8080 -v bridge-data:/data --read-only --tmpfs /tmp \
#     -e BRIDGE_WEBHOOK_TOKEN=... -e PREFECT_API_URL=... -e PREFECT_FLOW_ID=... erathos-prefect-bridge
#
# Secrets may also be files in /run/secrets (Docker and Kubernetes secrets).
# At run time the service writes only to /data (the SQLite file and its WAL) and /tmp
# (SQLite's temporary files): the root filesystem may be read-only. Python's bytecode is
# compiled at build time (pip does it) and never written at run time.
# SIGTERM: requests in flight are answered, deliveries in flight get the rest of
# BRIDGE_SHUTDOWN_GRACE (8 s by default, under Docker's 10 s stop timeout) and the
# unfinished are given back for the next start; then the process exits 0.
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# The locked installer (pip and setuptools) first, whatever pip the base image brought;
# then the locked dependencies: this layer is rebuilt only when a lock changes.
COPY requirements/installer.txt requirements/runtime.txt requirements/
RUN /opt/venv/bin/pip install --require-hashes -r requirements/installer.txt \
    && /opt/venv/bin/pip install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY app/ app/
# Built with the locked setuptools, not one fetched for an isolated build.
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation .

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="erathos-prefect-bridge" \
      org.opencontainers.image.description="Erathos job-completion webhooks in, Prefect flow runs out" \
      org.opencontainers.image.licenses="MIT"
# Only the virtual environment crosses over: no compiler, no build cache, no sources.
COPY --from=build /opt/venv /opt/venv
RUN groupadd --gid 10001 bridge \
    && useradd --uid 10001 --gid bridge --no-create-home --home-dir /data \
       --shell /usr/sbin/nologin bridge \
    && mkdir /data \
    && chown bridge:bridge /data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8080 \
    BRIDGE_DATABASE_URL=sqlite:////data/bridge.db
# The SQLite store (and an optional .env) live here; keep it on a volume.
WORKDIR /data
VOLUME /data
EXPOSE 8080
# Numeric, so that a platform can tell it is not root without reading /etc/passwd
# (Kubernetes' runAsNonRoot refuses a named USER it cannot verify).
USER 10001:10001
# Liveness only (the process answers); slim images have no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BRIDGE_PORT', '8080'), timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["erathos-prefect-bridge", "serve"]

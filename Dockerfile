# RetailRec API image. Build: docker build -t retailrec .  (podman: see README, "Deploy")
# The base image is an argument so that the same file builds from a locally made base where no
# registry is reachable; the default is Docker Hub's python:3.11-slim.
ARG BASE_IMAGE=python:3.11-slim

# -- build: a virtual environment with the pinned requirements and the package ------------------
FROM ${BASE_IMAGE} AS build
# 1 adds PyTorch (about 700 MB) for training the two-tower and sequence models inside the
# container; serving never needs it, and the other models train without it (session answers
# then come from the session blend alone). PySpark (the spark engine, about 450 MB and a Java
# runtime) is never installed: Spark jobs run where Spark runs (README, "Past one machine").
ARG WITH_TORCH=0
# Path of a CA bundle mounted at build time, for builds behind a TLS-inspecting proxy.
ARG PIP_CERT=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=120
SHELL ["/bin/sh", "-eu", "-c"]
WORKDIR /src
COPY requirements.txt pyproject.toml README.md ./
COPY src ./src
RUN if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi; \
    grep -v -E '^(pyspark|py4j)==' requirements.txt > /tmp/requirements.txt; \
    if [ "$WITH_TORCH" != "1" ]; then sed -i '/^torch==/d' /tmp/requirements.txt; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install -r /tmp/requirements.txt; \
    /opt/venv/bin/pip install --no-deps .

# -- runtime -------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
SHELL ["/bin/sh", "-eu", "-c"]
# implicit and LightGBM need OpenMP (libgomp1); a base that already has it skips apt.
# hadolint ignore=DL3008
RUN if ! dpkg -s libgomp1 >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends libgomp1; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --create-home --uid 10001 --user-group retailrec; \
    mkdir -p /data; \
    chown retailrec:retailrec /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OPENBLAS_NUM_THREADS=1 \
    RETAILREC_DATA_DIR=/data \
    PORT=8000
# Event log, feature store, MLflow registry and models: keep them on a volume (a Render disk).
VOLUME ["/data"]
USER 10001:10001
WORKDIR /home/retailrec
EXPOSE 8000
# Generous start period: on first start with an empty volume the container trains a model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]
# With no champion yet, `--bootstrap` runs the pipeline on the embedded synthetic shop first
# (RETAILREC_BOOTSTRAP_SCALE, RETAILREC_BOOTSTRAP_MODELS), or on raw files put in /data/raw.
CMD ["retailrec", "serve", "--bootstrap", "--host", "0.0.0.0"]

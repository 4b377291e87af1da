#!/usr/bin/env bash
# Builds the image with podman from a debootstrap base (no registry is reachable here), runs it
# on an empty data volume (it trains a first model on the tiny synthetic shop), and smoke-tests
# it: /ready, an event, a recommendation, non-root, the HEALTHCHECK. Called by `make
# container-test` and .ci/run. Installs podman and debootstrap when it can (root with apt); where
# podman cannot run it says so and exits 0: the static checks are in `make test` either way.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${CONTAINER_TEST_DIR:-/tmp/retailrec-container-test}
IMAGE=localhost/retailrec:container-test
NAME=retailrec-container-test
PORT=${CONTAINER_TEST_PORT:-18080}

skip() { echo "container-test: SKIPPED: $*"; exit 0; }

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "container-test: installing podman, buildah, runc and debootstrap"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap >/dev/null
    else
        skip "podman and debootstrap are not installed and cannot be (needs root and apt)"
    fi
fi
[ "$(id -u)" = 0 ] || skip "building a debootstrap base needs root"

mkdir -p "$WORK"
export CONTAINERS_CONF="$WORK/containers.conf"
cat > "$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024","nproc=1024:1024"]

[engine]
runtime = "runc"
CONF
podman info >/dev/null 2>&1 || skip "podman cannot run on this machine: $(podman info 2>&1 | tail -1)"

if ! podman image exists localhost/retailrec-base; then
    echo "container-test: making the base image (debootstrap bookworm, about a minute)"
    rm -rf "$WORK/root"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 \
        bookworm "$WORK/root" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; exit 1; }
    tar -C "$WORK/root" -c . | podman import - retailrec-base >/dev/null
    rm -rf "$WORK/root"
fi

CA=/etc/ssl/certs/ca-certificates.crt
ca_args=()
if [ -f "$CA" ]; then  # pip in the build trusts what the host trusts; never copied into the image
    ca_args=(-v "$CA:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
echo "container-test: building $IMAGE"
start=$(date +%s)
podman build --format docker --network host --build-arg BASE_IMAGE=localhost/retailrec-base \
    "${ca_args[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
echo "container-test: built in $(( $(date +%s) - start )) s," \
    "$(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

podman rm -f "$NAME" >/dev/null 2>&1 || true
cleanup() { podman rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
podman run -d --name "$NAME" --network host -e PORT="$PORT" \
    -e RETAILREC_BOOTSTRAP_SCALE=tiny -e RETAILREC_BOOTSTRAP_MODELS=popular_category,itemknn_cosine,ranker \
    "$IMAGE" >/dev/null 2>"$WORK/run.log"  # podman notes it has no systemd for health timers
if ! "$PY" scripts/smoke_test.py "http://127.0.0.1:$PORT" --container "$NAME" --timeout 600; then
    podman logs "$NAME" 2>&1 | tail -40
    exit 1
fi
echo "container-test: passed"

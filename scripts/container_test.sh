#!/usr/bin/env bash
# Builds the image with podman from a debootstrap base (no registry is reachable here), runs it
# on an empty data volume (it trains a first model on the tiny synthetic shop), and smoke-tests
# it: /ready, an event, a recommendation, non-root, the HEALTHCHECK. Called by `make
# container-test` and .ci/run; skips with a message where podman cannot run (podman_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${CONTAINER_TEST_DIR:-/tmp/retailrec-container-test}
IMAGE=localhost/retailrec:container-test
NAME=retailrec-container-test
PORT=${CONTAINER_TEST_PORT:-18080}
# shellcheck source=scripts/podman_env.sh
source scripts/podman_env.sh

make_base
build_image "$IMAGE"

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
say "passed"

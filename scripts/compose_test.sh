#!/usr/bin/env bash
# Runs docker-compose.yml's replicas profile with podman-compose: PostgreSQL, two API replicas
# and nginx in front of them, all from images built here (no registry is reachable: the official
# postgres and nginx images are replaced by deploy/standins/, built from the same debootstrap
# base). Then, with real containers:
#   - the balancer answers: readiness, an event, a recommendation the event changed;
#   - an event posted to either replica counts in the other's next answer;
#   - a reload on one replica reaches the other, which moves to a second champion (the
#     announcement in the shared store);
#   - one replica is killed (SIGKILL): the balancer keeps answering from the other, and the
#     killed one comes back by itself (restart: unless-stopped) and answers;
#   - the events are in PostgreSQL, not in a SQLite file.
# Called by `make compose-test` and .ci/run; skips with a message where podman cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${CONTAINER_TEST_DIR:-/tmp/retailrec-container-test}
COMPOSE_BIN=${COMPOSE_BIN:-$(dirname "$PY")/podman-compose}
PROJECT=retailrec-compose-test
# shellcheck source=scripts/podman_env.sh
source scripts/podman_env.sh
[ -x "$COMPOSE_BIN" ] || skip "podman-compose is not installed (requirements-dev.txt)"

make_base
build_image localhost/retailrec:compose-test  # the container test's layers: cached after it
build_image localhost/retailrec-standin-postgres deploy/standins postgres.Containerfile
build_image localhost/retailrec-standin-nginx deploy/standins nginx.Containerfile

secret() { "$PY" -c 'import secrets; print(secrets.token_hex(16))'; }
export RETAILREC_IMAGE=localhost/retailrec:compose-test
export POSTGRES_IMAGE=localhost/retailrec-standin-postgres
export NGINX_IMAGE=localhost/retailrec-standin-nginx
export API_PORT=${COMPOSE_TEST_PORT:-18100}
export API_2_PORT=$((API_PORT + 1)) LB_PORT=$((API_PORT + 2))
RETAILREC_API_KEY=$(secret)
POSTGRES_PASSWORD=$(secret)
export RETAILREC_API_KEY POSTGRES_PASSWORD
export RETAILREC_STORE_URL="postgresql://retailrec:$POSTGRES_PASSWORD@postgres/retailrec"
export RETAILREC_BOOTSTRAP_SCALE=tiny
export RETAILREC_BOOTSTRAP_MODELS=popular  # fast; the second champion beats it

compose() { "$COMPOSE_BIN" -p "$PROJECT" --profile replicas "$@"; }
cleanup() { compose down -v >"$WORK/compose-down.log" 2>&1 || true; }
logs() {
    for service in postgres api api-2 lb; do
        echo "--- $service"
        podman logs --tail 30 "${PROJECT}_${service}_1" 2>&1 || true
    done
}
fail() { logs; echo "compose-test: FAILED: $*"; exit 1; }
trap cleanup EXIT
cleanup

# podman 4.3 ignores `condition: service_healthy`: start in the order the conditions describe.
compose up -d postgres >"$WORK/compose-up.log" 2>&1 || fail "$(tail -5 "$WORK/compose-up.log")"
for _ in $(seq 60); do
    podman exec "${PROJECT}_postgres_1" pg_isready -q -U retailrec -d retailrec && break
    sleep 1
done
podman exec "${PROJECT}_postgres_1" pg_isready -U retailrec -d retailrec >/dev/null \
    || fail "PostgreSQL is not ready after 60 s"
say "PostgreSQL is ready; starting the first replica (it trains the first champion)"
compose up -d api >>"$WORK/compose-up.log" 2>&1 || fail "$(tail -5 "$WORK/compose-up.log")"
"$PY" scripts/smoke_test.py "http://127.0.0.1:$API_PORT" --timeout 600 >"$WORK/smoke-api.log" \
    || fail "the first replica: $(tail -1 "$WORK/smoke-api.log")"
say "the first replica answers on version 1; promoting a second champion"
# A second champion (per-category popularity beats plain popularity on this shop): the first
# replica keeps serving version 1 until told; the second starts on version 2.
podman exec "${PROJECT}_api_1" sh -c "retailrec train --models popular_category && retailrec promote" \
    >"$WORK/train.log" 2>&1 || fail "promoting a second version: $(tail -1 "$WORK/train.log")"
say "$(tail -1 "$WORK/train.log")"
say "starting the second replica and the balancer"
compose up -d api-2 lb >>"$WORK/compose-up.log" 2>&1 || fail "$(tail -5 "$WORK/compose-up.log")"
# A reload on the second replica reaches the first, which moves from version 1 to 2.
"$PY" scripts/smoke_test.py "http://127.0.0.1:$LB_PORT" --timeout 300 \
    --replica "http://127.0.0.1:$API_2_PORT" --replica "http://127.0.0.1:$API_PORT" \
    --api-key "$RETAILREC_API_KEY" --reload-to 2 || fail "the balancer and the replicas"

# From the host, as the kernel's OOM killer would: `podman kill` counts as a stop by the user,
# after which no restart policy restarts a container.
kill -KILL "$(podman inspect --format '{{.State.Pid}}' "${PROJECT}_api-2_1")"
say "the second replica is killed (SIGKILL)"
"$PY" scripts/smoke_test.py "http://127.0.0.1:$LB_PORT" --timeout 60 \
    || fail "the balancer with one replica killed"
"$PY" scripts/smoke_test.py "http://127.0.0.1:$API_2_PORT" --timeout 300 \
    || fail "the killed replica did not come back"
say "the killed replica came back by itself and answers"

events=$(podman exec "${PROJECT}_postgres_1" psql -U retailrec -d retailrec -tAc \
    "SELECT count(*) FROM events")
[ "${events:-0}" -gt 0 ] || fail "no events in PostgreSQL"
sqlite=$(podman exec "${PROJECT}_api_1" sh -c 'ls /data/*.sqlite 2>/dev/null | wc -l')
[ "$sqlite" = 0 ] || fail "a SQLite store on the data volume: $(podman exec "${PROJECT}_api_1" ls /data)"
say "the shop's $events events are in PostgreSQL; no SQLite store on the data volume"
say "passed"

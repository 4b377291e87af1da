# Sourced by container_test.sh and compose_test.sh: podman set up to build and run images on a
# machine with no registry and no Docker engine. Installs podman, buildah, runc and debootstrap
# when it can (root with apt); where podman cannot run, `skip` says so and exits 0: the static
# checks of the image and the compose file are in `make test` either way.
# Needs: $PY (a Python with the project), $WORK (a scratch folder). Gives: $CONTAINERS_CONF,
# make_base (the localhost/retailrec-base image), build_image IMAGE [CONTEXT FILE] (BASE_IMAGE
# set to that base, pip trusting the host's CA bundle).

skip() { echo "$(basename "$0" .sh): SKIPPED: $*"; exit 0; }
say() { echo "$(basename "$0" .sh): $*"; }

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing podman, buildah, runc and debootstrap"
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

make_base() {
    podman image exists localhost/retailrec-base && return 0
    say "making the base image (debootstrap bookworm, about a minute)"
    rm -rf "$WORK/root"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 \
        bookworm "$WORK/root" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; exit 1; }
    tar -C "$WORK/root" -c . | podman import - retailrec-base >/dev/null
    rm -rf "$WORK/root"
}

build_image() {  # IMAGE [CONTEXT [CONTAINERFILE]]
    local image=$1 context=${2:-.} file=${3:-Dockerfile} ca=/etc/ssl/certs/ca-certificates.crt
    local ca_args=() log start
    if [ -f "$ca" ]; then  # pip in the build trusts what the host trusts; never copied into the image
        ca_args=(-v "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
    fi
    log="$WORK/build-$(echo "$image" | tr -c 'a-z0-9\n' '-').log"
    say "building $image"
    start=$(date +%s)
    podman build --format docker --network host --build-arg BASE_IMAGE=localhost/retailrec-base \
        "${ca_args[@]}" -f "$context/$file" -t "$image" "$context" >"$log" 2>&1 \
        || { tail -40 "$log"; exit 1; }
    say "built $image in $(( $(date +%s) - start )) s," \
        "$(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
}

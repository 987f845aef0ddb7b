#!/usr/bin/env bash
# Build the CPU variant of the image with rootful podman, from the same Dockerfile as the CUDA image.
#
#   deploy/image-test.sh [TAG]          (default TAG: localhost/swinxseg:cpu-test)
#
# No Docker engine and no CUDA base image can be had on our build machines, so:
# - the base is Debian bookworm made with debootstrap from this machine's own apt mirror, imported
#   once as localhost/swinxseg-base:bookworm and kept while the machine keeps podman's storage;
# - torch's CPU wheel comes from the local wheel folder this machine's pip uses (SWINXSEG_IMAGE_WHEELS,
#   default /opt/wheels), mounted read-only into the build as /wheels (PIP_FIND_LINKS);
# - outgoing TLS is signed by this machine's CA: its bundle is mounted read-only for pip (PIP_CERT);
# - the sandbox refuses rlimit changes and crun's hybrid cgroups: a containers.conf without default
#   ulimits and with cgroupfs, and runc as the runtime.
# Prints the build time and the image size. Needs root, podman, runc and debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${1:-localhost/swinxseg:cpu-test}"
BASE="localhost/swinxseg-base:bookworm"
WHEELS="${SWINXSEG_IMAGE_WHEELS:-/opt/wheels}"
CA_BUNDLE="${SWINXSEG_IMAGE_CA:-/etc/ssl/certs/ca-certificates.crt}"
STATE="${SWINXSEG_IMAGE_STATE:-/var/tmp/swinxseg-image-test}"
mkdir -p "$STATE"

cat > "$STATE/containers.conf" <<'CONF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
CONF
export CONTAINERS_CONF="$STATE/containers.conf"
podman() { command podman --runtime runc "$@"; }

torch_version=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)
onnxruntime_version=$(sed -n 's/^onnxruntime==//p' requirements.lock)
if ! compgen -G "$WHEELS/torch-${torch_version}+cpu-cp311-*.whl" >/dev/null; then
    # Without it pip would take the index's CUDA build of torch: several GB for a CPU image.
    echo "image-test: no torch ${torch_version}+cpu wheel for Python 3.11 in $WHEELS" >&2
    exit 3
fi

apt_mirror() {
    # The first Debian archive this machine's apt uses (deb822 or one-line format).
    { sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
      sed -n 's/^deb \(\[[^]]*\] \)\?\(\S*\) bookworm .*/\2/p' /etc/apt/sources.list 2>/dev/null || true
    } | { grep -v security || true; } | head -n 1
}

if ! podman image exists "$BASE"; then
    mirror=$(apt_mirror)
    [ -n "$mirror" ] || { echo "image-test: no Debian mirror in this machine's apt sources" >&2; exit 3; }
    rootfs="$STATE/rootfs"
    rm -rf "$rootfs"
    start=$SECONDS
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$STATE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$STATE/debootstrap.log" >&2; exit 1; }
    tar -C "$rootfs" -c . | podman import - "$BASE" > "$STATE/import.log" 2>&1
    rm -rf "$rootfs"
    echo "image-test: base $BASE made in $((SECONDS - start)) s"
fi

start=$SECONDS
podman build --network host --isolation chroot --format docker \
    --build-arg BASE_IMAGE="$BASE" \
    --build-arg PYTHON_VERSION=3.11 \
    --build-arg ONNXRUNTIME_REQUIREMENT="onnxruntime==${onnxruntime_version}" \
    --build-arg PIP_FIND_LINKS=/wheels \
    --build-arg PIP_CERT=/pip-ca.crt \
    --volume "$WHEELS:/wheels:ro" \
    --volume "$CA_BUNDLE:/pip-ca.crt:ro" \
    --tag "$TAG" . > "$STATE/build.log" 2>&1 \
    || { tail -n 40 "$STATE/build.log" >&2; exit 1; }
echo "image-test: built $TAG in $((SECONDS - start)) s"
echo "image-test: image size $(podman image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"

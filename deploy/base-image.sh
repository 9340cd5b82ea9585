#!/usr/bin/env bash
# Make a Debian base image for the Containerfile from Debian's own packages, with no registry of images:
# debootstrap a minimal bookworm with Python 3.11, its venv module and the CA certificates, and import it.
#
#   sudo deploy/base-image.sh [IMAGE]          (default localhost/zlb-base:bookworm)
#   podman build --build-arg BASE=localhost/zlb-base:bookworm -t zlb -f Containerfile .
#
# Needs root, debootstrap and podman (apt-get install debootstrap podman); takes about a minute.
set -euo pipefail
IMAGE=${1:-localhost/zlb-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOT=$(mktemp -d /var/tmp/zlb-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOT" "$MIRROR" >&2
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | podman import --change 'CMD ["/bin/bash"]' - "$IMAGE" >&2
echo "$IMAGE"

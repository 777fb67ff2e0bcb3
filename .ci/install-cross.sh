#!/usr/bin/env bash
# Install what .ci/run needs to build the kernels for the other Linux targets
# the wheels are made for, and to run them here:
#   gcc-aarch64-linux-gnu, libc6-dev-arm64-cross  Debian's aarch64 cross compiler
#   qemu-user                                     qemu-aarch64, to run what it builds
#   musl-tools                                    musl-gcc, for the musllinux wheels' libc
# All from the system's own Debian sources (bookworm). Idempotent: with every
# command present it does nothing. Needs root (CI runs as root) or sudo.
set -euo pipefail

need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
command -v musl-gcc >/dev/null 2>&1 || need+=(musl-tools)
if [ "${#need[@]}" -eq 0 ]; then
    echo "install-cross: already installed: $(aarch64-linux-gnu-gcc --version | head -n 1);" \
        "$(qemu-aarch64 --version | head -n 1); musl-gcc"
    exit 0
fi

# shellcheck source=.ci/as-root.sh
. "$(dirname "${BASH_SOURCE[0]}")/as-root.sh" "install-cross: ${need[*]} missing"
# install-qemu.sh (run first) has refreshed the package lists.
"${as_root[@]}" apt-get install -y --no-install-recommends "${need[@]}" \
    || { "${as_root[@]}" apt-get update && "${as_root[@]}" apt-get install -y --no-install-recommends "${need[@]}"; }
echo "install-cross: installed ${need[*]}"

#!/usr/bin/env bash
# Install Debian's qemu-system-x86 (QEMU 7.2 on bookworm) for tests/test_qemu_peer.py,
# only when qemu-system-x86_64 is missing. Idempotent: a second run does nothing.
# Needs root (CI runs as root) or sudo, and access to the Debian archive.
set -euo pipefail

if command -v qemu-system-x86_64 >/dev/null 2>&1; then
    echo "install-qemu: already installed: $(qemu-system-x86_64 --version | head -n 1)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=(env DEBIAN_FRONTEND=noninteractive)
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
else
    echo "install-qemu: qemu-system-x86_64 is missing and this is neither root nor sudo" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-qemu: qemu-system-x86_64 is missing and there is no apt-get here" >&2
    exit 1
fi

"${as_root[@]}" apt-get update
"${as_root[@]}" apt-get install -y --no-install-recommends qemu-system-x86
version="$(qemu-system-x86_64 --version | head -n 1)"  # fails the script if still missing
echo "install-qemu: installed: $version"

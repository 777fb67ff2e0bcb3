# Sourced by the .ci install scripts: sets as_root, the prefix that runs a
# command as root for apt-get (root itself, else sudo), or fails with WHAT,
# the missing thing that made the install necessary.
# Usage: . .ci/as-root.sh "install-qemu: QEMU >= 10 is missing"
# shellcheck shell=bash disable=SC2034 # as_root is the sourcing script's
if [ "$(id -u)" -eq 0 ]; then
    as_root=(env DEBIAN_FRONTEND=noninteractive)
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
else
    echo "$1 and this is neither root nor sudo" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$1 and there is no apt-get here" >&2
    exit 1
fi

#!/usr/bin/env bash
# Install QEMU 10 (Debian's qemu-system-x86 from bookworm-backports) for the
# tests that use a real QEMU as the peer, and qemu-img (qemu-utils) for the
# scan tests that refuse real disk images. Debian 12 itself ships QEMU 7.2,
# whose multifd has no zero-page detection.
#
# The bookworm-backports entry is derived from the system's own Debian entry
# (same URIs and keyring, suite bookworm-backports), so that no host name is
# written here. Idempotent: with QEMU >= 10 already installed it does nothing.
# Needs root (CI runs as root) or sudo.
set -euo pipefail

want_major=10
have_major() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
    command -v qemu-img >/dev/null 2>&1 || return 1
    local v
    v="$(qemu-system-x86_64 --version | head -n 1 | sed -nE 's/.*version ([0-9]+)\..*/\1/p')"
    [ -n "$v" ] && [ "$v" -ge "$want_major" ]
}

if have_major; then
    echo "install-qemu: already installed: $(qemu-system-x86_64 --version | head -n 1)"
    exit 0
fi

# shellcheck source=.ci/as-root.sh
. "$(dirname "${BASH_SOURCE[0]}")/as-root.sh" "install-qemu: QEMU >= $want_major is missing"

target=/etc/apt/sources.list.d/multifd-zero-bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    entry=""
    # deb822 form: the stanza whose Suites line names plain "bookworm".
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        entry="$(awk -v RS='' '/(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|\n|$)/ { print; exit }' "$f")"
        [ -n "$entry" ] && break
    done
    if [ -n "$entry" ]; then
        uris="$(printf '%s\n' "$entry" | sed -n 's/^URIs:[[:space:]]*//p' | head -n 1)"
        signed="$(printf '%s\n' "$entry" | sed -n 's/^Signed-By:[[:space:]]*//p' | head -n 1)"
    else
        # One-line form: "deb [options] URI bookworm main ...".
        line="$(grep -hE '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+[[:space:]]+bookworm[[:space:]]' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1 || true)"
        if [ -z "$line" ]; then
            echo "install-qemu: no Debian bookworm source entry to derive bookworm-backports from" >&2
            exit 1
        fi
        uris="$(printf '%s\n' "$line" | sed -E 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/')"
        signed="$(printf '%s\n' "$line" | sed -nE 's/.*signed-by=([^] ]+).*/\1/p')"
    fi
    {
        echo "Types: deb"
        echo "URIs: $uris"
        echo "Suites: bookworm-backports"
        echo "Components: main"
        [ -n "$signed" ] && echo "Signed-By: $signed"
    } | "${as_root[@]}" tee "$target" >/dev/null
    echo "install-qemu: added bookworm-backports from $uris"
fi

"${as_root[@]}" apt-get update
"${as_root[@]}" apt-get install -y --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils
if ! have_major; then
    echo "install-qemu: installed $(qemu-system-x86_64 --version | head -n 1), need >= $want_major" >&2
    exit 1
fi
echo "install-qemu: installed: $(qemu-system-x86_64 --version | head -n 1)"

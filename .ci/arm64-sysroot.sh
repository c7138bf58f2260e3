#!/usr/bin/env bash
# An aarch64 Python with the edge runtime, run under QEMU user-mode emulation: no container, no binfmt, no change to
# the host's apt or dpkg configuration.
#
#   .ci/arm64-sysroot.sh [CACHE]          (default CACHE: .ci-work/arm64; PYTHON: the x86 python whose pip downloads)
#
# CACHE/sysroot  Debian's arm64 packages of python3.11 and the C libraries it and the wheels need (dpkg -x)
# CACHE/roots    per emulated core (cortex-a72, cortex-a76): the sysroot plus that core's /proc/cpuinfo and MIDR
# CACHE/site     the aarch64 wheels of the runtime's dependencies (pip --platform download, --target install),
#                the same versions as the x86 python has where it has them
# CACHE/project  winclip/runtime, calibration and benchmarks: links to this tree, so the emulated run tests this code
# CACHE/python   runs the aarch64 python3.11 under qemu-aarch64-static -cpu ${ARM64_CPU:-cortex-a76}
#
# apt runs with a private state folder whose only architecture is arm64 (nothing to undo, even when interrupted).
# Each step reuses its result when its inputs are unchanged; any failure is one line on stderr and exit 1.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${1:-$ROOT/.ci-work/arm64}"
mkdir -p "$CACHE" 2>/dev/null && CACHE="$(cd "$CACHE" && pwd)" && : 2>/dev/null >"$CACHE/prepare.log" \
    || { echo "arm64-sysroot: cannot write the cache folder $CACHE" >&2; exit 1; }
PYTHON="${PYTHON:-python3}"
LOG="$CACHE/prepare.log"
die() { echo "arm64-sysroot: $* (details: $LOG)" >&2; exit 1; }
trap 'die "failed at line $LINENO"' ERR

command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static is missing: apt-get install qemu-user-static"
command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "apt-get and dpkg are needed (a Debian host)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (set PYTHON to a python with pip)"

# python3.11 and its shared libraries (its Depends closure without perl, dpkg and tzdata's debconf), libstdc++ and
# libgomp for the wheels; everything else the wheels need they carry.
DEBS="python3.11 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib media-types libc6 libgcc-s1
gcc-12-base libstdc++6 libgomp1 zlib1g libbz2-1.0 liblzma5 libexpat1 libffi8 libssl3 libsqlite3-0 libncursesw6
libtinfo6 libreadline8 readline-common libuuid1 libdb5.3 libgdbm6 libgdbm-compat4 libnsl2 libtirpc3 libtirpc-common
libgssapi-krb5-2 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libcom-err2 libcrypt1"
# the [cpu] runtime, the [quantize] tools (winclip-quantize on the ARM box) and OpenVINO; pinned to the x86 versions
WHEELS="onnxruntime numpy opencv-python-headless click tqdm onnx sympy protobuf flatbuffers packaging ml_dtypes mpmath
typing_extensions openvino"

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

SYSROOT="$CACHE/sysroot"
if ! stamp_ok "$SYSROOT/.winclip-stamp" "$DEBS"; then
    echo "arm64-sysroot: downloading Debian arm64 packages" >&2
    APT=(-q -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Debug::NoLocking=1
         -o Dir::State::status=/dev/null -o Dir::State::Lists="$CACHE/apt/lists" -o Dir::Cache="$CACHE/apt/cache")
    mkdir -p "$CACHE/apt/lists/partial" "$CACHE/apt/cache/archives/partial"
    rm -rf "$CACHE/debs" "$SYSROOT.new" && mkdir -p "$CACHE/debs" "$SYSROOT.new"
    apt-get "${APT[@]}" update >>"$LOG" 2>&1 || die "apt-get update (arm64 lists) failed"
    # shellcheck disable=SC2086
    (cd "$CACHE/debs" && apt-get "${APT[@]}" download $DEBS) >>"$LOG" 2>&1 || die "apt-get download of arm64 packages failed"
    for deb in "$CACHE/debs"/*.deb; do dpkg -x "$deb" "$SYSROOT.new" >>"$LOG" 2>&1 || die "dpkg -x $deb failed"; done
    [ -x "$SYSROOT.new/usr/bin/python3.11" ] || die "python3.11 is not in the extracted packages"
    echo "$DEBS" >"$SYSROOT.new/.winclip-stamp"
    rm -rf "$SYSROOT" "$CACHE/debs" "$CACHE/apt" && mv "$SYSROOT.new" "$SYSROOT"  # extracted: the packages can go
fi
# One root per emulated core: the sysroot's folders (links) and that core's /proc/cpuinfo, which -L makes the
# emulated process read. QEMU 7.2 shows the host's x86 file otherwise, and onnxruntime's CPU probe crashes on it;
# onnxruntime also picks its int8 kernels by the core this file names, so it must match -cpu (a Cortex-A76 file
# under -cpu cortex-a72 runs dot-product code the emulated CPU lacks: SIGILL).
cpuinfo() {  # part, variant, revision, features: two cores as an ARM Linux kernel prints them
    for n in 0 1; do
        printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: %s\n' "$n" "$4"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "$2" "$1" "$3"
    done
}
for core in cortex-a72 cortex-a76; do
    root="$CACHE/roots/$core.new"
    rm -rf "$root" && mkdir -p "$root/proc"
    for entry in "$SYSROOT"/*; do ln -s "$entry" "$root/$(basename "$entry")"; done
    case "$core" in  # Raspberry Pi 4 and Pi 5
        cortex-a72) midr=0x410fd083; cpuinfo 0xd08 0x0 3 "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid" ;;
        cortex-a76) midr=0x414fd0b1; cpuinfo 0xd0b 0x4 1 "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    esac >"$root/proc/cpuinfo"
    # OpenVINO's ARM code generator reads the core's id here (and warns without it)
    mkdir -p "$root/sys/devices/system/cpu/cpu0/regs/identification"
    printf '0x%016x\n' "$midr" >"$root/sys/devices/system/cpu/cpu0/regs/identification/midr_el1"
    rm -rf "${root%.new}" && mv "$root" "${root%.new}"
done

PINS="$("$PYTHON" - $WHEELS <<'EOF'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(name)
EOF
)" || die "$PYTHON cannot list its package versions"
SITE="$CACHE/site"
# manylinux_2_35 too: without it pip settles for old releases of some packages (openvino 2024.0)
TARGET=(--only-binary=:all: --python-version 3.11 --implementation cp --platform manylinux2014_aarch64
        --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_35_aarch64)
if ! stamp_ok "$SITE/.winclip-stamp" "$PINS"; then
    echo "arm64-sysroot: downloading aarch64 wheels" >&2
    rm -rf "$CACHE/wheels" "$SITE.new" && mkdir -p "$CACHE/wheels"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download -q "${TARGET[@]}" -d "$CACHE/wheels" $PINS >>"$LOG" 2>&1 || die "pip download of aarch64 wheels failed"
    "$PYTHON" -m pip install -q "${TARGET[@]}" --no-deps --no-index --target "$SITE.new" "$CACHE/wheels"/*.whl >>"$LOG" 2>&1 \
        || die "pip install --target of the aarch64 wheels failed"
    echo "$PINS" >"$SITE.new/.winclip-stamp"
    rm -rf "$SITE" "$CACHE/wheels" && mv "$SITE.new" "$SITE"  # the wheels are installed: ~120 MB less to keep
fi

# this tree's code, laid out as the installed package names it (winclip is a namespace package)
mkdir -p "$CACHE/project/winclip"
for pkg in runtime calibration benchmarks; do ln -sfn "$ROOT/$pkg" "$CACHE/project/winclip/$pkg"; done

# -S: no site-packages of the host's python can leak in (-L falls back to host paths absent from the sysroot).
# A core without a root of its own gets the Cortex-A76's (right for cores with at least its features: max,
# neoverse-n1); never run int8 under QEMU 7.2's max (its SVE gives wrong int8 sums).
cat >"$CACHE/python" <<EOF
#!/bin/sh
# aarch64 python3.11 with the runtime, emulated (made by .ci/arm64-sysroot.sh); ARM64_CPU picks the core
core="\${ARM64_CPU:-cortex-a76}"
root="$CACHE/roots/\$core"
[ -d "\$root" ] || root="$CACHE/roots/cortex-a76"
export PYTHONPATH="$SITE:$CACHE/project" PYTHONNOUSERSITE=1 PYTHONHASHSEED=0
exec qemu-aarch64-static -cpu "\$core" -L "\$root" "$SYSROOT/usr/bin/python3.11" -S "\$@"
EOF
chmod +x "$CACHE/python"
"$CACHE/python" -c "import onnxruntime, numpy, cv2" >>"$LOG" 2>&1 || die "the emulated python cannot import the runtime's libraries"
echo "$CACHE/python"

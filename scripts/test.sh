#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine (apt and pip packages), then runs
# it. Arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `bash scripts/test.sh tests/unit`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real tools used as oracles and peers by the tests; one per line so additions stay readable.
APT_PACKAGES=(
    e2fsprogs
    qemu-utils
    qemu-system-common
    partclone
    android-sdk-libsparse-utils
    xfsprogs
    btrfs-progs
    dosfstools
    mtools
    ntfs-3g
    fdisk
    gdisk
    lvm2
    thin-provisioning-tools
    libnbd-bin
    python3-libnbd
    nbdkit
    fuse3
    zstd
    time
    age
    libvirt-daemon-system
    libvirt-daemon-driver-qemu
    libvirt-clients
    qemu-system-x86
    # the --fsfreeze tests' guest: its kernel, agent, shell and initramfs tool
    linux-image-cloud-amd64
    qemu-guest-agent
    busybox-static
    cpio
)

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test set-up: installing ${missing[*]}" >&2
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'

# The suite's images are made and removed test by test (about 1 GiB at most at once); with less
# room every later test would fail on its temporary directory, so say so once instead.
tmp="${TMPDIR:-/tmp}"
free_kib=$(df -Pk "$tmp" | awk 'NR == 2 { print $4 }')
if [ "$free_kib" -lt $((2 * 1024 * 1024)) ]; then
    echo "test set-up: $tmp has $((free_kib / 1024)) MiB free, the suite needs 2048 MiB;" \
        "free some space or point TMPDIR elsewhere" >&2
    exit 2
fi
exec python3 -m pytest "$@"

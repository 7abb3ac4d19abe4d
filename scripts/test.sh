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
exec python3 -m pytest "$@"

#!/usr/bin/env bash
# The main job on a fresh Debian machine: install volpack, make a real ext4 volume image, back it
# up (only used blocks), inspect and verify the archive, restore it thin, and check the result
# with cmp and e2fsck. Everything happens in a temporary directory that is removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v mkfs.ext4 >/dev/null; then
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq e2fsprogs >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e .

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tree"
for i in $(seq 1 40); do head -c $((i * 37 * 1024)) /dev/urandom >"$work/tree/file$i.bin"; done
seq 1 200000 >"$work/tree/numbers.txt"
mkfs.ext4 -q -F -d "$work/tree" "$work/disk.img" 256M

set -x
volpack map "$work/disk.img" | tail -n 3
volpack backup "$work/disk.img" "$work/disk.vpk"
volpack info "$work/disk.vpk"
volpack verify "$work/disk.vpk" --against "$work/disk.img"
volpack restore "$work/disk.vpk" "$work/restored.img"
cmp "$work/disk.img" "$work/restored.img"
e2fsck -fn "$work/restored.img"
du -h --apparent-size "$work/disk.img" "$work/disk.vpk"
du -h "$work/restored.img"

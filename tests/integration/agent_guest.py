"""A tiny Linux guest that runs the QEMU guest agent, for the ``--fsfreeze`` tests: the host's
Debian cloud kernel, and an initramfs (made with ``cpio``) holding busybox-static, ``qemu-ga``
with the libraries ``ldd`` lists, and the virtio modules; its /init mounts the ext4 disk vda on
/mnt and serves the agent on the virtio port ``org.qemu.guest_agent.0``.

Only the tests use this; it reads the host's kernel, modules and binaries and writes only under
the directory it is given.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

# What the guest's kernel must load to see its disk and the agent's port (ext4 is built in to
# Debian's cloud kernel; anything else it needs is found through modules.dep).
MODULES = ("virtio_pci", "virtio_blk", "virtio_console")
AGENT_PORT = "org.qemu.guest_agent.0"

# Written-back pages stay in the guest's cache for an hour and ext4 commits hourly, so a file the
# guest writes reaches the disk only when something flushes it: the freeze, in the tests.
_INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt /run /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo 360000 > /proc/sys/vm/dirty_expire_centisecs
echo 0 > /proc/sys/vm/dirty_writeback_centisecs
mount -t ext4 -o commit=3600 /dev/vda /mnt || echo "volpack-guest: cannot mount /dev/vda"
port=
i=0
while [ -z "$port" ] && [ $i -lt 300 ]; do
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat $p/name 2>/dev/null)" = {AGENT_PORT} ] && port=/dev/${{p##*/}}
    done
    [ -z "$port" ] && sleep 0.1
    i=$((i+1))
done
echo "volpack-guest: agent port $port"
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
# Extra agent options in /run/qga-args (a test blocks a command with "-b NAME") take effect
# when the agent restarts.
while true; do
    qemu-ga -m virtio-serial -p "$port" -f /run/qemu-ga.pid -t /run $(cat /run/qga-args 2>/dev/null)
    echo "volpack-guest: qemu-ga exited $?"
    sleep 1
done
"""


@dataclass(frozen=True, slots=True)
class Guest:
    kernel: Path
    initrd: Path


def _kernel() -> tuple[Path, str]:
    """The newest installed cloud kernel image and its release."""
    found = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    if not found:
        pytest.skip("no cloud kernel in /boot (scripts/test.sh installs linux-image-cloud-amd64)")
    kernel = Path(found[-1])
    release = kernel.name.removeprefix("vmlinuz-")
    if not os.access(kernel, os.R_OK) or not Path("/lib/modules", release).is_dir():
        pytest.skip(f"{kernel} or /lib/modules/{release} cannot be read")
    return kernel, release


def _load_order(release: str) -> list[str]:
    """The module files to insmod, each after what it depends on (from modules.dep)."""
    deps: dict[str, list[str]] = {}
    for line in Path("/lib/modules", release, "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {re.sub(r"\.ko(\.\w+)?$", "", Path(m).name).replace("-", "_"): m for m in deps}
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in deps[mod]:
            visit(dep)
        order.append(mod)

    for name in MODULES:
        if name not in by_name:
            continue  # built in
        visit(by_name[name])
    return order


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return re.findall(r"(/\S+) \(0x", out)


def build_guest(where: Path) -> Guest:
    """Build the initramfs in ``where`` (or skip with the reason when a part is missing)."""
    kernel, release = _kernel()
    busybox, qga = shutil.which("busybox"), shutil.which("qemu-ga")
    for tool, path in (("busybox-static", busybox), ("qemu-guest-agent", qga), ("cpio", "cpio")):
        if path is None or shutil.which(path) is None:
            pytest.skip(f"{tool} is not installed (scripts/test.sh installs it)")
    assert busybox is not None and qga is not None
    linked = subprocess.run(["ldd", busybox], capture_output=True, text=True)
    if "not a dynamic" not in linked.stdout + linked.stderr:
        pytest.skip(f"{busybox} is not the static busybox (install busybox-static)")
    root = where / "initramfs"
    for d in ("bin", "sbin", "lib/modules", "lib/x86_64-linux-gnu", "lib64", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, root / "bin/busybox")
    shutil.copy(qga, root / "bin/qemu-ga")
    for lib in _libraries(qga):
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lib, dest)  # follows the symlink: the file itself under the linked name
    modules = _load_order(release)
    for mod in modules:
        src = Path("/lib/modules", release, mod)
        if src.suffix != ".ko":
            pytest.skip(f"{src} is compressed; this guest's busybox insmod takes plain .ko files")
        shutil.copy(src, root / "lib/modules" / src.name)
    (root / "modules.order").write_text("".join(Path(m).name + "\n" for m in modules))
    init = root / "init"
    init.write_text(_INIT)
    init.chmod(0o755)
    initrd = where / "initrd.cpio"
    names = subprocess.run(
        ["find", "."], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    with initrd.open("wb") as out:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
            cwd=root,
            input="\n".join(sorted(names.split())).encode() + b"\n",
            stdout=out,
            check=True,
        )
    return Guest(kernel, initrd)

"""A private libvirtd for tests: its own mount namespace, config, state and socket directories
under the test's temporary directory, QEMU under TCG, stopped by PID whatever happens.

Only the tests use this; it never touches the host's libvirt state (everything libvirtd writes
under /etc, /run and /var is a bind mount of a directory in the test's temporary directory).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
namespaces = []
cgroup_controllers = []
"""

# Every directory libvirtd writes is bound to a private copy inside the mount namespace.
_BOUND = (
    "/etc/libvirt",
    "/run/libvirt",
    "/var/lib/libvirt",
    "/var/log/libvirt",
    "/var/cache/libvirt",
)


@dataclass
class Libvirtd:
    uri: str
    root: Path
    proc: subprocess.Popen[bytes]

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["virsh", "-q", "-c", self.uri, *args], capture_output=True, text=True, timeout=120
        )
        if check and r.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)}: {r.stderr.strip()}")
        return r


def _script(root: Path, conf: Path) -> str:
    lines = ["set -e", "mount --make-rprivate /"]
    for d in _BOUND:
        mine = root / d.strip("/").replace("/", "_")
        lines.append(f"mkdir -p {d} && mount --bind {mine} {d}")
    lines.append(f"mount --bind {root / 'passwd'} /etc/passwd")
    lines.append(f"mount --bind {root / 'group'} /etc/group")
    lines.append(f"exec libvirtd -f {conf}")
    return "\n".join(lines)


@contextlib.contextmanager
def libvirtd(tmp_path: Path) -> Iterator[Libvirtd]:
    """Start libvirtd privately, or skip the test with the reason it cannot start."""
    for tool in ("libvirtd", "virsh", "qemu-system-x86_64", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/test.sh installs it)")
    if os.geteuid() != 0:
        pytest.skip("a private libvirtd needs root (mount namespace and bind mounts)")
    root = tmp_path / "libvirt"
    for d in _BOUND:
        (root / d.strip("/").replace("/", "_")).mkdir(parents=True)
    etc = root / "etc_libvirt"
    if Path("/etc/libvirt").is_dir():
        shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True)
    (etc / "qemu.conf").write_text(_QEMU_CONF)
    sockdir = root / "sock"
    sockdir.mkdir()
    conf = etc / "libvirtd.conf"
    conf.write_text(
        f'unix_sock_dir = "{sockdir}"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n'
        'log_outputs = "3:stderr"\n'
    )
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    if "libvirt-qemu:" not in passwd:
        passwd += "libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin\n"
    if "\nkvm:" not in "\n" + group:
        group += "kvm:x:64056:\n"
    if "libvirt-qemu:" not in group:
        group += "libvirt-qemu:x:64055:\n"
    (root / "passwd").write_text(passwd)
    (root / "group").write_text(group)
    log = (root / "libvirtd.log").open("wb")
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _script(root, conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    daemon = Libvirtd(f"qemu:///system?socket={sockdir}/libvirt-sock", root, proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                tail = (root / "libvirtd.log").read_text(errors="replace").strip()[-300:]
                pytest.skip(f"libvirtd cannot start here (exit {proc.returncode}): {tail}")
            if daemon.virsh("version", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.skip("libvirtd did not answer within 30 s")
            time.sleep(0.2)
        yield daemon
    finally:
        with contextlib.suppress(Exception):
            for name in daemon.virsh("list", "--name", check=False).stdout.split():
                daemon.virsh("destroy", name, check=False)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()

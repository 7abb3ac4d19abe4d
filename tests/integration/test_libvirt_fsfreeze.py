"""``backup libvirt:DOMAIN[/DISK] --fsfreeze`` against a real QEMU guest agent: a tiny Linux
guest (tests/integration/agent_guest.py) booted under TCG by a private libvirtd, with an ext4
disk it has mounted. A file the guest wrote but never synced is in the frozen archive (the freeze
flushed it) and not in a crash-consistent one; the guest is thawed after every backup, also when
the job fails to start after the freeze.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.agent_guest import AGENT_PORT, Guest, build_guest
from tests.integration.libvirt_daemon import libvirtd
from tests.integration.test_libvirt_source import DOMAIN, Vm, volpack

pytestmark = pytest.mark.slow

BOOT_TIMEOUT = 300  # s: a Linux boot under TCG on a busy two-core machine


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Guest:
    return build_guest(tmp_path_factory.mktemp("agent-guest"))


def agent(vm: Vm, execute: str, **arguments: Any) -> Any:
    """One guest-agent command through libvirt; its return value."""
    command = {"execute": execute, **({"arguments": arguments} if arguments else {})}
    r = vm.daemon.virsh("qemu-agent-command", DOMAIN, json.dumps(command), "--timeout", "10")
    return json.loads(r.stdout)["return"]


def guest_write(vm: Vm, path: str, data: bytes) -> None:
    """Write a file in the guest without syncing it: it stays in the guest's page cache."""
    handle = agent(vm, "guest-file-open", path=path, mode="w")
    agent(vm, "guest-file-write", handle=handle, **{"buf-b64": base64.b64encode(data).decode()})
    agent(vm, "guest-file-close", handle=handle)


@pytest.fixture
def agent_vm(tmp_path: Path, guest: Guest) -> Iterator[Vm]:
    files = tmp_path / "files"
    files.mkdir()
    (files / "data.bin").write_bytes(os.urandom(1 << 20))
    raw, disk = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    subprocess.run(["truncate", "-s", "64M", str(raw)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(files), str(raw)], check=True)
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(disk)], check=True
    )
    raw.unlink()
    console = tmp_path / "console.log"
    (tmp_path / "dom.xml").write_text(
        f"<domain type='qemu'><name>{DOMAIN}</name><memory unit='MiB'>256</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type>"
        f"<kernel>{guest.kernel}</kernel><initrd>{guest.initrd}</initrd>"
        "<cmdline>console=ttyS0 panic=-1</cmdline></os><on_reboot>destroy</on_reboot>"
        "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
        f"<serial type='file'><source path='{console}'/><target port='0'/></serial>"
        f"<channel type='unix'><target type='virtio' name='{AGENT_PORT}'/></channel>"
        "<memballoon model='none'/></devices></domain>"
    )
    with libvirtd(tmp_path) as daemon:
        daemon.virsh("define", str(tmp_path / "dom.xml"))
        daemon.virsh("start", DOMAIN)
        vm = Vm(daemon, disk, tmp_path, ("vda",))
        deadline = time.monotonic() + BOOT_TIMEOUT
        ping = json.dumps({"execute": "guest-ping"})
        while daemon.virsh(
            "qemu-agent-command", DOMAIN, ping, "--timeout", "2", check=False
        ).returncode:
            if time.monotonic() > deadline:
                tail = console.read_text(errors="replace")[-1500:] if console.exists() else ""
                raise AssertionError(f"the guest agent did not answer in {BOOT_TIMEOUT} s:\n{tail}")
            time.sleep(1)
        yield vm


def fs_state(vm: Vm) -> str:
    return str(agent(vm, "guest-fsfreeze-status"))


def debugfs_cat(image: Path, path: str) -> bytes | None:
    r = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True)
    return None if b"not found" in r.stderr else r.stdout


def test_a_frozen_backup_holds_what_the_guest_had_not_synced_and_the_guest_is_thawed(
    agent_vm: Vm,
) -> None:
    vm = agent_vm
    marker = os.urandom(8).hex().encode() * 512
    guest_write(vm, "/mnt/marker", marker)
    assert fs_state(vm) == "thawed"

    r = volpack(vm, "backup", f"libvirt:{DOMAIN}/vda", str(vm.tmp / "crash.vpk"), "--no-catalog")
    assert r.returncode == 0, r.stderr
    r = volpack(vm, "restore", str(vm.tmp / "crash.vpk"), str(vm.tmp / "crash.raw"), "--force")
    assert r.returncode == 0, r.stderr
    # crash-consistent: a mounted journal to replay, and the unsynced file is not there after it
    head = subprocess.run(["dumpe2fs", "-h", str(vm.tmp / "crash.raw")], capture_output=True)
    assert b"needs_recovery" in head.stdout, head.stdout
    fsck = subprocess.run(["e2fsck", "-fy", str(vm.tmp / "crash.raw")], capture_output=True)
    assert fsck.returncode in (0, 1), fsck.stdout
    assert debugfs_cat(vm.tmp / "crash.raw", "/marker") in (None, b"")

    r = volpack(
        vm,
        "backup",
        f"libvirt:{DOMAIN}/vda",
        str(vm.tmp / "frozen.vpk"),
        "--no-catalog",
        "--json",
        "--fsfreeze",
    )
    assert r.returncode == 0, r.stderr
    assert "frozen for" in r.stderr, r.stderr
    assert fs_state(vm) == "thawed"
    details = json.loads(r.stdout)["source"]["details"]
    assert details["fsfreeze"] is True and details["frozen_filesystems"] >= 1, details
    restored = vm.tmp / "frozen.raw"
    r = volpack(vm, "restore", str(vm.tmp / "frozen.vpk"), str(restored), "--force")
    assert r.returncode == 0, r.stderr
    # the disk now, but for the superblock: the thaw marked the journal in use again
    now, was = vm.snapshot("now").read_bytes(), restored.read_bytes()
    assert len(now) == len(was) and now[:1024] == was[:1024] and now[2048:] == was[2048:]
    # frozen: the filesystem is clean as it stands (no journal to replay) and holds the file
    fsck = subprocess.run(["e2fsck", "-fn", str(restored)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert debugfs_cat(restored, "/marker") == marker

    info = volpack(vm, "info", str(vm.tmp / "frozen.vpk"))
    assert "filesystems frozen by the guest agent: 1" in info.stdout, info.stdout
    info = volpack(vm, "info", str(vm.tmp / "crash.vpk"))
    assert "not frozen (crash-consistent)" in info.stdout, info.stdout
    assert vm.daemon.virsh("domjobinfo", DOMAIN).stdout.split()[2] == "None"


def restart_agent(vm: Vm, options: str) -> None:
    """Restart the guest's agent with extra command-line ``options`` (tests/integration/
    agent_guest.py reads them from /run/qga-args)."""
    guest_write(vm, "/run/qga-args", options.encode())
    agent(vm, "guest-exec", path="/bin/sh", arg=["-c", "(sleep 1; kill $(pidof qemu-ga)) &"])
    time.sleep(3)
    deadline = time.monotonic() + 60
    ping = json.dumps({"execute": "guest-ping"})
    while vm.daemon.virsh(
        "qemu-agent-command", DOMAIN, ping, "--timeout", "2", check=False
    ).returncode:
        assert time.monotonic() < deadline, f"the agent did not come back with {options}"
        time.sleep(1)


def child_running(pid: int, word: str) -> bool:
    """Whether process ``pid`` has a child whose command line holds ``word``."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline")
        if cmdline.exists() and word.encode() in cmdline.read_bytes():
            return True
    return False


def test_the_guest_is_thawed_when_the_job_fails_to_start_or_the_backup_is_interrupted(
    agent_vm: Vm,
) -> None:
    vm = agent_vm
    # A socket path longer than a Unix socket address can be: QEMU refuses the job's export
    # after the freeze.
    deep = vm.tmp / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    before = vm.checkpoints()
    r = volpack(
        vm,
        "backup",
        f"libvirt:{DOMAIN}/vda",
        str(vm.tmp / "x.vpk"),
        "--no-catalog",
        "--fsfreeze",
        "--scratch",
        str(deep),
    )
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "backup-begin" in r.stderr, r.stderr
    assert fs_state(vm) == "thawed"
    assert vm.checkpoints() == before
    assert not (vm.tmp / "x.vpk").exists()
    assert vm.daemon.virsh("domjobinfo", DOMAIN).stdout.split()[2] == "None"
    assert not list(deep.iterdir())

    # the whole domain, quiesced: one job, thawed afterwards
    r = volpack(
        vm,
        "backup",
        f"libvirt:{DOMAIN}",
        str(vm.tmp / "all"),
        "--json",
        "--no-catalog",
        "--fsfreeze",
    )
    assert r.returncode == 0, r.stderr
    [archive] = json.loads(r.stdout)["archives"]
    assert archive["source"]["details"]["frozen_filesystems"] >= 1
    assert fs_state(vm) == "thawed"

    # SIGINT while the agent freezes (its freeze hook takes 8 s): the agent still freezes after
    # volpack's virsh is gone, and volpack's thaw, queued behind it in libvirt, undoes it
    guest_write(vm, "/run/hook", b'#!/bin/sh\n[ "$1" = freeze ] && sleep 8\nexit 0\n')
    agent(vm, "guest-exec", path="/bin/chmod", arg=["755", "/run/hook"])
    restart_agent(vm, "--fsfreeze-hook=/run/hook")
    before = vm.checkpoints()
    env = {**os.environ, "LIBVIRT_DEFAULT_URI": vm.daemon.uri, "TMPDIR": str(vm.tmp)}
    argv = [sys.executable, "-m", "volpack", "backup", f"libvirt:{DOMAIN}/vda"]
    argv += [str(vm.tmp / "z.vpk"), "--no-catalog", "--fsfreeze"]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not child_running(proc.pid, "domfsfreeze"):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no domfsfreeze in 60 s"
        time.sleep(0.05)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert fs_state(vm) == "thawed"
    assert vm.checkpoints() == before
    assert not (vm.tmp / "z.vpk").exists()
    assert vm.daemon.virsh("domjobinfo", DOMAIN).stdout.split()[2] == "None"
    assert not [p for p in vm.tmp.iterdir() if p.name.startswith("volpack-")]


def test_a_thaw_the_agent_refuses_fails_the_backup_in_one_line_naming_domfsthaw(
    agent_vm: Vm,
) -> None:
    vm = agent_vm
    restart_agent(vm, "-b guest-fsfreeze-thaw")
    enabled = {c["name"]: c["enabled"] for c in agent(vm, "guest-info")["supported_commands"]}
    assert enabled["guest-fsfreeze-thaw"] is False
    r = volpack(
        vm, "backup", f"libvirt:{DOMAIN}/vda", str(vm.tmp / "y.vpk"), "--no-catalog", "--fsfreeze"
    )
    # the guest stays frozen, so the backup fails saying what to run
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "FROZEN" in r.stderr and f"virsh domfsthaw {DOMAIN}" in r.stderr, r.stderr
    assert fs_state(vm) == "frozen"
    assert not (vm.tmp / "y.vpk").exists()
    assert vm.daemon.virsh("domjobinfo", DOMAIN).stdout.split()[2] == "None"

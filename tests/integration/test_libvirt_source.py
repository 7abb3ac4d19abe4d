"""Backing up a running libvirt domain's disk (``libvirt:DOMAIN/DISK``) through pull-mode backup
jobs and checkpoints, against a private libvirtd (tests/integration/libvirt_daemon.py) running a
TCG guest with no operating system: guest writes are made through the monitor (``qemu-io``).
Each archive must equal the disk at its backup-begin (``qemu-img compare`` against a copy made
at that moment); an incremental without its base's checkpoint compares hashes, with a warning.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.integration.libvirt_daemon import Libvirtd, libvirtd

pytestmark = pytest.mark.slow

DOMAIN = "vpt"
QDEV = "/machine/peripheral/virtio-disk{}/virtio-backend"
DISKS = ("vda", "vdb")


@dataclass
class Vm:
    daemon: Libvirtd
    disk: Path
    tmp: Path
    disks: tuple[str, ...] = DISKS

    def write(self, command: str, disk: str = "vda") -> None:
        """A guest write, e.g. ``write -P 0xcc 0 64k`` (qemu-io syntax)."""
        qdev = QDEV.format(DISKS.index(disk))
        self.daemon.virsh("qemu-monitor-command", "--hmp", DOMAIN, f'qemu-io -d {qdev} "{command}"')

    def snapshot(self, name: str, disk: str = "vda") -> Path:
        """The disk as the guest sees it now (a raw copy read through an NBD export of a
        backup job of its own, so the running QEMU's view is what is copied)."""
        out = self.tmp / f"{name}.raw"
        sock = self.tmp / f"snap-{name}.sock"
        xml = self.tmp / f"snap-{name}.xml"
        xml.write_text(
            f"<domainbackup mode='pull'><server transport='unix' socket='{sock}'/><disks>"
            f"<disk name='{disk}' backup='yes' type='file'><scratch file='{self.tmp}/s-{name}.q'/>"
            "</disk>"
            + "".join(f"<disk name='{d}' backup='no'/>" for d in self.disks if d != disk)
            + "</disks></domainbackup>"
        )
        self.daemon.virsh("backup-begin", DOMAIN, str(xml))
        try:
            subprocess.run(
                [
                    "qemu-img",
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    "raw",
                    f"nbd+unix:///{disk}?socket={sock}",
                    str(out),
                ],
                check=True,
                capture_output=True,
            )
        finally:
            self.daemon.virsh("domjobabort", DOMAIN)
        return out

    def checkpoints(self) -> list[str]:
        return self.daemon.virsh("checkpoint-list", DOMAIN, "--name").stdout.split()


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[Vm]:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    second = tmp_path / "second.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(second), "16M"], check=True)
    subprocess.run(
        [
            "qemu-io",
            "-f",
            "qcow2",
            "-c",
            "write -P 0xaa 0 4M",
            "-c",
            "write -P 0xbb 20M 1M",
            str(disk),
        ],
        check=True,
        capture_output=True,
    )
    (tmp_path / "dom.xml").write_text(
        f"<domain type='qemu'><name>{DOMAIN}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{second}'/><target dev='vdb' bus='virtio'/></disk>"
        "<serial type='null'/><memballoon model='none'/></devices></domain>"
    )
    with libvirtd(tmp_path) as daemon:
        daemon.virsh("define", str(tmp_path / "dom.xml"))
        daemon.virsh("start", DOMAIN)
        yield Vm(daemon, disk, tmp_path)


def volpack(vm: Vm, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIBVIRT_DEFAULT_URI": vm.daemon.uri, "TMPDIR": str(vm.tmp)}
    return subprocess.run(
        [sys.executable, "-m", "volpack", *args], capture_output=True, text=True, env=env
    )


def backup(vm: Vm, archive: Path, *extra: str) -> tuple[dict, str]:
    r = volpack(
        vm, "backup", f"libvirt:{DOMAIN}/vda", str(archive), "--json", "--no-catalog", *extra
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


def restore_equals(vm: Vm, archive: Path, expected: Path) -> None:
    out = vm.tmp / (archive.name + ".restored")
    r = volpack(vm, "restore", str(archive), str(out), "--force")
    assert r.returncode == 0, r.stderr
    cmp = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(out), str(expected)],
        capture_output=True,
        text=True,
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


def test_incremental_from_the_checkpoint_restores_the_disk_at_backup_time(vm: Vm) -> None:
    full, _ = backup(vm, vm.tmp / "full.vpk")
    at_full = vm.snapshot("full")
    details = full["source"]["details"]
    assert details["checkpoint"] in vm.checkpoints()
    assert details["checkpoint"] in details["checkpoint_xml"]
    vm.write("write -P 0xcc 0 64k")
    vm.write("write -z -u 20M 1M")  # a trim: the incremental must carry it as zeroes
    vm.write("write -P 0xdd 40M 128k")
    inc, err = backup(vm, vm.tmp / "inc.vpk", "--base", str(vm.tmp / "full.vpk"))
    at_inc = vm.snapshot("inc")
    assert inc["changes"]["method"] == f"checkpoint:{details['checkpoint']}", err
    assert inc["source"]["details"]["incremental_from"] == details["checkpoint"]
    # the job read only what the merged bitmap marks, plus the sample
    assert inc["changes"]["read_bytes"] < 8 << 20
    assert "warning" not in err.lower()
    restore_equals(vm, vm.tmp / "full.vpk", at_full)
    restore_equals(vm, vm.tmp / "inc.vpk", at_inc)
    assert vm.daemon.virsh("domjobinfo", DOMAIN).stdout.split()[2] == "None"
    assert not [p for p in vm.tmp.iterdir() if p.name.startswith("volpack-libvirt-")]


def test_checkpoint_lost_from_libvirt_is_redefined_from_the_base_archive(vm: Vm) -> None:
    full, _ = backup(vm, vm.tmp / "full.vpk")
    cp = full["source"]["details"]["checkpoint"]
    # as after a host restart with the checkpoint metadata gone: the qcow2 bitmap remains
    vm.daemon.virsh("checkpoint-delete", DOMAIN, cp, "--metadata")
    assert cp not in vm.checkpoints()
    vm.write("write -P 0xee 1M 64k")
    inc, err = backup(vm, vm.tmp / "inc.vpk", "--base", str(vm.tmp / "full.vpk"))
    at_inc = vm.snapshot("inc")
    assert inc["changes"]["method"] == f"checkpoint:{cp}", err
    assert cp in vm.checkpoints()
    restore_equals(vm, vm.tmp / "inc.vpk", at_inc)


def test_missing_checkpoint_makes_a_hash_compare_incremental_with_a_warning(vm: Vm) -> None:
    full, _ = backup(vm, vm.tmp / "full.vpk")
    cp = full["source"]["details"]["checkpoint"]
    vm.daemon.virsh("checkpoint-delete", DOMAIN, cp)  # metadata and the qcow2 bitmap
    vm.write("write -P 0x11 2M 64k")
    r = volpack(
        vm,
        "backup",
        f"libvirt:{DOMAIN}/vda",
        str(vm.tmp / "inc.vpk"),
        "--json",
        "--no-catalog",
        "--base",
        str(vm.tmp / "full.vpk"),
    )
    at_inc = vm.snapshot("inc")
    assert r.returncode == 1, r.stderr
    inc = json.loads(r.stdout)
    assert inc["changes"]["method"] == "hash-compare"
    assert cp in r.stderr and "compared" in r.stderr
    restore_equals(vm, vm.tmp / "inc.vpk", at_inc)


def test_unknown_disk_and_stopped_domain_are_one_line(vm: Vm) -> None:
    r = volpack(vm, "backup", f"libvirt:{DOMAIN}/vdz", str(vm.tmp / "x.vpk"), "--no-catalog")
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "vda" in r.stderr and "vdz" in r.stderr
    vm.daemon.virsh("destroy", DOMAIN)
    r = volpack(vm, "backup", f"libvirt:{DOMAIN}/vda", str(vm.tmp / "x.vpk"), "--no-catalog")
    assert r.returncode == 3 and "shut off" in r.stderr, r.stderr
    assert not (vm.tmp / "x.vpk").exists()


def test_a_whole_domain_is_one_job_with_one_archive_per_disk_and_a_shared_checkpoint(
    vm: Vm,
) -> None:
    out, catalog = vm.tmp / "vpt", str(vm.tmp / "catalog.db")
    vm.write("write -P 0x55 1M 1M", "vdb")
    r = volpack(vm, "backup", f"libvirt:{DOMAIN}", str(out), "--json", "--catalog", catalog)
    assert r.returncode == 0, r.stderr
    fulls = json.loads(r.stdout)["archives"]
    assert [a["source"]["details"]["disk"] for a in fulls] == list(DISKS)
    cps = {a["source"]["details"]["checkpoint"] for a in fulls}
    assert len(cps) == 1 and cps <= set(vm.checkpoints())
    stamp = next(iter(cps)).rsplit("-", 1)[-1]
    assert sorted(p.name for p in out.iterdir()) == [f"{d}-{stamp}.vpk" for d in DISKS]
    at_full = {d: vm.snapshot(f"full-{d}", d) for d in DISKS}
    vm.write("write -P 0x66 4M 64k", "vda")
    vm.write("write -z -u 1M 64k", "vdb")
    r = volpack(
        vm,
        "backup",
        f"libvirt:{DOMAIN}",
        str(out),
        "--json",
        "--catalog",
        catalog,
        "--base",
        "latest",
    )
    assert r.returncode == 0, r.stderr
    incs = json.loads(r.stdout)["archives"]
    at_inc = {d: vm.snapshot(f"inc-{d}", d) for d in DISKS}
    for full, inc, disk in zip(fulls, incs, DISKS, strict=True):
        assert inc["base_uuid"] == full["archive_uuid"]
        assert inc["changes"]["method"] == f"checkpoint:{full['source']['details']['checkpoint']}"
        restore_equals(vm, Path(full["url"]), at_full[disk])
        restore_equals(vm, Path(inc["url"]), at_inc[disk])
    assert vm.daemon.virsh("domjobinfo", DOMAIN).stdout.split()[2] == "None"
    r = volpack(vm, "backup", f"libvirt:{DOMAIN}", "-", "--no-catalog")
    assert r.returncode == 2 and "directory" in r.stderr, r.stderr
    r = volpack(vm, "backup", f"libvirt:{DOMAIN}", str(out), "--base", fulls[0]["url"])
    assert r.returncode == 2 and "--base latest" in r.stderr, r.stderr


def start_slow_backup(vm: Vm, archive: Path) -> subprocess.Popen[str]:
    """A slow backup of a disk full of random bytes, returned once its job runs."""
    vm.daemon.virsh("destroy", DOMAIN)
    noise = vm.tmp / "noise.raw"
    noise.write_bytes(os.urandom(64 << 20))
    subprocess.run(
        ["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(noise), str(vm.disk)],
        check=True,
    )
    vm.daemon.virsh("start", DOMAIN)
    env = {**os.environ, "LIBVIRT_DEFAULT_URI": vm.daemon.uri, "TMPDIR": str(vm.tmp)}
    argv = [sys.executable, "-m", "volpack", "backup", f"libvirt:{DOMAIN}/vda"]
    argv += [str(archive), "--no-catalog", "--threads", "1", "--compress", "zstd:19"]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while "Backup" not in vm.daemon.virsh("domjobinfo", DOMAIN, check=False).stdout:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no backup job in 60 s"
        time.sleep(0.05)
    time.sleep(0.5)
    return proc


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_mid_backup_ends_the_job_and_leaves_no_archive_or_scratch(
    vm: Vm, sig: int, code: int
) -> None:
    proc = start_slow_backup(vm, vm.tmp / "a.vpk")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and "Traceback" not in err, err
    assert not (vm.tmp / "a.vpk").exists()
    assert vm.daemon.virsh("domjobinfo", DOMAIN).stdout.split()[2] == "None"
    assert not [p for p in vm.tmp.iterdir() if p.name.startswith("volpack-")]


def test_a_job_ended_from_outside_mid_backup_fails_it_with_exit_3_and_no_archive(vm: Vm) -> None:
    proc = start_slow_backup(vm, vm.tmp / "a.vpk")
    vm.daemon.virsh("domjobabort", DOMAIN)  # what a full scratch or another admin does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (vm.tmp / "a.vpk").exists()
    assert not [p for p in vm.tmp.iterdir() if p.name.startswith("volpack-")]


def test_a_job_left_by_a_killed_run_is_ended_by_the_next_but_anyone_elses_is_refused(
    vm: Vm,
) -> None:
    proc = start_slow_backup(vm, vm.tmp / "a.vpk")
    proc.kill()
    proc.communicate(timeout=60)
    assert "Backup" in vm.daemon.virsh("domjobinfo", DOMAIN).stdout  # the kill left it running
    [left] = [p for p in vm.tmp.iterdir() if p.name.startswith("volpack-libvirt-")]
    r = volpack(vm, "backup", f"libvirt:{DOMAIN}/vda", str(vm.tmp / "b.vpk"), "--no-catalog")
    assert r.returncode == 0, r.stderr
    assert not left.exists()
    assert vm.daemon.virsh("domjobinfo", DOMAIN).stdout.split()[2] == "None"
    # a job that is not volpack's is left alone
    xml = vm.tmp / "other.xml"
    xml.write_text(
        f"<domainbackup mode='pull'><server transport='unix' socket='{vm.tmp}/other.sock'/>"
        "</domainbackup>"
    )
    vm.daemon.virsh("backup-begin", DOMAIN, str(xml))
    r = volpack(vm, "backup", f"libvirt:{DOMAIN}/vda", str(vm.tmp / "c.vpk"), "--no-catalog")
    assert r.returncode == 3 and "already runs a backup job" in r.stderr, r.stderr
    assert "Backup" in vm.daemon.virsh("domjobinfo", DOMAIN).stdout
    vm.daemon.virsh("domjobabort", DOMAIN)


def test_a_disk_without_a_catalogued_archive_gets_a_full_in_the_domains_incremental_job(
    vm: Vm,
) -> None:
    out, catalog = vm.tmp / "vpt", str(vm.tmp / "catalog.db")
    out.mkdir()
    r = volpack(vm, "backup", f"libvirt:{DOMAIN}/vda", str(out / "first.vpk"), "--catalog", catalog)
    assert r.returncode == 0, r.stderr
    vm.write("write -P 0x77 8M 64k", "vda")
    vm.write("write -P 0x78 0 64k", "vdb")
    r = volpack(
        vm,
        "backup",
        f"libvirt:{DOMAIN}",
        str(out),
        "--json",
        "--catalog",
        catalog,
        "--base",
        "latest",
    )
    assert r.returncode == 0, r.stderr
    vda, vdb = json.loads(r.stdout)["archives"]
    assert vda["changes"]["method"].startswith("checkpoint:") and vda["base_uuid"]
    assert vdb["base_uuid"] is None and "vdb" in r.stderr and "full" in r.stderr
    restore_equals(vm, Path(vda["url"]), vm.snapshot("vda", "vda"))
    restore_equals(vm, Path(vdb["url"]), vm.snapshot("vdb", "vdb"))


def with_agent_channel(vm: Vm) -> None:
    """Give the domain a guest-agent channel that nothing in the guest answers."""
    xml = vm.daemon.virsh("dumpxml", DOMAIN, "--inactive").stdout
    channel = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
    (vm.tmp / "agent.xml").write_text(xml.replace("</devices>", channel + "</devices>"))
    vm.daemon.virsh("destroy", DOMAIN)
    vm.daemon.virsh("define", str(vm.tmp / "agent.xml"))
    vm.daemon.virsh("start", DOMAIN)


def test_fsfreeze_without_a_guest_agent_is_refused_before_anything_starts(vm: Vm) -> None:
    # a base whose checkpoint libvirt lost: the refusal leaves it undefined, as it was
    full, _ = backup(vm, vm.tmp / "full.vpk")
    vm.daemon.virsh(
        "checkpoint-delete", DOMAIN, full["source"]["details"]["checkpoint"], "--metadata"
    )
    base = ("--base", str(vm.tmp / "full.vpk"))
    cases = [
        (f"libvirt:{DOMAIN}/vda", "x.vpk", base),
        (f"libvirt:{DOMAIN}", "all", ()),
        ("agent", "x.vpk", ()),
    ]
    for source, archive, extra in cases:
        if source == "agent":  # configured, but no agent runs in the guest
            with_agent_channel(vm)
            source = f"libvirt:{DOMAIN}/vda"
        argv = [source, str(vm.tmp / archive), "--no-catalog", "--fsfreeze", *extra]
        r = volpack(vm, "backup", *argv)
        assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "guest agent" in r.stderr and "without --fsfreeze" in r.stderr, r.stderr
        assert "domfsthaw" not in r.stderr  # nothing was frozen
        assert not (vm.tmp / "x.vpk").exists()
        assert not (vm.tmp / "all").exists() or not list((vm.tmp / "all").iterdir())
        assert vm.checkpoints() == []
        assert vm.daemon.virsh("domjobinfo", DOMAIN).stdout.split()[2] == "None"
        assert not [p for p in vm.tmp.iterdir() if p.name.startswith("volpack-")]
